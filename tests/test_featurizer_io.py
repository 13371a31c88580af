"""The upsampler contract: registry, DenseFeaturizer, baselines, weight files."""
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_backbone

from brixel_plugins.backbones import WeightFileError
from brixel_plugins.common.filesystem import atomic_path
from brixel_plugins.featurizer import DenseFeaturizer
from brixel_plugins.files.upsampler_file import (
    load_upsampler,
    read_upsampler_file,
    save_upsampler,
    upsampler_from_config,
)
from brixel_plugins.upsamplers import Upsampler, build_upsampler, register_upsampler


def test_unknown_type_names_registered_ones(tiny_spec):
    with pytest.raises(KeyError, match="unknown upsampler type 'nope'.*bilinear"):
        build_upsampler(dict(type="nope"), tiny_spec)


def test_name_clash_is_refused():
    with pytest.raises(KeyError, match="already registered"):
        register_upsampler("bilinear")(type("Other", (Upsampler,), {}))


@pytest.mark.parametrize("factor", [1, 2, 4])
@pytest.mark.parametrize("hw", [(32, 32), (48, 80)])
def test_bilinear_and_highres_shapes(tiny_backbone, factor, hw):
    x = torch.randn(2, 3, *hw)
    for kind in ("bilinear", "bicubic", "highres"):
        f = DenseFeaturizer(tiny_backbone, build_upsampler(dict(type=kind, factor=factor), tiny_backbone.spec))
        out = f(x)
        assert out.shape == (2, 64, hw[0] // 16 * factor, hw[1] // 16 * factor), kind
        assert f.output_stride == 16 / factor


def test_highres_is_backbone_on_enlarged_image(tiny_backbone):
    x = torch.randn(1, 3, 32, 48)
    f = DenseFeaturizer.build(tiny_backbone, dict(type="highres", factor=2))
    big = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(f(x), tiny_backbone.last_layer_map(big))


def test_featurizer_checks_sizes_and_spec(tiny_backbone):
    f = DenseFeaturizer.build(tiny_backbone, dict(type="bilinear"))
    with pytest.raises(ValueError, match="multiple of 16"):
        f(torch.randn(1, 3, 40, 32))
    other = make_tiny_backbone(embed_dim=32)
    with pytest.raises(ValueError, match="upsampler built for"):
        DenseFeaturizer(tiny_backbone, build_upsampler(dict(type="bilinear"), other.spec))


def test_featurizer_train_keeps_backbone_eval(tiny_backbone):
    f = DenseFeaturizer.build(tiny_backbone, dict(type="bilinear")).train()
    assert f.upsampler.training and not f.backbone.training
    assert list(f.trainable_parameters()) == []


def test_save_load_round_trip_and_refusals(tmp_path, tiny_backbone):
    up = build_upsampler(dict(type="bilinear", factor=2, mode="bicubic"), tiny_backbone.spec)
    path = save_upsampler(tmp_path / "up.safetensors", up, extra={"train_images": 7})
    again = load_upsampler(path, tiny_backbone.spec, method="bilinear")
    assert again.config == up.config and again.factor == 2 and again.mode == "bicubic"
    assert again.file_metadata["train_images"] == 7 and "package_version" in again.file_metadata
    with pytest.raises(WeightFileError, match="holds a 'bilinear' upsampler, but 'brixel' was asked for"):
        load_upsampler(path, tiny_backbone.spec, method="brixel")
    other = make_tiny_backbone(embed_dim=32).spec
    with pytest.raises(WeightFileError, match="trained for a backbone with arch=vits16, embed_dim=64.*embed_dim=32"):
        load_upsampler(path, other)


def test_corrupt_foreign_and_missing_files(tmp_path, tiny_spec):
    from safetensors.torch import save_file

    path = save_upsampler(tmp_path / "up.safetensors", build_upsampler(dict(type="bilinear"), tiny_spec))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:20])
    with pytest.raises(WeightFileError, match="truncated or corrupt"):
        read_upsampler_file(cut)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(WeightFileError, match="not a brixel_plugins upsampler file"):
        read_upsampler_file(tmp_path / "foreign.safetensors")
    with pytest.raises(WeightFileError, match="not found"):
        read_upsampler_file(tmp_path / "missing.safetensors")


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "ckpt.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half-writ")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.bin"]
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"


# -- one way to build an upsampler (None, a name, a file, a file at a derived factor) --------------
def test_none_is_the_registered_identity_everywhere(tiny_backbone):
    from brixel_plugins.upsamplers import UPSAMPLERS

    up = build_upsampler(None, tiny_backbone.spec)
    assert up.method == "none" and up.factor == 1 and UPSAMPLERS["none"].fixed_factor == 1
    x = torch.randn(1, 3, 32, 48)
    dense, layers = DenseFeaturizer.build(tiny_backbone, None).features(x)
    assert torch.equal(dense, layers[tiny_backbone.depth - 1])
    with pytest.raises(ValueError, match="exactly 1"):
        build_upsampler(dict(type="none", factor=2), tiny_backbone.spec)


