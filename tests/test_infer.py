"""Inference on pictures, the frameworks' way: tools/infer.py (mmseg's init_model /
inference_model) and tools/d2_infer.py (LazyPredictor) on checkpoints trained here for two
iterations of the tiny toy configs, on a folder of pictures of mixed sizes."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

if os.environ.get("BRIXEL_REQUIRE_STACK") != "1":
    pytest.importorskip("mmseg", reason="install with the [mmseg] extra (make test does)")
    pytest.importorskip("detectron2", reason="scripts/setup_env.sh installs detectron2")

from conftest import TINY, TINY_DIMS, make_tiny_backbone  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import RUNNERS, DefaultScope  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MMSEG_TOY = ROOT / "configs" / "mmseg" / "linear" / "linear_dinov3-vits16-bilinear_1xb8-60it_toy-shapes-128x128.py"
ADE_256 = ROOT / "configs" / "mmseg" / "linear" / "linear_dinov3-vits16-bilinear_1xb32-40e_ade20k-256x256.py"
D2_TOY = ROOT / "configs" / "d2" / "toy" / "mask_rcnn_dinov3_vits16_bilinear_toy.py"
SIZES = {"square": (64, 64), "odd": (50, 61), "wide/tall": (150, 100)}  # (H, W); a sub-folder too


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """A folder of photos of mixed sizes (one not a multiple of 16, one in a sub-folder, a JPEG)."""
    from skimage import data

    folder = tmp_path_factory.mktemp("pictures")
    photo = Image.fromarray(data.astronaut())
    for name, (h, w) in SIZES.items():
        path = folder / (name + (".jpg" if name == "odd" else ".png"))
        path.parent.mkdir(parents=True, exist_ok=True)
        photo.resize((w, h)).save(path)
    return folder


@pytest.fixture(scope="module")
def dinov3_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dinov3") / "tiny_dinov3.pth"
    torch.save(make_tiny_backbone().model.state_dict(), path)
    return str(path)


def run(*args, cwd=ROOT):
    r = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300)
    return r


# -- MMSegmentation ------------------------------------------------------------------------------
def tiny_mmseg(path, dinov3_file) -> Config:
    cfg = Config.fromfile(path)
    cfg.model.backbone.update(weights=dinov3_file, **TINY_DIMS)
    cfg.model.decode_head.in_channels = TINY["embed_dim"]
    return cfg


@pytest.fixture(scope="module")
def mmseg_checkpoint(tmp_path_factory, dinov3_file):
    """The toy config (tiny DINOv3 file) trained for 2 iterations; its config dumped beside it."""
    from brixel_plugins.toydata.segmentation import write_toy_segmentation

    work = tmp_path_factory.mktemp("mmseg")
    root = str(write_toy_segmentation(work / "toy", num_train=4, num_val=2, size=64))
    cfg = tiny_mmseg(MMSEG_TOY, dinov3_file)
    data = dict(data_root=root, generate=None)
    cfg.merge_from_dict({"train_dataloader.batch_size": 2, "train_dataloader.dataset": data,
                         "val_dataloader.dataset": data, "test_dataloader.dataset": data,
                         "train_cfg.max_iters": 2, "train_cfg.val_interval": 2,
                         "default_hooks.checkpoint.interval": 2, "default_hooks.checkpoint.save_best": None})
    cfg.work_dir = str(work / "run")
    with DefaultScope.overwrite_default_scope("mmseg"):
        RUNNERS.build(cfg).train()
    config = work / "toy_tiny.py"
    cfg.dump(str(config))
    return str(config), str(work / "run" / "iter_2.pth")


def test_infer_tool_writes_picture_sized_maps_and_overlays(mmseg_checkpoint, pictures, tmp_path):
    from brixel_plugins.toydata.segmentation import PALETTE

    config, checkpoint = mmseg_checkpoint
    out = tmp_path / "out"
    r = run(ROOT / "tools" / "infer.py", config, checkpoint, pictures, "--out-dir", out, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "[3/3]" in r.stdout and str(out / "overlays") in r.stdout
    for name, (h, w) in SIZES.items():
        picture = np.asarray(Image.open(next(pictures.glob(name + ".*"))).convert("RGB"))
        classes = Image.open(out / "maps" / f"{name}.png")
        assert classes.mode == "P" and classes.size == (w, h)
        assert np.asarray(classes).max() < len(PALETTE)
        palette = np.array(classes.getpalette()[:3 * len(PALETTE)]).reshape(-1, 3)
        assert (palette == np.array(PALETTE)).all()  # the dataset's colours
        drawn = np.asarray(Image.open(out / "overlays" / f"{name}.png"))
        assert drawn.shape == (h, w, 3) and not np.array_equal(drawn, picture)


def test_infer_tool_refuses_what_it_cannot_do(mmseg_checkpoint, tmp_path, tool_error):
    config, checkpoint = mmseg_checkpoint
    tool = load_tool("infer")
    assert re.search("no such image file", tool_error(tool.main, [config, checkpoint, str(tmp_path / "nothing*.png"),
                                                                  "--out-dir", str(tmp_path)]))
    assert re.search("defines no test-time augmentation",
                     tool_error(tool.main, [config, checkpoint, str(ROOT / "README.md"), "--out-dir", str(tmp_path),
                                            "--tta"]))
    with pytest.raises(SystemExit):  # argparse: no pictures
        tool.main([config, checkpoint, "--out-dir", str(tmp_path)])
    (tmp_path / "broken.png").write_text("not a picture")
    error = tool_error(tool.main, [config, checkpoint, str(tmp_path / "broken.png"), "--out-dir", str(tmp_path)])
    assert re.search("cannot read .*broken.png", error)


def test_tta_averages_flips_of_the_whole_picture(mmseg_checkpoint):
    from brixel_plugins.mmseg.inference import load_segmentor, predict

    config, checkpoint = mmseg_checkpoint
    cfg = Config.fromfile(config)
    cfg.tta_model = dict(type="SegTTAModel")
    cfg.tta_pipeline = [dict(type="LoadImageFromFile"), dict(type="TestTimeAug", transforms=[
        [dict(type="RandomFlip", prob=0.0, direction="horizontal"),
         dict(type="RandomFlip", prob=1.0, direction="horizontal")],
        [dict(type="LoadAnnotations")], [dict(type="PackSegInputs")]])]
    image = np.random.default_rng(0).integers(0, 256, (50, 61, 3), dtype=np.uint8)
    plain = predict(load_segmentor(cfg, checkpoint), image)
    tta = predict(load_segmentor(cfg, checkpoint, tta=True), image)
    assert plain.shape == tta.shape == (50, 61)


def test_protocol_config_predicts_whole_pictures_and_scores_its_crop(dinov3_file):
    """The ADE20K 256 protocol: inference_model returns a map of the whole 400 x 600 picture (it
    returned the 256 x 256 centre crop before); the val/test loaders keep the crop and its
    scoring, and --tta adds a flip to that protocol instead of mmseg's multi-scale one."""
    from mmseg.apis import inference_model, init_model

    from brixel_plugins.mmseg.inference import load_segmentor

    cfg = tiny_mmseg(ADE_256, dinov3_file)
    cfg.model.backbone.weights = None  # the head is untrained anyway: the shapes are the point
    model = init_model(cfg, None, device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (400, 600, 3), dtype=np.uint8)
    result = inference_model(model, image)
    assert tuple(result.pred_sem_seg.shape) == (400, 600)
    types = [t["type"] for t in cfg.test_dataloader.dataset.pipeline]
    assert types[-3:] == ["CenterCrop", "ResetOriShape", "PackSegInputs"]
    tta = [t["type"] for t in cfg.tta_pipeline]
    assert tta[-3:] == ["CenterCrop", "ResetOriShape", "TestTimeAug"]
    assert [f["prob"] for f in cfg.tta_pipeline[-1]["transforms"][0]] == [0.0, 1.0]
    with pytest.raises(ValueError, match="CenterCrop, ResetOriShape: its predictions cover a crop"):
        load_segmentor(cfg, "unused.pth", tta=True)


