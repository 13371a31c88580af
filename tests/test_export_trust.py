"""Exported model files are data (issue 27): loading one builds only what the project and the
frameworks register, from an exact allow-list checked before anything is built, and a file edited
after export is refused by its digest. Each tampered file here would have run ``touch M`` (or
loaded silently with another factor) before."""
from __future__ import annotations

import inspect
import json
import os
import time
from pathlib import Path

import pytest

if os.environ.get("BRIXEL_REQUIRE_STACK") != "1":
    pytest.importorskip("mmseg", reason="install with the [mmseg] extra (make test does)")
    pytest.importorskip("detectron2", reason="scripts/setup_env.sh installs detectron2")

from test_infer import D2_OVERRIDES, D2_TOY, ROOT, d2_checkpoint, dinov3_file, mmseg_checkpoint, run  # noqa: E402,F401

from brixel_plugins.backbones.weights import WeightFileError  # noqa: E402
from brixel_plugins.files.export import OLD_FORMATS, load_exported_model, model_digest  # noqa: E402

POPEN = {"type": "subprocess.Popen", "args": "touch M", "shell": True}
D2_POPEN = {"_target_": "detectron2.utils.collect_env.subprocess.Popen", "args": "touch M", "shell": True}


def rewrite(src: Path, dst: Path, edit, reseal: bool = False) -> Path:
    """``src`` with its header JSON changed by ``edit(meta)``; ``reseal``: with a digest computed
    anew, as a forger would (the allow-list is then what refuses it)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        tensors, raw = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    meta = json.loads(raw["model"])
    edit(meta)
    raw["model"] = json.dumps(meta, sort_keys=True)
    if reseal:
        raw["digest"] = model_digest(raw, tensors)
    save_file(tensors, str(dst), metadata=raw)
    return dst


def refused(path: Path, cwd: Path, match: str, where: str):
    """Loading ``path`` in ``cwd`` raises ``match`` from ``where`` (the reader or the config check,
    so nothing was built) and leaves no marker file behind."""
    with pytest.raises(WeightFileError, match=match) as e:
        load_exported_model(path)
    assert any(entry.name == where for entry in e.traceback), [entry.name for entry in e.traceback]
    time.sleep(0.3)  # a Popen that ran would have created the marker by now
    assert not (cwd / "M").exists()
    return str(e.value)


@pytest.fixture(scope="module")
def mmseg_export(mmseg_checkpoint, dinov3_file, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("mmseg_export") / "toy.safetensors"
    config, checkpoint = mmseg_checkpoint
    r = run(ROOT / "tools" / "export_model.py", config, checkpoint, out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def d2_export(d2_checkpoint, tmp_path_factory):  # noqa: F811
    checkpoint, overrides = d2_checkpoint
    out = tmp_path_factory.mktemp("d2_export") / "toy_d2.safetensors"
    r = run(ROOT / "tools" / "export_model.py", D2_TOY, checkpoint, out, *overrides)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture
def cwd(tmp_path, monkeypatch, dinov3_file):  # noqa: F811
    monkeypatch.setenv("BRIXEL_WEIGHTS_DIR", str(Path(dinov3_file).parent))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _set(path: str, value):
    def edit(meta):
        node, *keys = meta["config"], *path.split(".")
        keys = [int(k) if k.isdigit() else k for k in keys]
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return edit


MMSEG_TAMPERING = {"loss_decode": "model.decode_head.loss_decode", "data_preprocessor": "model.data_preprocessor",
                   "test_pipeline": "test_pipeline.1"}


@pytest.mark.parametrize("what", MMSEG_TAMPERING)
def test_mmseg_export_naming_code_is_refused_before_building(what, mmseg_export, cwd):
    key = MMSEG_TAMPERING[what]
    assert load_exported_model(mmseg_export) is not None  # the untouched file loads
    edited = rewrite(mmseg_export, cwd / "edited.safetensors", _set(key, POPEN))
    refused(edited, cwd, "modified after export", "read_model_file")
    forged = rewrite(mmseg_export, cwd / "forged.safetensors", _set(key, POPEN), reseal=True)
    message = refused(forged, cwd, "refusing to build it", "check_config")
    where = key.replace(".1", "[1]")
    assert f"{where}.type = 'subprocess.Popen'" in message


def test_mmseg_plain_names_of_other_registries_and_scopes_are_refused(mmseg_export, cwd):
    for edit, where in ((_set("model.decode_head.loss_decode", {"type": "mmdet.CrossEntropyLoss"}),
                         "model.decode_head.loss_decode.type"),
                        (_set("test_pipeline.0", {"type": "EncoderDecoder"}), "test_pipeline[0].type"),
                        (_set("model.decode_head.norm_cfg", {"type": "BN", "_scope_": "os"}),
                         "model.decode_head.norm_cfg._scope_"),
                        (_set("default_scope", "mmdet"), "default_scope"),
                        (lambda meta: meta["config"].update(custom_imports={"imports": ["os"]}), "custom_imports")):
        forged = rewrite(mmseg_export, cwd / "forged.safetensors", edit, reseal=True)
        assert f"{where} = " in refused(forged, cwd, "refusing to build it", "check_config")


def test_tools_infer_refuses_a_tampered_export(mmseg_export, cwd, dinov3_file):  # noqa: F811
    forged = rewrite(mmseg_export, cwd / "forged.safetensors", _set("model.decode_head.loss_decode", POPEN),
                     reseal=True)
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 30)).save(cwd / "picture.png")
    r = run(ROOT / "tools" / "infer.py", forged, cwd / "picture.png", "--out-dir", cwd / "out", cwd=cwd)
    time.sleep(0.3)
    assert r.returncode == 1 and not (cwd / "M").exists() and not (cwd / "out").exists()
    assert "model.decode_head.loss_decode.type = 'subprocess.Popen'" in r.stderr


def test_changed_factor_is_refused_by_the_digest(mmseg_export, cwd):
    from safetensors import safe_open

    with safe_open(str(mmseg_export), framework="pt") as f:
        meta = json.loads(f.metadata()["model"])
    up = meta["config"]["model"]["backbone"]["upsampler"]
    assert up["type"] == "bilinear" and up["factor"] == 4
    edited = rewrite(mmseg_export, cwd / "edited.safetensors", _set("model.backbone.upsampler.factor", 2))
    message = refused(edited, cwd, "was modified after export", "read_model_file")
    assert "python tools/export_model.py" in message


def test_changed_tensor_is_refused_by_the_digest(mmseg_export, cwd):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(mmseg_export), framework="pt") as f:
        tensors, raw = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    name = next(k for k in sorted(tensors) if tensors[k].is_floating_point())
    tensors[name] = tensors[name] + 1
    save_file(tensors, str(cwd / "edited.safetensors"), metadata=raw)
    refused(cwd / "edited.safetensors", cwd, "modified after export", "read_model_file")


def test_export_of_the_first_format_is_refused_with_the_command(mmseg_export, mmseg_checkpoint, cwd):  # noqa: F811
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(mmseg_export), framework="pt") as f:
        tensors, raw = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    meta = json.loads(raw["model"])
    meta["format"] = OLD_FORMATS[0]
    save_file(tensors, str(cwd / "old.safetensors"), metadata={"format": OLD_FORMATS[0], "model": json.dumps(meta)})
    message = refused(cwd / "old.safetensors", cwd, "older brixel_plugins", "read_model_file")
    config, checkpoint = mmseg_checkpoint
    assert f"export it again: python tools/export_model.py {config} {checkpoint} OUT.safetensors" in message


# -- Detectron2 -----------------------------------------------------------------------------------
D2_TAMPERING = {"top_block": ("model.backbone.top_block", "model.backbone.top_block._target_"),
                "augmentation": ("dataloader.test.mapper.augmentations.0",
                                 "dataloader.test.mapper.augmentations[0]._target_")}


@pytest.mark.parametrize("what", D2_TAMPERING)
def test_d2_export_naming_code_is_refused_before_building(what, d2_export, cwd):
    key, where = D2_TAMPERING[what]
    edited = rewrite(d2_export, cwd / "edited.safetensors", _set(key, D2_POPEN))
    refused(edited, cwd, "modified after export", "read_model_file")
    forged = rewrite(d2_export, cwd / "forged.safetensors", _set(key, D2_POPEN), reseal=True)
    message = refused(forged, cwd, "refusing to build it", "check_config")
    assert f"{where} = 'detectron2.utils.collect_env.subprocess.Popen'" in message


def test_d2_export_refuses_prefix_lookalikes_and_interpolations(d2_export, cwd):
    from brixel_plugins.d2.predictor import LazyPredictor

    for value, where in ((dict(D2_POPEN, _target_="torch.nn.modules.module.subprocess.Popen"),
                          "model.backbone.top_block._target_"),
                         ({"_target_": "detectron2.modeling.backbone.fpn.LastLevelMaxPool",
                           "x": "${oc.env:HOME}"}, "model.backbone.top_block.x")):
        forged = rewrite(d2_export, cwd / "forged.safetensors", _set("model.backbone.top_block", value), reseal=True)
        assert f"{where} = " in refused(forged, cwd, "refusing to build it", "check_config")
        with pytest.raises(WeightFileError, match="refusing to build it"):
            LazyPredictor.from_export(str(forged))


def test_d2_infer_refuses_a_tampered_export(d2_export, cwd):
    forged = rewrite(d2_export, cwd / "forged.safetensors", _set("model.backbone.top_block", D2_POPEN), reseal=True)
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 30)).save(cwd / "picture.png")
    r = run(ROOT / "tools" / "d2_infer.py", "--model", forged, "--input", cwd / "picture.png", "--output",
            cwd / "out", cwd=cwd)
    time.sleep(0.3)
    assert r.returncode == 1 and not (cwd / "M").exists() and not (cwd / "out").exists()
    assert "model.backbone.top_block._target_ = 'detectron2.utils.collect_env.subprocess.Popen'" in r.stderr


# -- the allow-lists cover every shipped config ---------------------------------------------------
def test_every_shipped_mmseg_config_passes_the_allow_list():
    from mmengine.config import Config

    from brixel_plugins.mmseg.export import INFERENCE_KEYS, _plain_config, check_config

    configs = sorted(p for p in (ROOT / "configs" / "mmseg").rglob("*.py") if "_base_" not in p.parts)
    assert configs
    for path in configs:
        cfg = Config.fromfile(str(path))
        check_config(json.loads(json.dumps(_plain_config({k: cfg[k] for k in INFERENCE_KEYS if k in cfg}))), path)


def test_every_shipped_d2_config_passes_the_allow_list():
    from detectron2.config import LazyConfig

    from brixel_plugins.d2.export import ALLOWED_TARGETS, _plain

    targets = set()

    def collect(node):
        if isinstance(node, dict):
            targets.update([node["_target_"]] if "_target_" in node else [])
            for v in node.values():
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)

    # one backbone size: vitb16 / vitl16 change widths, not classes
    configs = [p for p in sorted((ROOT / "configs" / "d2").glob("*/*.py"))
               if p.parent.name != "common" and "vitb16" not in p.name and "vitl16" not in p.name]
    assert len(configs) >= 15
    for path in configs:
        cfg = LazyConfig.load(str(path))
        collect(_plain(cfg.model))
        collect(_plain(cfg.dataloader.test.mapper.augmentations))
    assert targets <= ALLOWED_TARGETS, sorted(targets - ALLOWED_TARGETS)
    from detectron2.utils.registry import locate

    assert all(inspect.isclass(locate(t)) for t in ALLOWED_TARGETS)  # classes, none a function
