"""Predictions on a user's pictures with MMSegmentation's own inference API (``init_model`` +
``inference_model``): a class map of the whole picture at its own size, saved as a PNG in the
dataset's palette, and the map drawn over the picture by mmseg's ``SegLocalVisualizer``.

mmseg's inference API runs the config's ``test_pipeline``. In the configs here that pipeline
predicts the whole picture (the 256 px protocols resize the short side to 256 and nothing else,
whole or sliding-window inference as ``model.test_cfg`` says); the evaluation protocol, which
scores a centre crop (``CenterCrop`` + ``ResetOriShape``), is the ``val_pipeline`` of the
val/test dataloaders that tools/test.py runs. A ``test_pipeline`` that crops is refused here, as
it would return a map of the crop, not of the picture.

    model = load_segmentor(config, checkpoint)       # mmseg.apis.init_model
    classes = predict(model, load_rgb("photo.jpg"))  # (H, W) class ids, H x W = the picture's size
    save_class_map(classes, model.dataset_meta["palette"], "photo.png")
"""
from __future__ import annotations

import os.path as osp
import uuid
from typing import Optional, Sequence, Union

import numpy as np
import torch
from mmengine.config import Config

from ..engine import CheckpointError, trusted_checkpoint_globals, unloadable_reason

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
        from ..export import load_exported_model

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

    from ..weight_files import config_folder
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


def save_class_map(classes: np.ndarray, palette: Sequence[Sequence[int]], path: str) -> str:
    """The class map as a paletted PNG: pixel values are class ids, shown in the dataset's colours."""
    from PIL import Image

    if classes.max(initial=0) > 255:
        raise ValueError(f"a paletted PNG holds class ids up to 255, the map has {classes.max()}")
    img = Image.fromarray(classes.astype(np.uint8), mode="P")
    flat = [int(v) for colour in palette for v in colour]
    img.putpalette(flat + [0] * (768 - len(flat)))
    _makedirs(path)
    img.save(path)
    return path


def overlay(image: np.ndarray, classes: np.ndarray, dataset_meta: dict, opacity: float = 0.5,
            with_labels: bool = True) -> np.ndarray:
    """The class map drawn over the RGB picture by mmseg's ``SegLocalVisualizer`` (uint8 RGB)."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    from mmseg.visualization import SegLocalVisualizer

    sample = SegDataSample()
    sample.pred_sem_seg = PixelData(data=torch.from_numpy(classes)[None])
    vis = SegLocalVisualizer(name=f"infer_{uuid.uuid4().hex}", alpha=opacity)
    vis.set_dataset_meta(classes=dataset_meta["classes"], palette=dataset_meta["palette"])
    vis.add_datasample("picture", image, sample, draw_gt=False, show=False, with_labels=with_labels)
    return vis.get_image()


def save_rgb(image: np.ndarray, path: str) -> str:
    from PIL import Image

    _makedirs(path)
    Image.fromarray(image).save(path)
    return path


def _makedirs(path: str) -> None:
    import os

    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