def test_protocol_tta_scores_the_protocols_crop(dinov3_file, tmp_path):
    """tools/test.py --tta on the ADE20K 256 protocol: the flipped and unflipped 256 x 256 centre
    crops of a 300 x 400 picture, averaged, scored against the label map cropped the same way."""
    from mmengine.dataset import Compose, pseudo_collate
    from mmseg.registry import MODELS

    cfg = tiny_mmseg(ADE_256, dinov3_file)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray(np.random.default_rng(1).integers(0, 151, (300, 400), dtype=np.uint8)).save(tmp_path / "a.png")
    with DefaultScope.overwrite_default_scope("mmseg"):
        data = Compose(cfg.tta_pipeline)(dict(img_path=str(tmp_path / "a.jpg"), seg_map_path=str(tmp_path / "a.png"),
                                              reduce_zero_label=True, seg_fields=[]))
        model = MODELS.build(dict(cfg.tta_model, module=cfg.model)).eval()
        with torch.no_grad():
            result = model.test_step(pseudo_collate([data]))[0]
    assert [s.metainfo["flip"] for s in data["data_samples"]] == [False, True]
    assert tuple(result.pred_sem_seg.shape) == tuple(result.gt_sem_seg.shape) == (256, 256)


def test_exported_model_file_predicts_like_its_checkpoint(mmseg_checkpoint, dinov3_file, tmp_path, monkeypatch):
    """tools/export_model.py's one file (DINOv3 by reference) gives the same maps as config + checkpoint."""
    monkeypatch.setenv("BRIXEL_WEIGHTS_DIR", str(Path(dinov3_file).parent))  # where the user keeps DINOv3
    from brixel_plugins.mmseg.export import export_checkpoint
    from brixel_plugins.mmseg.inference import load_segmentor, predict

    config, checkpoint = mmseg_checkpoint
    exported = export_checkpoint(config, checkpoint, tmp_path / "toy.safetensors")
    image = np.random.default_rng(1).integers(0, 256, (50, 61, 3), dtype=np.uint8)
    from_file = load_segmentor(str(exported))
    assert from_file.dataset_meta["classes"][0] == "background"
    assert np.array_equal(predict(from_file, image), predict(load_segmentor(config, checkpoint), image))
    args = load_tool("infer").parse_args([str(exported), "a.png", "pics/", "--out-dir", "out"])
    assert (args.config, args.checkpoint, args.inputs) == (str(exported), None, ["a.png", "pics/"])
    args = load_tool("infer").parse_args([config, checkpoint, "a.png", "--out-dir", "out"])
    assert (args.config, args.checkpoint, args.inputs) == (config, checkpoint, ["a.png"])


