"""Predictions on a user's pictures with MMSegmentation's own inference API (``init_model`` +
``inference_model``): a class map of the whole picture at its own size, saved as a PNG in the
dataset's palette, and the map blended over the picture with a legend of the classes present.
Every file is written atomically.

mmseg's inference API runs the config's ``test_pipeline``. In the configs here that pipeline
predicts the whole picture (the 256 px protocols resize the short side to 256 and nothing else,
whole or sliding-window inference as ``model.test_cfg`` says); the evaluation protocol, which
scores a centre crop (``CenterCrop`` + ``ResetOriShape``), is the ``val_pipeline`` of the
val/test dataloaders that tools/test.py runs. A ``test_pipeline`` that crops is refused here, as
it would return a map of the crop, not of the picture. A ``test_pipeline`` without any resize
predicts a picture at its full size: :func:`large_picture_warning` says so for large pictures.

    model = load_segmentor(config, checkpoint)       # mmseg.apis.init_model
    classes = predict(model, load_rgb("photo.jpg"))  # (H, W) class ids, H x W = the picture's size
    save_class_map(classes, model.dataset_meta["palette"], "photo.png")
    segment_pictures(model, picture_paths(["photos/"]), "out")  # tools/infer.py: maps/ and overlays/

:func:`apply_test_options` sets up tools/test.py's evaluation (mmseg's ``--out``, ``--show``,
``--show-dir``, ``--tta``).
"""
from __future__ import annotations

import os
import os.path as osp
import sys
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.config import Config

from ..cli.pictures import PicturesFailedError
from ..engine import CheckpointError, trusted_checkpoint_globals, unloadable_reason
from ..images import load_rgb

# transforms that make a pipeline predict something other than the whole picture
NOT_WHOLE_PICTURE = ("CenterCrop", "RandomCrop", "ResetOriShape")
# transforms that read or check a label map
LABEL_MAP_TRANSFORMS = ("LoadAnnotations", "CheckLabelMap")


def _transform_types(pipeline: Sequence[dict]):
    for t in pipeline:
        yield t["type"]
        for inner in t.get("transforms", []):  # TestTimeAug: a list of alternatives per step
            yield from _transform_types(inner if isinstance(inner, (list, tuple)) else [inner])


def check_whole_picture(pipeline: Sequence[dict], name: str) -> None:
    """Refuse a pipeline whose prediction is not a map of the whole picture."""
    cropping = sorted(set(_transform_types(pipeline)) & set(NOT_WHOLE_PICTURE))
    if cropping:
        raise ValueError(f"the config's {name} has {', '.join(cropping)}: its predictions cover a crop of the "
                         f"picture, not the picture (an evaluation protocol). Give inference a {name} that "
                         f"loads and resizes only (e.g. the test_pipeline of configs/mmseg/_base_/datasets/)")


def without_annotations(pipeline: Sequence[dict]) -> list:
    """The pipeline without the steps that read or check a label map (pictures have none), in
    TestTimeAug's steps too."""
    out = []
    for t in pipeline:
        if t["type"] in LABEL_MAP_TRANSFORMS:
            continue
        if "transforms" in t:
            steps = [[s for s in step if s["type"] not in LABEL_MAP_TRANSFORMS] for step in t["transforms"]]
            t = dict(t, transforms=[s for s in steps if s])
        out.append(t)
    return out