def test_fixed_factor_is_declared_and_used_by_the_benchmark(tiny_spec):
    from brixel_plugins.files.method_spec import build_method, parse_method
    from brixel_plugins.upsamplers import UPSAMPLERS

    assert UPSAMPLERS["brixel"].fixed_factor == UPSAMPLERS["brixel_lean"].fixed_factor == 4
    assert UPSAMPLERS["lift"].fixed_factor is None
    with pytest.raises(ValueError, match="exactly 4"):
        build_upsampler(dict(type="brixel", factor=2), tiny_spec)
    assert build_method(parse_method("brixel"), tiny_spec, 2).factor == 4  # its own factor
    assert build_method(parse_method("lift"), tiny_spec, 8).factor == 8
    with pytest.raises(ValueError, match="exactly 4"):  # asked for explicitly: refused, not ignored
        build_method(parse_method("brixel:factor=2"), tiny_spec, 2)


def test_a_file_by_path_and_by_config_is_one_upsampler(tmp_path, tiny_spec):
    torch.manual_seed(0)
    lift = build_upsampler(dict(type="lift", factor=4), tiny_spec)
    path = save_upsampler(tmp_path / "lift.safetensors", lift)
    for cfg in (path, str(path), dict(weights=str(path)), dict(type="lift", weights=str(path), factor=4)):
        up = upsampler_from_config(cfg, tiny_spec)
        assert up.factor == 4 and up.weight_file == str(path)
        assert all(torch.equal(up.state_dict()[k], v) for k, v in lift.state_dict().items())
    with pytest.raises(WeightFileError, match="built with zero_start=False, but the config asks for zero_start=True"):
        upsampler_from_config(dict(type="lift", weights=str(path), zero_start=True), tiny_spec)
    with pytest.raises(WeightFileError, match="'lift' upsampler, but 'jbu' was asked for"):
        upsampler_from_config(dict(type="jbu", weights=str(path)), tiny_spec)
    with pytest.raises(WeightFileError, match="factor=2 in the config, 4 in the file; a lift upsampler works at "
                                              "the factor it was trained at"):
        upsampler_from_config(dict(type="lift", weights=str(path), factor=2), tiny_spec)


def test_build_upsampler_builds_from_a_config_only_and_names_the_loader(tmp_path, tiny_spec):
    """One owner of "file -> upsampler": the registry refuses a file instead of importing the file module back."""
    path = save_upsampler(tmp_path / "lift.safetensors", build_upsampler(dict(type="lift", factor=4), tiny_spec))
    for cfg in (path, str(path), dict(type="lift", weights=str(path))):
        with pytest.raises(ValueError, match="names a weight file: load it with brixel_plugins.files.upsampler_file."
                                             "upsampler_from_config"):
            build_upsampler(cfg, tiny_spec)
    assert build_upsampler(dict(type="lift", factor=4, weights=None), tiny_spec).weight_file is None


def test_a_named_file_is_found_by_the_lookup_rule_everywhere(tmp_path, tiny_backbone, monkeypatch):
    """DenseFeaturizer.build (and so both adapters, the benchmark and the distiller) finds a file by name
    in $BRIXEL_WEIGHTS_DIR, and a missing one is refused naming the config key that sets it."""
    from brixel_plugins.files.lookup import WEIGHTS_DIR_ENV

    folder = tmp_path / "weights"
    folder.mkdir()
    path = save_upsampler(folder / "lift.safetensors", build_upsampler(dict(type="lift", factor=2), tiny_backbone.spec))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(folder))
    net = DenseFeaturizer.build(tiny_backbone, dict(weights="lift.safetensors"), upsampler_key="model.upsampler")
    assert net.upsampler.weight_file == str(path) and net.factor == 2
    assert all(p.requires_grad for p in net.upsampler.parameters())
    frozen = DenseFeaturizer.build(tiny_backbone, "lift.safetensors", train_upsampler=False)
    assert not any(p.requires_grad for p in frozen.upsampler.parameters())
    with pytest.raises(WeightFileError, match=r"weight file not found: other.safetensors \(set by "
                                              r"model.upsampler.weights\)"):
        DenseFeaturizer.build(tiny_backbone, dict(weights="other.safetensors"), upsampler_key="model.upsampler")


