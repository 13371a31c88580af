"""FrozenDINOv3: equality with timm, weight layouts and refusals, frozen-ness, sizes."""
import hashlib
import shutil
import warnings

import pytest
import torch
from conftest import TINY, make_tiny_backbone

from brixel_plugins.backbones import ARCHS, FrozenDINOv3, WeightFileError, timm_to_meta


def _randomise_biases(model):
    # Random init leaves q/v biases at zero; non-zero ones make the layout test meaningful.
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if name.endswith(("q_bias", "v_bias")):
            p.data.copy_(torch.randn(p.shape, generator=g))


def _meta_file(backbone, path):
    """Write ``backbone``'s weights in Meta's official key layout (inverse conversion)."""
    head_dim = backbone.embed_dim // backbone.spec.num_heads
    periods = 100.0 ** (2 * torch.arange(head_dim // 4) / (head_dim // 2))
    sd = timm_to_meta(backbone.model.state_dict(), periods=periods)
    assert "storage_tokens" in sd and any(k.endswith("qkv.bias_mask") for k in sd)
    torch.save(sd, path)
    return path


def _hashed_copy(src, dst_dir, arch="vits16"):
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:8]
    dst = dst_dir / f"dinov3_{arch}_pretrain_lvd1689m-{digest}.pth"
    shutil.copy(src, dst)
    return dst


def test_outputs_equal_timm_forward_intermediates(tiny_backbone):
    x = torch.randn(2, 3, 48, 80)
    ours = tiny_backbone.layers(x, [1, -1])
    ref = tiny_backbone.model.forward_intermediates(
        x, indices=[1, 3], norm=True, output_fmt="NCHW", intermediates_only=True)
    assert set(ours) == {1, 3}
    for got, want in zip((ours[1], ours[3]), ref):
        assert got.shape == (2, 64, 3, 5)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_cls_token_and_last_layer(tiny_backbone):
    x = torch.randn(3, 3, 32, 32)
    maps, cls = tiny_backbone(x, [3], return_cls=True)
    assert cls[3].shape == (3, 64) and maps[3].shape == (3, 64, 2, 2)
    _, prefix = tiny_backbone.model.forward_intermediates(
        x, indices=[3], norm=True, intermediates_only=True, return_prefix_tokens=True)[0]
    torch.testing.assert_close(cls[3], prefix[:, 0])
    torch.testing.assert_close(tiny_backbone.last_layer_map(x), maps[3])


@pytest.mark.parametrize("arch_kw", [dict(arch="vits16"), dict(arch="vits16plus")])
def test_meta_layout_file_loads_and_reproduces(tmp_path, arch_kw):
    src = make_tiny_backbone(seed=3, **arch_kw)
    _randomise_biases(src.model)
    path = _hashed_copy(_meta_file(src, tmp_path / "meta.pth"), tmp_path, arch_kw["arch"])
    loaded = FrozenDINOv3(**{**TINY, **arch_kw}, weights=path)
    x = torch.randn(2, 3, 32, 64)
    torch.testing.assert_close(loaded.layers(x, [0, 2, 3]), src.layers(x, [0, 2, 3]), rtol=0, atol=0)


def test_timm_layout_safetensors_loads(tmp_path):
    from safetensors.torch import save_file

    src = make_tiny_backbone(seed=4)
    _randomise_biases(src.model)
    save_file(src.model.state_dict(), str(tmp_path / "timm.safetensors"))
    loaded = FrozenDINOv3(**TINY, weights=tmp_path / "timm.safetensors")
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded.last_layer_map(x), src.last_layer_map(x), rtol=0, atol=0)


def test_timm_file_without_qkv_bias_loads_as_zero_bias(tmp_path):
    src = make_tiny_backbone(seed=5)
    sd = {k: v for k, v in src.model.state_dict().items() if not k.endswith(("q_bias", "v_bias"))}
    torch.save(sd, tmp_path / "nobias.pth")
    loaded = FrozenDINOv3(**TINY, weights=tmp_path / "nobias.pth")
    assert all(p.abs().sum() == 0 for n, p in loaded.named_parameters() if n.endswith("q_bias"))


def test_hash_suffix_mismatch_is_refused(tmp_path):
    path = _meta_file(make_tiny_backbone(), tmp_path / "meta.pth")
    bad = tmp_path / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
    shutil.copy(path, bad)
    with pytest.raises(WeightFileError, match="sha256 of the file starts with .* but its name says 08c60483"):
        FrozenDINOv3(**TINY, weights=bad)


