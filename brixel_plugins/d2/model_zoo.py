"""The Detectron2 LazyConfigs shipped with the package, named like ``detectron2.model_zoo`` names its own:

    from brixel_plugins.d2 import model_zoo
    cfg = model_zoo.get_config("COCO/mask_rcnn_dinov3_vitb16_brixel_100ep.py")
    cfg = model_zoo.get_config("toy/mask_rcnn_dinov3_vits16_brixel_toy.py")

Names are paths under ``configs/d2/`` (``brixel_plugins::d2/<name>`` is accepted too). Weight files the
config names relatively are looked for under ``$BRIXEL_WEIGHTS_DIR`` and the working directory
(``brixel_plugins.files.lookup``); ``tools/d2_train.py`` also looks beside the config.
"""
from __future__ import annotations

from ..common import packaged

_D2 = "d2/"


def get_config_file(config_path: str) -> str:
    """The file of the packaged LazyConfig ``config_path`` (e.g. ``"COCO/mask_rcnn_..._100ep.py"``)."""
    name = config_path[len(packaged.PREFIX):] if config_path.startswith(packaged.PREFIX) else _D2 + config_path
    if not name.startswith(_D2):
        raise ValueError(f"{config_path!r} is not a Detectron2 config: those are brixel_plugins::d2/<path>")
    return packaged.config_file(name)


def get_config(config_path: str, trained: bool = False):
    """The LazyConfig of ``config_path`` (an omegaconf ``DictConfig``, as ``detectron2.model_zoo.get_config``
    gives for ``.py`` configs). ``trained=True`` is refused: this package publishes no detector checkpoints."""
    if trained:
        raise ValueError("brixel_plugins publishes no trained detectors: get_config(..., trained=True) has no "
                         "checkpoint to set; train one with tools/d2_train.py and set train.init_checkpoint")
    from detectron2.config import LazyConfig

    return LazyConfig.load(get_config_file(config_path))