def load_segmentor(config: Union[str, Config], checkpoint: Optional[str] = None, device: str = "cpu",
                   cfg_options: Optional[dict] = None, tta: bool = False) -> torch.nn.Module:
    """mmseg's ``init_model`` on a checkpoint of tools/train.py (or mmseg's own train.py): the
    checkpoint holds what trained, DINOv3 and a frozen upsampler load from the files the config
    names (relative paths also from the config's folder). The checkpoint is read with torch's safe
    unpickler, allowing only what mmengine checkpoints hold. ``dataset_meta`` (class names,
    palette) comes from the checkpoint, else from the config's dataset.

    ``config`` may instead be one file of tools/export_model.py (``checkpoint=None``): the model,
    its inference pipelines and class names in one file, DINOv3 found by its recorded name and hash.

    ``tta=True`` wraps the model in the config's ``tta_model`` (see :func:`predict`)."""
    if checkpoint is None:
        if cfg_options:
            raise ValueError("an exported model file takes no config overrides: export again with them")
        from ..files.export import load_exported_model

        model = load_exported_model(config, device)
        check_pipelines(model.cfg, tta)
    else:
        model = _init_model(config, checkpoint, device, cfg_options, tta)
    cfg = model.cfg
    cfg.test_pipeline = without_annotations(cfg.test_pipeline)  # mmseg drops only LoadAnnotations
    num_classes = model.decode_head.num_classes
    classes = (model.dataset_meta or {}).get("classes") or ()
    if classes and len(classes) != num_classes:
        raise ValueError(f"{checkpoint or config}: its class names list {len(classes)} classes, the model has "
                         f"{num_classes} (model.decode_head.num_classes)")
    if not classes:
        raise ValueError(f"{checkpoint or config} records no class names and palette for its {num_classes} classes")
    if not tta:
        return model
    from mmseg.registry import MODELS

    wrapped = MODELS.build(dict(cfg.tta_model, module=model))
    wrapped.cfg, wrapped.dataset_meta = model.cfg, model.dataset_meta
    return wrapped.eval()


def check_pipelines(cfg: Config, tta: bool) -> None:
    """Refuse a config whose inference pipeline (``test_pipeline``, or with ``tta`` the
    ``tta_pipeline``) does not predict whole pictures, or that has none."""
    if "test_pipeline" not in cfg:
        raise ValueError("the config has no test_pipeline: mmseg's inference API needs one")
    check_whole_picture(cfg.test_pipeline, "test_pipeline")
    if tta:
        if "tta_model" not in cfg or not cfg.get("tta_pipeline"):
            raise ValueError("--tta: the config defines no test-time augmentation (tta_model and tta_pipeline)")
        check_whole_picture(cfg.tta_pipeline, "tta_pipeline")


def _init_model(config: Union[str, Config], checkpoint: str, device: str, cfg_options: Optional[dict], tta: bool):
    from mmseg.apis import init_model
    from mmseg.registry import DATASETS

    from ..files.lookup import config_folder
    from . import DINOv3Featurizer  # noqa: F401  registers our components (as custom_imports would)

    cfg = Config.fromfile(config) if isinstance(config, str) else config.copy()
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    check_pipelines(cfg, tta)  # before building anything
    reason = unloadable_reason(checkpoint)
    if reason:
        raise CheckpointError(f"cannot load checkpoint {checkpoint}: {reason}")
    with config_folder(config if isinstance(config, str) else cfg.filename), trusted_checkpoint_globals(checkpoint):
        model = init_model(cfg, checkpoint, device=device)
    if len(model.dataset_meta.get("classes") or ()) != model.decode_head.num_classes:
        # a checkpoint without dataset_meta: init_model guessed a dataset by the class count
        name = cfg.get("test_dataloader", {}).get("dataset", {}).get("type")
        dataset = DATASETS.get(name) if isinstance(name, str) else None
        if dataset is not None:
            model.dataset_meta = dict(dataset.METAINFO)
    return model