def test_file_for_another_size_is_refused(tmp_path):
    path = _meta_file(make_tiny_backbone(), tmp_path / "small.pth")
    with pytest.raises(WeightFileError, match=r"embed_dim=64, depth=4.*expected embed_dim=96, depth=4"):
        FrozenDINOv3(arch="vits16", depth=4, embed_dim=96, num_heads=2, weights=path)
    with pytest.raises(WeightFileError, match=r"ffn=mlp.*expected .*ffn=swiglu"):
        FrozenDINOv3(**{**TINY, "arch": "vits16plus"}, weights=path)


def test_truncated_and_missing_files_are_refused(tmp_path):
    path = _meta_file(make_tiny_backbone(), tmp_path / "meta.pth")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightFileError, match="truncated or corrupt"):
        FrozenDINOv3(**TINY, weights=cut)
    bad_st = tmp_path / "cut.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(WeightFileError, match="truncated or corrupt"):
        FrozenDINOv3(**TINY, weights=bad_st)
    with pytest.raises(WeightFileError, match="not found"):
        FrozenDINOv3(**TINY, weights=tmp_path / "nope.pth")


def test_random_init_warns():
    with pytest.warns(UserWarning, match="RANDOM init; its features are meaningless"):
        FrozenDINOv3(**TINY)


def test_frozen_after_train_and_downstream_optimizer_step(tiny_backbone):
    backbone = make_tiny_backbone(seed=7)
    head = torch.nn.Conv2d(64, 5, 1)
    wrapper = torch.nn.ModuleDict(dict(backbone=backbone, head=head)).train()
    assert not backbone.training and not any(m.training for m in backbone.modules())
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.to(torch.float32)  # _apply must not unfreeze
    assert not any(p.requires_grad for p in backbone.parameters())
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    opt = torch.optim.SGD([p for p in wrapper.parameters() if p.requires_grad], lr=1.0)
    assert sum(len(g["params"]) for g in opt.param_groups) == 2  # head weight + bias only
    feats = backbone.last_layer_map(torch.randn(2, 3, 32, 32))
    assert not feats.requires_grad and feats.grad_fn is None  # no autograd bookkeeping
    head(feats).square().mean().backward()
    opt.step()
    assert all(p.grad is None for p in backbone.parameters())
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("shape", [(1, 3, 30, 32), (1, 3, 32, 40), (1, 1, 32, 32), (3, 32, 32)])
def test_bad_sizes_raise(tiny_backbone, shape):
    with pytest.raises(ValueError, match="multiple of 16|expected an image batch"):
        tiny_backbone.layers(torch.randn(*shape))


def test_bad_layer_index_raises(tiny_backbone):
    with pytest.raises(IndexError, match="out of range"):
        tiny_backbone.layers(torch.randn(1, 3, 16, 16), [4])


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_size_builds_on_meta_device(arch):
    info = ARCHS[arch]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the meta device must not warn about random init
        b = FrozenDINOv3(arch, device="meta")
    assert (b.embed_dim, b.depth, b.spec.num_heads) == (info.embed_dim, info.depth, info.num_heads)
    assert next(b.parameters()).device.type == "meta"
    # exact: the parameters of Meta's checkpoints, which load strictly into these models
    # (the quoted sizes: 21M, 29M, 86M, 300M, 840M, 6.7B)
    expected = {"vits16": 21_596_160, "vits16plus": 28_692_480, "vitb16": 85_659_648, "vitl16": 303_128_576,
                "vith16plus": 840_591_360, "vit7b16": 6_716_030_976}[arch]
    assert sum(p.numel() for p in b.parameters()) == expected


def test_unknown_arch_is_refused():
    with pytest.raises(KeyError, match="unknown DINOv3 arch"):
        FrozenDINOv3("vitg14")


def test_forward_on_meta_device_for_flop_counting():
    """FLOP-only benchmarks run the backbone on the meta device: the input checks must not
    touch values or autocast state there."""
    b = FrozenDINOv3("vits16", device="meta")
    out = b.last_layer_map(torch.empty(2, 3, 64, 96, device="meta"))
    assert out.shape == (2, 384, 4, 6) and out.device.type == "meta"
