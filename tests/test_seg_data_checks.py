"""Bad segmentation data stops the run with a message naming the file (issue 21.4): a label map of
another size than its image when it is read, labels outside ``num_classes`` before any kernel
sees them. On the toy data with the toy config (tiny DINOv3), and on a stock mmseg dataset."""
from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("BRIXEL_REQUIRE_STACK") != "1":
    pytest.importorskip("mmseg", reason="install with the [mmseg] extra (make test does)")

from conftest import TINY  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import RUNNERS, DefaultScope  # noqa: E402
from PIL import Image  # noqa: E402

import brixel_plugins.mmseg  # noqa: E402,F401  registers the components

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "configs" / "mmseg" / "linear" / "linear_dinov3-vits16-bilinear_1xb8-60it_toy-shapes-128x128.py"


@pytest.fixture(scope="module", autouse=True)
def mmseg_scope():
    with DefaultScope.overwrite_default_scope("mmseg"):
        yield


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    from brixel_plugins.toydata.segmentation import write_toy_segmentation

    return write_toy_segmentation(tmp_path_factory.mktemp("toy") / "shapes", num_train=4, num_val=2, size=32)


@pytest.fixture
def data(toy_data, tmp_path):
    """A copy of the toy data this test may damage."""
    return Path(shutil.copytree(toy_data, tmp_path / "shapes"))


def run(data: Path, work: Path, **options):
    cfg = Config.fromfile(TOY)
    cfg.model.backbone.update(weights=None, **{k: TINY[k] for k in ("depth", "embed_dim", "num_heads")})
    cfg.model.decode_head.in_channels = TINY["embed_dim"]
    dataset = dict(data_root=str(data), generate=None)
    cfg.merge_from_dict({
        "train_dataloader.batch_size": 2, "train_dataloader.dataset": dataset,
        "val_dataloader.batch_size": 2, "val_dataloader.dataset": dataset, "test_dataloader.dataset": dataset,
        "train_cfg.max_iters": 2, "train_cfg.val_interval": 2, "default_hooks.checkpoint.interval": 2,
        "default_hooks.checkpoint.save_best": None, "log_level": "WARNING", **options})
    cfg.work_dir = str(work)
    cfg.experiment_name = f"labels_{uuid.uuid4().hex[:8]}"
    RUNNERS.build(cfg).train()


def resize_label(path: Path, hw) -> None:
    Image.fromarray(np.asarray(Image.open(path))).resize(hw[::-1], Image.NEAREST).save(path)


def test_one_label_map_of_another_size_is_named_when_read(data, tmp_path):
    """Was: "stack expects each tensor to be equal size" after training had started, no file named."""
    bad = data / "ann_dir" / "train" / "0001.png"
    resize_label(bad, (24, 32))
    with pytest.raises(ValueError, match=rf"label map {re.escape(str(bad))} is 24x32 \(HxW\), but its image "
                                         rf"{re.escape(str(data / 'img_dir' / 'train' / '0001.png'))} is 32x32"):
        run(data, tmp_path / "work")


def test_all_label_maps_of_another_size_stop_before_training(data, tmp_path):
    """Was: training ran (every batch the same wrong size) and crashed at the first validation."""
    for f in (data / "ann_dir").rglob("*.png"):
        resize_label(f, (16, 16))
    with pytest.raises(ValueError, match=r"label map .*\.png is 16x16 \(HxW\), but its image .* is 32x32"):
        run(data, tmp_path / "work")
    assert not list((tmp_path / "work").glob("*.pth")), "no step may have run"


def test_labels_outside_num_classes_stop_the_run_naming_file_label_and_num_classes(data, tmp_path):
    """Was: "IndexError: Target 3 is out of bounds" (a device-side assert on a GPU)."""
    with pytest.raises(ValueError, match=r"label map .*ann_dir/train/\d+\.png holds label\(s\) \[(3|4|3, 4)\], outside "
                                         r"num_classes=3 \(the decode head's num_classes"):
        run(data, tmp_path / "work", **{"model.decode_head.num_classes": 3})


def test_checks_work_in_a_stock_mmseg_dataset_and_test_pipeline(data):
    """mmseg's stock test pipelines resize the image before loading the labels: the size check
    compares with the image file's size, so it holds there too."""
    from mmseg.registry import DATASETS

    resize_label(data / "ann_dir" / "val" / "0000.png", (32, 24))
    dataset = DATASETS.build(dict(
        type="BaseSegDataset", data_root=str(data), img_suffix=".png", seg_map_suffix=".png",
        metainfo=dict(classes=("a", "b", "c", "d", "e")),
        data_prefix=dict(img_path="img_dir/val", seg_map_path="ann_dir/val"),
        pipeline=[dict(type="LoadImageFromFile"), dict(type="Resize", scale=(64, 64), keep_ratio=True),
                  dict(type="LoadAnnotations"), dict(type="CheckLabelMap"), dict(type="PackSegInputs")]))
    assert dataset[1]["data_samples"].gt_sem_seg.shape == (32, 32)
    with pytest.raises(ValueError, match=r"0000\.png is 32x24 \(HxW\), but its image .*0000\.png is 32x32"):
        dataset[0]


def test_every_shipped_dataset_checks_its_labels():
    """Every shipped config takes its data from one of these bases and its runtime from the last."""
    base = ROOT / "configs" / "mmseg" / "_base_"
    assert any(h.type == "LabelRangeHook" for h in Config.fromfile(base / "default_runtime.py").custom_hooks)
    for path in sorted((base / "datasets").glob("*.py")):
        cfg = Config.fromfile(path)
        for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
            types = [t["type"] for t in cfg[loader].dataset.pipeline]
            if "LoadAnnotations" in types:
                assert types[types.index("LoadAnnotations") + 1] == "CheckLabelMap", (path.name, loader, types)