def apply_test_options(cfg: Config, checkpoint: str, out: Optional[str] = None, show: bool = False,
                       wait_time: float = 2, show_dir: Optional[str] = None, tta: bool = False) -> Config:
    """tools/test.py's options (mmseg's tools/test.py interface) on the config the Runner tests:
    ``checkpoint`` loaded (no resume); ``show`` / ``show_dir`` draw the predictions through the
    config's ``SegVisualizationHook`` (``show`` needs a display); ``out``: the test metric
    (``IoUMetric``) also saves its predictions as PNGs of class ids there; ``tta``: the config's
    ``tta_model`` and ``tta_pipeline``. Refuses, before anything runs, what the config cannot do."""
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    cfg.load_from = checkpoint
    cfg.resume = False
    if show and not has_display():
        raise ValueError("--show opens a window, and this session has no display (DISPLAY / WAYLAND_DISPLAY unset); "
                         "use --show-dir DIR to save the drawn predictions instead")
    if show or show_dir:
        vis = cfg.default_hooks.get("visualization")
        if vis is None or vis.get("type") != "SegVisualizationHook":
            raise ValueError("--show and --show-dir need default_hooks.visualization = SegVisualizationHook")
        vis.update(draw=True, interval=1, show=show, wait_time=wait_time)
        if show_dir:
            cfg.visualizer.save_dir = show_dir
    if out:
        _save_predictions(cfg, out)
    if tta:
        if "tta_model" not in cfg or "tta_pipeline" not in cfg:
            raise ValueError("--tta needs tta_model and tta_pipeline in the config")
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    return cfg


def has_display() -> bool:
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _save_predictions(cfg: Config, out: str) -> None:
    """mmseg's ``--out``: the test metric saves its predictions in ``out`` (``IoUMetric(output_dir=...)``)
    and still computes the metrics."""
    evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, (list, tuple)) else [cfg.test_evaluator]
    metrics = [e for e in evaluators if e.get("type") in ("IoUMetric", "mmseg.IoUMetric")]
    if not metrics:
        raise ValueError(f"--out saves predictions through mmseg's IoUMetric (output_dir), and the config's "
                         f"test_evaluator has none ({', '.join(str(e.get('type')) for e in evaluators)})")
    for metric in metrics:
        metric.update(output_dir=osp.abspath(out))


def predict(model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """Class ids ``(H, W)`` (int64) of the whole ``image`` (uint8 ``(H, W, 3)`` RGB), at its own size.
    A model from ``load_segmentor(..., tta=True)`` averages the config's test-time augmentations."""
    from mmseg.apis import inference_model

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"predict takes an RGB uint8 (H, W, 3) picture, got {image.dtype} {image.shape}")
    bgr = np.ascontiguousarray(image[..., ::-1])  # mmseg's loaders give BGR; the preprocessor converts
    if hasattr(model, "module"):  # the test-time augmentation wrapper
        return _predict_tta(model, bgr)
    result = inference_model(model, bgr)
    return result.pred_sem_seg.data[0].cpu().numpy().astype(np.int64)


def _predict_tta(model, bgr: np.ndarray) -> np.ndarray:
    from mmengine.dataset import Compose, pseudo_collate

    steps = without_annotations(model.cfg.tta_pipeline)
    steps[0] = dict(steps[0], type="LoadImageFromNDArray")
    data = pseudo_collate([Compose(steps)(dict(img=bgr))])
    with torch.no_grad():
        result = model.test_step(data)[0]
    return result.pred_sem_seg.data[0].cpu().numpy().astype(np.int64)


# a picture above this many pixels, predicted at full size, is slow and memory-hungry (ViT/16:
# 4096 tokens of global attention at 1024 x 1024): tools/infer.py says so once
LARGE_PICTURE_PIXELS = 1024 * 1024


