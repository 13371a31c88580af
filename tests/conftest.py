"""Shared fixtures: a tiny real timm DINOv3 and real photos from scikit-image."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from brixel_plugins import images
from brixel_plugins.backbones import FrozenDINOv3

# A real DINOv3 (timm Eva, RoPE, 4 registers, LayerScale) at a size 2 CPU cores run in ms.
# embed_dim 64 keeps BRIXEL's 16 heads x 4 points and GroupNorm(32) valid.
TINY = dict(arch="vits16", depth=4, embed_dim=64, num_heads=2)
TINY_DIMS = {k: v for k, v in TINY.items() if k != "arch"}  # the sizes that override a vits16 config


def tiny_cfg_options(prefix: str = "model.backbone") -> list:
    """``--cfg-options`` that shrink a config's ``vits16`` backbone at ``prefix`` to :data:`TINY`."""
    return [f"{prefix}.{k}={v}" for k, v in TINY_DIMS.items()]


def tiny_distill_options(batch_size: int, **extra) -> list:
    """``--cfg-options`` for ``tools/distill.py`` on a tiny backbone and a small photo folder:
    64 px teacher, 16 px student, 2 held-out photos, checkpoints every 2 iterations; ``extra``
    adds ``key=value`` pairs (e.g. ``train_cfg__max_iters=3`` for ``train_cfg.max_iters=3``)."""
    return [*tiny_cfg_options(), "model.teacher_size=64", "model.student_size=16",
            "train_dataloader.dataset.size=64", "val_dataloader.dataset.size=64",
            f"train_dataloader.batch_size={batch_size}", "train_dataloader.num_workers=0",
            "train_dataloader.persistent_workers=False", "val_dataloader.num_workers=0",
            "train_dataloader.dataset.num_val=2", "val_dataloader.dataset.num_val=2", "train_cfg.max_epochs=None",
            "default_hooks.checkpoint.interval=2", "default_hooks.logger.interval=1",
            *(f"{k.replace('__', '.')}={v}" for k, v in extra.items())]


@pytest.fixture(scope="module")
def small_photo_folder(tmp_path_factory):
    """8 scikit-image photos shrunk to at most 80 px (6 train, 2 held out by the options above)."""
    from brixel_plugins.images import load_rgb, skimage_photo_files

    root = tmp_path_factory.mktemp("imgs")
    for i, f in enumerate(skimage_photo_files()[:8]):
        im = load_rgb(f)
        im.thumbnail((80, 80))
        im.save(root / f"p{i}.jpg")
    return root


def learned_upsamplers(spec) -> list:
    """Names of the registered upsamplers that have parameters, each built at its default factor
    (those that need more than a name to build are skipped)."""
    from brixel_plugins.upsamplers import UPSAMPLERS, build_upsampler

    out = []
    for name in sorted(UPSAMPLERS):
        try:
            up = build_upsampler(dict(type=name), spec)
        except (TypeError, ValueError):
            continue
        if any(True for _ in up.parameters()):
            out.append(name)
    return out


def make_tiny_backbone(seed: int = 0, **kw) -> FrozenDINOv3:
    torch.manual_seed(seed)  # what the caller builds next starts from the seed, as before
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random-init warning is expected here
        return FrozenDINOv3(**{**TINY, "init_seed": seed, **kw})


@pytest.fixture(scope="session")
def tiny_backbone() -> FrozenDINOv3:
    return make_tiny_backbone()


@pytest.fixture(scope="session")
def tiny_spec(tiny_backbone):
    return tiny_backbone.spec


def normalise(img: np.ndarray, size) -> torch.Tensor:
    """uint8 HxWx3 -> ImageNet-normalised (1,3,h,w) at ``size`` (h, w)."""
    return images.normalise(images.resize(images.to_tensor(img).float() / 255.0, size).clamp(0, 1))


@pytest.fixture(scope="session")
def photo():
    """A real photograph (skimage's astronaut), ImageNet-normalised, 1x3x64x96."""
    from skimage import data

    return normalise(data.astronaut(), (64, 96))


@pytest.fixture
def tool_error(capsys):
    """``tool_error(main, argv)``: a tool's ``main`` run as its ``__main__`` runs it
    (:func:`brixel_plugins.cli.errors.run_tool`); it must end with exit status 1 and an ``error:``
    line, which is returned."""
    from brixel_plugins.cli.errors import run_tool

    def run(main, argv) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            run_tool(main, [str(a) for a in argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 1 and err and err[-1].startswith("error: "), (stop.value.code, err[-5:])
        return err[-1]

    return run