def test_a_jbu_stack_serves_at_the_factor_of_its_first_layers(tmp_path, tiny_backbone):
    torch.manual_seed(0)
    jbu16 = build_upsampler(dict(type="jbu", factor=16, zero_start=True), tiny_backbone.spec)
    path = save_upsampler(tmp_path / "jbu16.safetensors", jbu16)
    for factor, layers in ((2, 1), (4, 2), (8, 3), (16, 4)):
        up = upsampler_from_config(dict(type="jbu", weights=str(path), factor=factor), tiny_backbone.spec)
        assert up.factor == factor and len(up.primes) == layers
        state = up.state_dict()
        assert all(torch.equal(v, jbu16.state_dict()[k]) for k, v in state.items())  # its own weights
        assert {k.split(".")[0] for k in state if k.startswith("up")} == {f"up{i + 1}" for i in range(layers)}
    x = torch.randn(1, 3, 32, 32)
    two = DenseFeaturizer.build(tiny_backbone, dict(type="jbu", weights=str(path), factor=2)).eval()
    assert two(x).shape == (1, 64, 4, 4)  # stride 8
    with pytest.raises(WeightFileError, match=r"factor=3 in the config, 16 in the file, a JBU stack of layers "
                                              r"\[2, 2, 2, 2\] whose first layers give factors \[2, 4, 8, 16\] only"):
        upsampler_from_config(dict(type="jbu", weights=str(path), factor=3), tiny_backbone.spec)


# -- upsampler files whose metadata is damaged are refused (issue 21.3) -----------------------------
def rewrite_metadata(src, dst, restamp: bool = False, **changes):
    """Copy an upsampler file with metadata entries changed (None deletes one); ``restamp``
    recomputes the digest, as a forger would, so the checks behind the digest are exercised."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = {**f.metadata(), **changes}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta = {k: v for k, v in meta.items() if v is not None}
    if restamp:
        from brixel_plugins.files.upsampler_file import metadata_digest

        meta["digest"] = metadata_digest(meta, tensors)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def edited_entry(path, key, **changes) -> str:
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        entry = json.loads(f.metadata()[key])
    return json.dumps({k: v for k, v in {**entry, **changes}.items() if v is not None}, sort_keys=True)


def test_brixel_file_without_its_config_is_refused(tmp_path, tiny_spec):
    """Was loaded with the defaults (zero_start=False): a different function."""
    good = save_upsampler(tmp_path / "b.safetensors", build_upsampler(dict(type="brixel", zero_start=True), tiny_spec))
    bad = rewrite_metadata(good, tmp_path / "noconfig.safetensors", config=None)
    with pytest.raises(WeightFileError, match="metadata has no 'config'"):
        load_upsampler(bad, tiny_spec)


def test_lift_file_with_zero_start_flipped_is_refused(tmp_path, tiny_spec):
    """No tensor tells zero_start apart in LiFT: the digest does."""
    good = save_upsampler(tmp_path / "l.safetensors", build_upsampler(dict(type="lift", zero_start=True), tiny_spec))
    bad = rewrite_metadata(good, tmp_path / "flip.safetensors", config=edited_entry(good, "config", zero_start=False))
    with pytest.raises(WeightFileError, match="does not match its 'digest'"):
        load_upsampler(bad, tiny_spec)


@pytest.mark.parametrize("factor", [2, 8])
def test_lift_file_with_another_factor_recorded_is_refused(tmp_path, tiny_spec, factor):
    good = save_upsampler(tmp_path / "l.safetensors", build_upsampler(dict(type="lift", factor=4), tiny_spec),
                          extra={"factor": 4})
    bad = rewrite_metadata(good, tmp_path / "f.safetensors", config=edited_entry(good, "config", factor=factor))
    with pytest.raises(WeightFileError, match="does not match its 'digest'"):
        load_upsampler(bad, tiny_spec)
    # even with the digest recomputed, the factor its training record holds contradicts it
    forged = rewrite_metadata(bad, tmp_path / "forged.safetensors", restamp=True)
    with pytest.raises(WeightFileError, match=f"factor={factor} in its config, factor=4 in its training record"):
        load_upsampler(forged, tiny_spec)


def test_file_with_an_incomplete_config_is_refused_even_with_a_valid_digest(tmp_path, tiny_spec):
    good = save_upsampler(tmp_path / "l.safetensors", build_upsampler(dict(type="lift", zero_start=True), tiny_spec))
    forged = rewrite_metadata(good, tmp_path / "forged.safetensors", restamp=True,
                              config=edited_entry(good, "config", zero_start=None))
    with pytest.raises(WeightFileError, match=r"incomplete or altered \(no \['zero_start'\]\)"):
        load_upsampler(forged, tiny_spec)


def test_file_without_a_digest_is_refused(tmp_path, tiny_spec):
    good = save_upsampler(tmp_path / "l.safetensors", build_upsampler(dict(type="lift"), tiny_spec))
    with pytest.raises(WeightFileError, match="has no 'digest'"):
        load_upsampler(rewrite_metadata(good, tmp_path / "nodigest.safetensors", digest=None), tiny_spec)
    with pytest.raises(WeightFileError, match="older brixel_plugins .*export it again"):
        load_upsampler(rewrite_metadata(good, tmp_path / "v1.safetensors", format="brixel_plugins.upsampler/1"),
                       tiny_spec)