def full_size_note(model: torch.nn.Module, hw) -> Optional[str]:
    """What to tell a user whose picture of ``hw`` (H, W) pixels the model's inference pipeline
    (``test_pipeline``, or ``tta_pipeline`` under test-time augmentation) predicts at full size,
    having no resize step, when it exceeds ``LARGE_PICTURE_PIXELS``; else None."""
    tta = hasattr(model, "module")
    name = "tta_pipeline" if tta else "test_pipeline"
    types = set(_transform_types(model.cfg[name]))
    if any("Resize" in t and t != "ResizeToMultiple" for t in types) or hw[0] * hw[1] <= LARGE_PICTURE_PIXELS:
        return None
    tokens = -(-hw[0] // 16) * -(-hw[1] // 16)
    return (f"a {hw[1]}x{hw[0]} picture ({hw[0] * hw[1] / 1e6:.1f} MP) is predicted at full size (~{tokens} "
            f"DINOv3 tokens: slow and memory-hungry), as the config's {name} has no resize. To predict at the "
            f"training scale, add e.g. dict(type='Resize', scale=(2048, 512), keep_ratio=True) after its loading "
            f"step (the class map still comes back at the picture's size)")


def segment_pictures(model: torch.nn.Module, pictures: Sequence[Tuple[str, str]], out_dir: str,
                     opacity: float = 0.5) -> None:
    """tools/infer.py: for each ``(path, name)`` of :func:`brixel_plugins.cli.pictures.picture_paths`,
    ``out_dir/maps/<name>.png`` (:func:`save_class_map`) and ``out_dir/overlays/<name>.png``
    (:func:`overlay`). A picture that cannot be read or runs out of GPU memory is reported and
    skipped; after the others, :class:`~brixel_plugins.cli.pictures.PicturesFailedError` lists them."""
    meta = model.dataset_meta
    failed, warned = [], False
    for i, (path, name) in enumerate(pictures, 1):
        try:
            image = np.asarray(load_rgb(path))
        except (OSError, ValueError) as e:  # empty, not an image, truncated, floating-point
            failed.append(f"cannot read {path}: {e}")
            print(f"[{i}/{len(pictures)}] {path}: FAILED, cannot read it: {e}", file=sys.stderr, flush=True)
            continue
        note = None if warned else full_size_note(model, image.shape[:2])
        if note:
            print(f"warning: {path}: {note} (said once)", file=sys.stderr, flush=True)
            warned = True
        try:
            classes = predict(model, image)
        except torch.cuda.OutOfMemoryError:  # this picture's size; smaller ones may still fit
            torch.cuda.empty_cache()
            failed.append(f"{path}: out of memory at {image.shape[1]}x{image.shape[0]}")
            print(f"[{i}/{len(pictures)}] {path}: FAILED, out of memory", file=sys.stderr, flush=True)
            continue
        save_class_map(classes, meta["palette"], osp.join(out_dir, "maps", f"{name}.png"))
        save_rgb(overlay(image, classes, meta, opacity), osp.join(out_dir, "overlays", f"{name}.png"))
        print(f"[{i}/{len(pictures)}] {path}: {image.shape[1]}x{image.shape[0]}, {len(np.unique(classes))} classes",
              flush=True)
    print(f"class maps: {osp.join(out_dir, 'maps')}\noverlays:   {osp.join(out_dir, 'overlays')}")
    if failed:
        listed = "; ".join(failed[:10]) + (f"; ... {len(failed) - 10} more" if len(failed) > 10 else "")
        raise PicturesFailedError(f"{len(failed)} of {len(pictures)} pictures failed (the others were written): "
                                  f"{listed}")


def save_class_map(classes: np.ndarray, palette: Sequence[Sequence[int]], path: str) -> str:
    """The class map as a paletted PNG: pixel values are class ids, shown in the dataset's colours.
    Written atomically: a crash leaves no partial file under ``path``."""
    from PIL import Image

    if classes.max(initial=0) > 255:
        raise ValueError(f"a paletted PNG holds class ids up to 255, the map has {classes.max()}")
    img = Image.fromarray(classes.astype(np.uint8), mode="P")
    flat = [int(v) for colour in palette for v in colour]
    img.putpalette(flat + [0] * (768 - len(flat)))
    return _save_png(img, path)


def class_colours(classes: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """The class map in solid class colours (uint8 RGB); ids outside the palette (e.g. 255,
    ignored) are white."""
    lut = np.full((256, 3), 255, np.uint8)
    lut[:len(palette)] = np.asarray(palette, np.uint8)[:256]
    if classes.min(initial=0) < 0 or classes.max(initial=0) > 255:
        raise ValueError(f"class ids must be in 0..255, the map has {classes.min()}..{classes.max()}")
    return lut[classes.astype(np.int64)]


def overlay(image: np.ndarray, classes: np.ndarray, dataset_meta: dict, opacity: float = 0.5,
            with_labels: bool = True) -> np.ndarray:
    """The class map over the RGB picture (uint8 RGB, the picture's size): each class's colour
    blended at ``opacity``, except classes coloured black (background, as in the toy data), which
    would only darken the photo and are left as it is. ``with_labels``: a legend of the classes
    present, largest first, drawn inside the picture's top-left corner (see :func:`draw_legend`)."""
    if classes.shape != image.shape[:2]:
        raise ValueError(f"class map {classes.shape} and picture {image.shape[:2]} differ in size")
    palette = dataset_meta["palette"]
    colours = class_colours(classes, palette).astype(np.float32)
    alpha = np.where(colours.any(axis=-1, keepdims=True), np.float32(opacity), np.float32(0))
    drawn = np.rint(image.astype(np.float32) * (1 - alpha) + colours * alpha).astype(np.uint8)
    if not with_labels:
        return drawn
    ids, counts = np.unique(classes, return_counts=True)
    names = dataset_meta["classes"]
    present = [(names[i], tuple(palette[i])) for i, _ in sorted(zip(ids, counts), key=lambda t: -t[1])
               if 0 <= i < len(names)]
    return draw_legend(drawn, present)


def draw_legend(image: np.ndarray, entries: Sequence, corner: str = "top-left") -> np.ndarray:
    """``entries`` ((name, colour) pairs) as a legend on a light panel inside ``image`` (uint8 RGB,
    returned as a copy), the text sized to the picture. Every part stays inside the picture: names
    too long for it are shortened with "...", classes beyond the rows that fit are summed up as
    "+N more"; a picture too small for one row gets no legend."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = image.shape[:2]
    size = int(np.clip(min(h, w) / 22, 9, 28))
    font = ImageFont.load_default(size=size)
    pad, gap = max(2, size // 4), max(2, size // 3)
    row = size + gap
    rows = (h - 2 * pad) // row
    if rows < 1 or w < 3 * size + 2 * pad or not entries:
        return image.copy()
    entries = list(entries)
    if len(entries) > rows:
        entries = entries[:rows - 1] + [(f"+{len(entries) - rows + 1} more", None)]
    room = w - 2 * pad - size - gap  # for text, right of the swatch

    def fit(text: str) -> str:
        if font.getlength(text) <= room:
            return text
        while text and font.getlength(text + "...") > room:
            text = text[:-1]
        return text + "..."

    texts = [fit(str(name)) for name, _ in entries]
    box_w = min(w, 2 * pad + size + gap + int(max(font.getlength(t) for t in texts)) + 1)
    box_h = 2 * pad + len(entries) * row - gap
    x0 = 0 if corner.endswith("left") else w - box_w
    y0 = 0 if corner.startswith("top") else h - box_h
    canvas = Image.fromarray(image).convert("RGBA")
    layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    draw.rectangle((x0, y0, x0 + box_w - 1, y0 + box_h - 1), fill=(255, 255, 255, 215))
    for k, ((_, colour), text) in enumerate(zip(entries, texts)):
        y = y0 + pad + k * row
        if colour is not None:
            draw.rectangle((x0 + pad, y, x0 + pad + size - 1, y + size - 1), fill=tuple(int(c) for c in colour),
                           outline=(90, 90, 90, 255))
        draw.text((x0 + pad + size + gap, y + size / 2), text, fill=(0, 0, 0, 255), font=font, anchor="lm")
    return np.asarray(Image.alpha_composite(canvas, layer).convert("RGB"))


def save_rgb(image: np.ndarray, path: str) -> str:
    """An RGB picture as a PNG, written atomically (no partial file under ``path``)."""
    from PIL import Image

    return _save_png(Image.fromarray(image), path)


def _save_png(img, path: str) -> str:
    from ..common.filesystem import atomic_path

    with atomic_path(path) as tmp:  # the temporary name ends in .tmp: say the format
        img.save(tmp, format="PNG")
    return path
