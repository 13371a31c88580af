"""tools/d2_infer.py and LazyPredictor follow COCO's and DefaultPredictor's conventions (issue 30):
the dataset's category and image ids with ``--model`` as with ``--checkpoint`` (the same JSON, the
same AP as COCOEvaluator), DefaultPredictor's inputs, the one weight-file lookup rule, every
readable picture done when one is not, and outputs never read back as inputs."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

if os.environ.get("BRIXEL_REQUIRE_STACK") != "1":
    pytest.importorskip("detectron2", reason="scripts/setup_env.sh installs detectron2")

from test_infer import D2_TOY, ROOT, d2_checkpoint, dinov3_file, load_tool, run  # noqa: E402,F401

MORE = ["model.roi_heads.box_predictor.test_topk_per_image=100"]
IMAGE_IDS = {1: 7, 2: 3}  # the toy val images' ids in the dataset below: neither 1-based nor in file order


@pytest.fixture(scope="module")
def dataset(d2_checkpoint, tmp_path_factory):  # noqa: F811
    """The toy val pictures with the detector's own 3 best detections per picture as ground truth
    (category ids 1-4, image ids 7 and 3): an AP well above 0 for the untrained detector, which a
    wrong category or image id lowers. ``(root, overrides)``."""
    from detectron2.config import LazyConfig

    from brixel_plugins.d2.predictor import LazyPredictor

    checkpoint, overrides = d2_checkpoint
    src = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("dataloader.test.dataset.names.root=")))
    root = tmp_path_factory.mktemp("dataset") / "toy"
    shutil.copytree(src, root)
    predictor = LazyPredictor(LazyConfig.apply_overrides(LazyConfig.load(str(D2_TOY)), overrides + MORE), checkpoint)
    coco = json.loads((root / "annotations" / "val.json").read_text())
    annotations = []
    for image in coco["images"]:
        found = predictor(str(root / "val" / image["file_name"]))  # sorted by score
        image["id"] = IMAGE_IDS[image["id"]]
        for (x0, y0, x1, y1), c in zip(found.pred_boxes.tensor[:3].tolist(), found.pred_classes[:3].tolist()):
            annotations.append(dict(id=len(annotations) + 1, image_id=image["id"], category_id=c + 1, iscrowd=0,
                                    bbox=[x0, y0, x1 - x0, y1 - y0], area=(x1 - x0) * (y1 - y0),
                                    segmentation=[[x0, y0, x1, y0, x1, y1, x0, y1]]))
    coco["annotations"] = annotations
    (root / "annotations" / "val.json").write_text(json.dumps(coco))
    return root, overrides + MORE + [f"dataloader.test.dataset.names.root={root}"]


@pytest.fixture(scope="module")
def exported(d2_checkpoint, dataset, tmp_path_factory):  # noqa: F811
    checkpoint, _ = d2_checkpoint
    out = tmp_path_factory.mktemp("export") / "toy_d2.safetensors"
    r = run(ROOT / "tools" / "export_model.py", D2_TOY, checkpoint, out, *dataset[1])
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_model_and_checkpoint_give_the_json_and_ap_of_coco_evaluator(d2_checkpoint, dataset, exported,  # noqa: F811
                                                                      dinov3_file, tmp_path):  # noqa: F811
    from detectron2.config import LazyConfig, instantiate
    from detectron2.evaluation import COCOEvaluator, inference_on_dataset
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from brixel_plugins.d2.predictor import LazyPredictor, dataset_metadata

    checkpoint, _ = d2_checkpoint
    root, overrides = dataset
    pictures = [str(root / "val" / "0001.png"), str(root / "val" / "0000.png")]
    shutil.copy(dinov3_file, tmp_path)  # DINOv3 in the working directory, where the export looks for it
    a, b = tmp_path / "model", tmp_path / "checkpoint"
    r = run(ROOT / "tools" / "d2_infer.py", "--model", exported, "--input", *pictures, "--output", a, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run(ROOT / "tools" / "d2_infer.py", "--config-file", D2_TOY, "--checkpoint", checkpoint, "--input", *pictures,
            "--output", b, *overrides, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("coco_instances_results.json", "images.json"):
        assert (a / name).read_text() == (b / name).read_text(), name
    index = json.loads((a / "images.json").read_text())
    assert [im["id"] for im in index["images"]] == [IMAGE_IDS[2], IMAGE_IDS[1]]
    names = ["disc", "square", "triangle", "bar"]
    assert index["categories"] == [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    results = json.loads((a / "coco_instances_results.json").read_text())

    # COCOEvaluator on the same model and pictures (the val split: these two)
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(D2_TOY)), overrides)
    evaluator = COCOEvaluator(dataset_metadata(cfg).name, output_dir=str(tmp_path / "evaluator"))
    expected = inference_on_dataset(LazyPredictor(cfg, checkpoint).model, instantiate(cfg.dataloader.test), evaluator)
    theirs = json.loads((tmp_path / "evaluator" / "coco_instances_results.json").read_text())

    def key(r):
        return r["image_id"], r["category_id"], round(r["score"], 5), [round(v, 3) for v in r["bbox"]]

    assert sorted(map(key, results)) == sorted(map(key, theirs))
    ground_truth = COCO(str(root / "annotations" / "val.json"))
    for iou_type in ("bbox", "segm"):
        ev = COCOeval(ground_truth, ground_truth.loadRes(results), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert expected[iou_type]["AP"] == pytest.approx(100 * ev.stats[0], abs=1e-4)
    assert expected["bbox"]["AP"] > 10  # the detector's own boxes: a wrong id would show


def test_image_ids_by_file_name():
    from brixel_plugins.d2.predictor import image_ids

    known = {"val2017/000000000139.jpg": 139, "000000000285.jpg": 285, "a/x.png": 5, "b/x.png": 6}
    paths = ["/data/coco/val2017/000000000139.jpg", "elsewhere/000000000285.jpg", "mine.jpg", "q/a/x.png", "x.png",
             "other/val2017/000000000139.jpg"]
    # x.png alone matches two entries, the second 000000000139.jpg an id already given: new ids
    assert image_ids(paths, known) == [139, 285, 286, 5, 287, 288]
    assert image_ids(["a.png", "b.png"], {}) == [1, 2]


@pytest.fixture(scope="module")
def predictors(d2_checkpoint):  # noqa: F811
    from detectron2.config import LazyConfig

    from brixel_plugins.d2.predictor import LazyPredictor

    checkpoint, overrides = d2_checkpoint
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(D2_TOY)), overrides)
    return LazyPredictor(cfg, checkpoint), LazyPredictor(cfg, checkpoint, input_format="RGB")


def same(a, b) -> bool:
    return torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.scores, b.scores)


def test_predictor_takes_what_default_predictor_takes(predictors, tmp_path):
    from skimage import data

    from brixel_plugins.images import load_rgb

    bgr_predictor, rgb_predictor = predictors
    assert bgr_predictor.input_format == "BGR" and rgb_predictor.input_format == "RGB"
    rgb = np.asarray(Image.fromarray(data.astronaut()).resize((61, 50)))
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    want = rgb_predictor(rgb)
    assert want.image_size == (50, 61) and len(want)
    assert same(bgr_predictor(np.ascontiguousarray(rgb[..., ::-1])), want)  # a BGR array, as cv2.imread gives
    assert not same(bgr_predictor(rgb), want)  # an RGB array is not taken as RGB by the BGR predictor
    for predictor in predictors:  # PIL images and paths are read as RGB whatever input_format says
        assert same(predictor(load_rgb(str(tmp_path / "photo.png"))), want)  # the README's example
        assert same(predictor(Image.fromarray(rgb).convert("RGBA")), want)
        assert same(predictor(str(tmp_path / "photo.png")), want) and same(predictor(tmp_path / "photo.png"), want)
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\) BGR array, a PIL image or a picture's path"):
        bgr_predictor(rgb.astype(np.float32))
    with pytest.raises(ValueError, match="converts between BGR/RGB"):
        type(bgr_predictor)(bgr_predictor.cfg, "unused.pth", input_format="L")


def test_d2_infer_finds_weights_beside_a_moved_config(d2_checkpoint, dinov3_file, tmp_path):  # noqa: F811
    """An output folder moved with weights/ beside config.yaml: d2_infer finds DINOv3 there, as
    d2_train.py --eval-only and infer.py do (it listed only the working directory before)."""
    from detectron2.config import LazyConfig

    checkpoint, overrides = d2_checkpoint
    moved = tmp_path / "moved"
    (moved / "weights").mkdir(parents=True)
    shutil.copy(dinov3_file, moved / "weights" / "tiny_dinov3.pth")
    shutil.copy(checkpoint, moved / "model_final.pth")
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(D2_TOY)), overrides)
    cfg.model.backbone.net.weights = "weights/tiny_dinov3.pth"
    LazyConfig.save(cfg, str(moved / "config.yaml"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(elsewhere / "picture.png")
    r = run(ROOT / "tools" / "d2_infer.py", "--config-file", "../moved/config.yaml", "--checkpoint",
            "../moved/model_final.pth", "--input", "picture.png", "--output", "out", cwd=elsewhere)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((elsewhere / "out" / "images.json").read_text())["images"][0]["width"] == 40


def test_d2_infer_does_every_readable_picture_and_lists_the_others(d2_checkpoint, tmp_path):  # noqa: F811
    checkpoint, overrides = d2_checkpoint
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for name, colour in (("a.png", (200, 30, 30)), ("c.png", (30, 200, 30))):
        Image.new("RGB", (40, 30), colour).save(pictures / name)
    (pictures / "b.jpg").write_bytes(b"")
    (pictures / "d.png").write_text("not a picture")
    out = pictures / "out"  # inside the input folder
    r = run(ROOT / "tools" / "d2_infer.py", "--config-file", D2_TOY, "--checkpoint", checkpoint, "--input", pictures,
            "--output", out, *overrides, cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: 2 of 4 pictures could not be read or predicted"), r.stderr[-2000:]
    assert [line.split(":")[0].strip() for line in lines[-3:-1]] == [str(pictures / "b.jpg"), str(pictures / "d.png")]
    index = json.loads((out / "images.json").read_text())
    assert [Path(im["file_name"]).name for im in index["images"]] == ["a.png", "c.png"]
    done = {im["id"] for im in index["images"]}
    assert {rec["image_id"] for rec in json.loads((out / "coco_instances_results.json").read_text())} <= done
    assert sorted(p.name for p in (out / "pictures").iterdir()) == ["a.png", "c.png"]  # no temporary files left
    # a second run does not take its own drawings in pictures/out/pictures for inputs
    (pictures / "b.jpg").unlink()
    (pictures / "d.png").unlink()
    tool = load_tool("d2_infer")
    tool.main(["--config-file", str(D2_TOY), "--checkpoint", checkpoint, "--input", str(pictures), "--output",
               str(out), *overrides])
    assert [Path(im["file_name"]).name for im in json.loads((out / "images.json").read_text())["images"]] == \
        ["a.png", "c.png"]