def load_tool(name):
    """A tools/ script as a module (the detectron2 wheel's own ``tools`` package shadows ours)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"brixel_tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- Detectron2 ----------------------------------------------------------------------------------
D2_OVERRIDES = ["model.backbone.square_pad=64", "model.roi_heads.box_predictor.test_score_thresh=0.0",
                "model.roi_heads.box_predictor.test_topk_per_image=5", "train.device=cpu"]


@pytest.fixture(scope="module")
def d2_checkpoint(tmp_path_factory, dinov3_file):
    """The toy detector (tiny DINOv3 file, bilinear) trained for 2 iterations."""
    from detectron2.config import LazyConfig
    from detectron2.utils.env import seed_all_rng

    from brixel_plugins.d2 import engine
    from brixel_plugins.toydata.instances import write_toy_instances

    work = tmp_path_factory.mktemp("d2")
    data = dict(root=str(write_toy_instances(work / "data", num_train=4, num_val=2, size=64)), num_train=4,
                num_val=2, size=64)
    overrides = D2_OVERRIDES + [
        f"model.backbone.net.weights={dinov3_file}",
        "model.backbone.net.overrides={" + ",".join(f"{k}:{v}" for k, v in TINY_DIMS.items()) + "}"]
    overrides += [f"dataloader.{split}.dataset.names.{k}={v}" for split in ("train", "test") for k, v in data.items()]
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(D2_TOY)), overrides)
    del cfg.dataloader.evaluator
    cfg.dataloader.train.total_batch_size = 2
    cfg.train.update(max_iter=2, eval_period=0, output_dir=str(work / "run"), checkpointer=dict(period=2))
    seed_all_rng(0)
    engine.train(cfg)
    return str(work / "run" / "model_final.pth"), overrides


def test_d2_infer_tool_writes_coco_results_and_drawings(d2_checkpoint, pictures, tmp_path):
    checkpoint, overrides = d2_checkpoint
    out = tmp_path / "out"
    r = run(ROOT / "tools" / "d2_infer.py", "--config-file", D2_TOY, "--checkpoint", checkpoint, "--input", pictures,
            "--output", out, "--confidence-threshold", "0.0", *overrides, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    index = json.loads((out / "images.json").read_text())
    assert [c["name"] for c in index["categories"]] == ["disc", "square", "triangle", "bar"]
    sizes = {im["id"]: (im["height"], im["width"]) for im in index["images"]}
    assert sorted(sizes.values()) == sorted(SIZES.values())
    records = json.loads((out / "coco_instances_results.json").read_text())
    assert {r["image_id"] for r in records} == set(sizes)  # an untrained detector at threshold 0 finds something
    category_ids = {c["id"] for c in index["categories"]}
    for rec in records:
        assert {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(rec)
        h, w = sizes[rec["image_id"]]
        x, y, bw, bh = rec["bbox"]
        assert 0 <= x and 0 <= y and x + bw <= w + 1e-3 and y + bh <= h + 1e-3 and bw >= 0 and bh >= 0
        assert rec["category_id"] in category_ids and 0 <= rec["score"] <= 1
        assert rec["segmentation"]["size"] == [h, w] and isinstance(rec["segmentation"]["counts"], str)
    for im in index["images"]:
        name = Path(im["file_name"]).relative_to(pictures).with_suffix(".png")
        drawn = Image.open(out / "pictures" / name)
        assert drawn.size == (im["width"], im["height"])


def test_predictor_from_exported_file(d2_checkpoint, dinov3_file, tmp_path, monkeypatch):
    monkeypatch.setenv("BRIXEL_WEIGHTS_DIR", str(Path(dinov3_file).parent))  # where the user keeps DINOv3
    from detectron2.config import LazyConfig

    from brixel_plugins.d2.export import export_checkpoint
    from brixel_plugins.d2.predictor import LazyPredictor

    checkpoint, overrides = d2_checkpoint
    exported = export_checkpoint(str(D2_TOY), checkpoint, tmp_path / "toy_d2.safetensors", overrides)
    image = np.random.default_rng(1).integers(0, 256, (50, 61, 3), dtype=np.uint8)
    from_file = LazyPredictor.from_export(str(exported))
    assert list(from_file.metadata.thing_classes) == ["disc", "square", "triangle", "bar"]
    a = from_file(image)
    b = LazyPredictor(LazyConfig.apply_overrides(LazyConfig.load(str(D2_TOY)), overrides), checkpoint)(image)
    assert a.image_size == b.image_size == (50, 61)
    assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.pred_classes, b.pred_classes)
    with pytest.raises(SystemExit):
        load_tool("d2_infer").parse_args(["--model", str(exported), "--config-file", str(D2_TOY), "--input", "a",
                                          "--output", "o"])


def test_predictor_refuses_pictures_its_padding_would_crop(d2_checkpoint):
    from detectron2.config import LazyConfig

    from brixel_plugins.d2.predictor import LazyPredictor

    checkpoint, overrides = d2_checkpoint
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(D2_TOY)), overrides)
    cfg.dataloader.test.mapper.augmentations = []  # no resizing: a 150 px picture meets 64 px padding
    predictor = LazyPredictor(cfg, checkpoint)
    assert predictor(np.zeros((64, 48, 3), np.uint8)).image_size == (64, 48)
    with pytest.raises(ValueError, match="larger than the model's square padding 64"):
        predictor(np.zeros((150, 100, 3), np.uint8))
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\) BGR array"):
        predictor(np.zeros((64, 64), np.float32))


# -- the demos' console ---------------------------------------------------------------------------
def test_framework_output_goes_to_the_log_file(tmp_path):
    """What the frameworks print while a demo trains (loggers, pycocotools' print, C-level writes)
    lands in the named log file; the demo's own lines before and after stay on the console."""
    code = ("import os, sys, logging\n"
            "from brixel_plugins.cli.console import output_to\n"
            "print('table before', flush=True)\n"
            f"with output_to({str(tmp_path / 'run' / 'train.log')!r}):\n"
            "    print('COCOeval summary')\n"
            "    logging.getLogger('detectron2').warning('framework warning')\n"
            "    os.write(1, b'C-level line\\n')\n"
            "print('table after')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["table", "before", "table", "after"] and r.stderr == ""
    log = (tmp_path / "run" / "train.log").read_text()
    assert "COCOeval summary" in log and "framework warning" in log and "C-level line" in log


# -- bad pictures, atomic outputs, outputs inside the input folder, large pictures (issue 27) -------
def test_infer_tool_does_every_readable_picture_and_lists_the_failures(mmseg_checkpoint, pictures, tmp_path):
    """A 0-byte JPEG between two good pictures used to stop the run at it (exit 1, the picture after
    it never done): now both good ones are written, the failure is listed, and the exit status is 1."""
    config, checkpoint = mmseg_checkpoint
    folder = tmp_path / "batch"
    folder.mkdir()
    photo = Image.open(pictures / "square.png")
    photo.save(folder / "a.png")
    (folder / "b.jpg").write_bytes(b"")
    photo.save(folder / "c.png")
    out = tmp_path / "out"
    r = run(ROOT / "tools" / "infer.py", config, checkpoint, folder, "--out-dir", out, cwd=tmp_path)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-3000:]
    assert sorted(p.name for p in (out / "maps").iterdir()) == ["a.png", "c.png"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a.png", "c.png"]
    assert "[3/3]" in r.stdout  # the picture after the broken one was done
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 3 pictures failed") and "b.jpg" in last, r.stderr[-2000:]


def test_infer_tool_skips_a_picture_that_runs_out_of_memory(mmseg_checkpoint, pictures, tmp_path, monkeypatch,
                                                            tool_error):
    """Out of GPU memory on one (large) picture: the others are still done, the failure is listed."""
    import brixel_plugins.mmseg.inference as inference

    config, checkpoint = mmseg_checkpoint
    real = inference.predict

    def predict(model, image):
        if image.shape[:2] == SIZES["wide/tall"]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(model, image)

    monkeypatch.setattr(inference, "predict", predict)
    out = tmp_path / "out"
    assert re.search(r"1 of 3 pictures failed .*tall.png: out of memory at 100x150",
                     tool_error(load_tool("infer").main, [config, checkpoint, str(pictures), "--out-dir", str(out)]))
    assert sorted(p.name for p in (out / "maps").rglob("*.png")) == ["odd.png", "square.png"]


def test_outputs_never_appear_half_written(tmp_path, monkeypatch):
    """A run killed while writing used to leave a 0-byte PNG under its final name: the maps and
    overlays are written to a temporary name and moved into place, so a write that does not reach
    its end (here: the move fails) leaves nothing under the final name."""
    from brixel_plugins.mmseg.inference import save_class_map, save_rgb
    from brixel_plugins.toydata.segmentation import PALETTE

    classes = np.zeros((8, 8), np.int64)
    written = save_class_map(classes, PALETTE, str(tmp_path / "maps" / "a.png"))
    assert np.array_equal(np.asarray(Image.open(written)), classes)  # a real PNG despite the .tmp name

    def killed(src, dst):
        raise KeyboardInterrupt("killed before the move")

    monkeypatch.setattr(os, "replace", killed)
    for save, arg in ((save_class_map, classes), (save_rgb, np.zeros((8, 8, 3), np.uint8))):
        path = tmp_path / "new" / f"{save.__name__}.png"
        with pytest.raises(KeyboardInterrupt):
            save(arg, PALETTE, str(path)) if save is save_class_map else save(arg, str(path))
        assert not path.exists() and list(path.parent.iterdir()) == []  # nor a stale temporary file


def test_out_dir_inside_the_input_folder_is_not_read_back(mmseg_checkpoint, pictures, tmp_path, capsys):
    """--out-dir inside the folder of pictures: the next run used to segment its own maps and
    overlays as pictures; outputs never become inputs (picture_paths' exclude)."""
    import shutil

    from brixel_plugins.cli.pictures import picture_paths

    config, checkpoint = mmseg_checkpoint
    tool = load_tool("infer")
    for out_dir in ("preds", "."):  # inside the input folder, and the input folder itself
        folder = tmp_path / f"photos_{len(out_dir)}"
        shutil.copytree(pictures, folder)
        out = folder / out_dir
        for _ in range(2):
            tool.main([config, checkpoint, str(folder), "--out-dir", str(out)])
            printed = capsys.readouterr().out
            assert "[3/3]" in printed and "/9]" not in printed, printed
        assert sorted(p.name for p in (out / "maps").rglob("*.png")) == ["odd.png", "square.png", "tall.png"]
    folder, out = tmp_path / "photos_5", tmp_path / "photos_5" / "preds"
    outputs = [str(out / "maps"), str(out / "overlays")]
    assert len(picture_paths([str(folder)])) == 9  # without exclude, the outputs would be read
    assert len(picture_paths([str(folder)], exclude=outputs)) == 3
    assert len(picture_paths([str(folder / "**" / "*.png")], exclude=outputs)) == 2  # globs too
    assert len(picture_paths([str(out / "maps" / "odd.png")], exclude=outputs)) == 1  # a file named itself


def test_large_pictures_at_full_size_are_announced(mmseg_checkpoint):
    """The toy config's test_pipeline has no resize: a 5000 x 5000 picture ran at full size for
    minutes without a word. Beyond a megapixel, the tool now says so (once) and how to add a resize."""
    from brixel_plugins.mmseg.inference import full_size_note, load_segmentor

    model = load_segmentor(*mmseg_checkpoint)
    assert full_size_note(model, (640, 480)) is None
    note = full_size_note(model, (5000, 5000))
    assert "5000x5000" in note and "25.0 MP" in note and "dict(type='Resize'" in note
    model.cfg.test_pipeline = [model.cfg.test_pipeline[0], dict(type="Resize", scale=(2048, 512), keep_ratio=True),
                               *model.cfg.test_pipeline[1:]]
    assert full_size_note(model, (5000, 5000)) is None


def test_test_tool_out_writes_loadable_predictions(mmseg_checkpoint, tmp_path):
    """mmseg's tools/test.py --out DIR: the test metric saves each prediction as a PNG of class ids
    (IoUMetric's output_dir), and the metrics are still computed."""
    from brixel_plugins.toydata.segmentation import CLASSES

    config, checkpoint = mmseg_checkpoint
    out = tmp_path / "preds"
    r = run(ROOT / "tools" / "test.py", config, checkpoint, "--out", out, "--work-dir", tmp_path / "work", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "mIoU" in r.stdout
    data_root = Path(Config.fromfile(config).test_dataloader.dataset.data_root)
    images = sorted((data_root / "img_dir" / "val").iterdir())
    assert sorted(p.name for p in out.iterdir()) == sorted(p.stem + ".png" for p in images)
    for image in images:
        pred = np.asarray(Image.open(out / (image.stem + ".png")))
        assert pred.shape == Image.open(image).size[::-1] and pred.max() < len(CLASSES)


def test_test_tool_show_is_not_show_dir(mmseg_checkpoint, tmp_path, monkeypatch, tool_error):
    """--show used to be taken as an abbreviation of --show-dir (argparse's allow_abbrev): it is
    mmseg's own option now, and without a display it is refused before anything runs."""
    config, checkpoint = mmseg_checkpoint
    tool = load_tool("test")
    args = tool.parse_args([config, checkpoint, "--show", "--wait-time", "0.5"])
    assert (args.show, args.show_dir, args.wait_time) == (True, None, 0.5)
    with pytest.raises(SystemExit):
        tool.parse_args([config, checkpoint, "--show-d", "vis"])  # no abbreviations
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert re.search("--show opens a window, and this session has no display.*--show-dir",
                     tool_error(tool.main, [config, checkpoint, "--show", "--work-dir", str(tmp_path / "work")]))


# -- overlays ------------------------------------------------------------------------------------
def test_overlay_has_a_legend_inside_the_picture_and_keeps_the_photo():
    """Overlays had no legend (labels at region centres, cut at the border) and a black background
    class darkened every photo by half: now a legend of the classes present sits inside the
    picture's top-left corner, holding their exact colours, and background pixels keep the photo."""
    from brixel_plugins.mmseg.inference import overlay
    from brixel_plugins.toydata.segmentation import CLASSES, PALETTE

    image = np.full((128, 160, 3), 128, np.uint8)
    classes = np.zeros((128, 160), np.int64)  # background (black) in the top-left corner
    classes[64:, 80:] = 1
    classes[100:, :40] = 3
    meta = dict(classes=CLASSES, palette=PALETTE)
    drawn = overlay(image, classes, meta, opacity=0.5)
    assert drawn.shape == image.shape
    corner = drawn[:48, :96].reshape(-1, 3)
    for c in (0, 1, 3):  # the swatches of the classes present, in their exact colours
        assert (corner == PALETTE[c]).all(axis=1).sum() >= 16, CLASSES[c]
    for c in (2, 4):  # absent classes have no swatch
        assert not (corner == PALETTE[c]).all(axis=1).any(), CLASSES[c]
    assert np.array_equal(drawn[60, 150], image[60, 150])  # background: the photo itself, not darkened
    assert np.array_equal(drawn[120, 150], np.rint(image[0, 0] * 0.5 + np.array(PALETTE[1]) * 0.5))
    plain = overlay(image, classes, meta, with_labels=False)
    assert np.array_equal(plain[:48, :96], image[:48, :96])  # the legend is what covers the corner


def test_legend_stays_inside_small_pictures():
    from brixel_plugins.mmseg.inference import draw_legend

    entries = [(f"a very long class name number {i}", (255, 0, 10 * i)) for i in range(12)]
    image = np.full((48, 40, 3), 128, np.uint8)
    drawn = draw_legend(image, entries)
    assert drawn.shape == image.shape
    assert (drawn.reshape(-1, 3) == (255, 0, 0)).all(axis=1).any()  # the first swatch is there
    assert not (drawn.reshape(-1, 3) == (255, 0, 110)).all(axis=1).any()  # rows beyond the picture: "+N more"
    assert np.array_equal(draw_legend(np.zeros((6, 6, 3), np.uint8), entries), np.zeros((6, 6, 3)))  # no room
