"""The demos (tools/demo.py, tools/demo_seg.py, tools/demo_det.py) at a few iterations: they write
under --work-dir (default work_dirs/demo of the current directory, not of the repository), say
their progress while they train, and draw what they claim. DINOv3 ViT-S is a random init here, so
the numbers mean nothing; the runs take a minute or two on CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

if os.environ.get("BRIXEL_REQUIRE_STACK") != "1":
    pytest.importorskip("mmseg", reason="install with the [mmseg] extra (make test does)")
    pytest.importorskip("detectron2", reason="scripts/setup_env.sh installs detectron2")

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def run(*args, cwd):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=ENV,
                          timeout=900)


def untouched_since(folder: Path, start: float) -> bool:
    return not folder.exists() or all(p.stat().st_mtime < start for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """tools/demo.py --methods brixel --iters 2, run from another folder with no --work-dir."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    start = time.time() - 1
    r = run(ROOT / "tools" / "demo.py", "--methods", "brixel", "--iters", "2", "--progress", "1", cwd=cwd)
    return cwd / "work_dirs" / "demo", r, start


def test_distillation_demo_writes_under_the_current_directory_and_says_its_progress(distilled):
    work, r, start = distilled
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert (work / "brixel" / "best_upsampler.safetensors").is_file() and (work / "summary.json").is_file()
    assert untouched_since(ROOT / "work_dirs" / "demo", start)  # the repository's work_dirs is not used
    lines = [line for line in r.stdout.splitlines() if "[BRIXEL] iter" in line]
    assert [line.split()[2] for line in lines] == ["1/2", "2/2"], r.stdout[-2000:]
    assert "loss" in lines[1] and "ETA" in lines[1]


def test_detection_demo_at_five_iterations(distilled, tmp_path):
    """--iters 5 used to end in KeyError: 'segm' (a detector finding nothing gets no segm results
    from COCOEvaluator unless its tasks are given); the table now says AP 0 when nothing is found."""
    work, _, start = distilled
    r = run(ROOT / "tools" / "demo_det.py", "--iters", "5", "--work-dir", work, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    summary = json.loads((work / "summary.json").read_text())["detection"]
    assert summary["iterations"] == 5 and set(summary["results"]) == {"bilinear", "brixel"}
    for res in summary["results"].values():
        assert all(np.isfinite(res[k]) and 0 <= res[k] <= 100 for k in ("box_AP", "box_APs", "mask_AP", "mask_APs"))
    assert (work / "detection" / "pictures" / "detections.png").is_file()
    assert untouched_since(ROOT / "work_dirs" / "demo", start)
    for method in ("bilinear", "brixel"):
        assert f"[{method}] iter 5/5" in r.stdout, r.stdout[-2000:]
        assert (work / "detection" / method / "train.log").is_file()


def test_segmentation_demo_draws_predictions_not_photos(distilled):
    """predictions.png: each run's prediction in solid class colours (the toy shapes of the photo
    used to show through in the classes' colours) and its wrong pixels; a legend row."""
    from brixel_plugins.toydata.segmentation import PALETTE

    work, _, start = distilled
    r = run(ROOT / "tools" / "demo_seg.py", "--iters", "2", "--progress", "1", "--work-dir", work, "--threads", "1",
            cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert untouched_since(ROOT / "work_dirs" / "demo", start)
    assert "[BRIXEL 4x] iter 2/2" in r.stdout and "[none (stride 16)] iter 1/2" in r.stdout, r.stdout[-2000:]
    grid = np.asarray(Image.open(work / "segmentation" / "pictures" / "predictions.png").convert("RGB"))
    cell, pad, top = 256, 4, 22  # brixel_plugins.visualize.pca.save_grid's layout

    def panel(row, col):
        y, x = top + pad + row * (cell + pad), pad + col * (cell + pad)
        return grid[y:y + cell, x:x + cell].reshape(-1, 3)

    palette = np.array(PALETTE)
    for col in (1, 2, 4):  # label map, bilinear's and BRIXEL's predictions: class colours only
        colours = np.unique(panel(0, col), axis=0)
        assert all((palette == c).all(axis=1).any() for c in colours), (col, colours)
    errors = panel(0, 3)  # bilinear's wrong pixels: yellow, or the darkened grey photo
    grey = errors[(errors != (255, 230, 0)).any(axis=1)]
    assert (grey.max(axis=1) - grey.min(axis=1) <= 1).all() and grey.max() <= 0.46 * 255
    legend = panel(6, 0)  # the last row: every class's colour and the error colour
    for colour in [*PALETTE, (255, 230, 0)]:
        assert (legend == colour).all(axis=1).sum() >= 16, colour


def test_progress_reaches_the_console_while_the_framework_log_goes_to_a_file(tmp_path):
    """The demos' progress lines (console.Progress through console.say) show on the console inside
    output_to, and the log file keeps them beside the framework's lines."""
    code = ("import logging\n"
            "from brixel_plugins.cli.console import Progress, output_to\n"
            f"with output_to({str(tmp_path / 'train.log')!r}):\n"
            "    p = Progress('run', 10, every=4)\n"
            "    for i in range(1, 11):\n"
            "        logging.getLogger('mmengine').warning('framework line %d', i)\n"
            "        p.step(i, 1.0 / i)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [line.split()[2] for line in lines] == ["1/10", "4/10", "8/10", "10/10"], r.stdout
    assert "loss 0.2500" in lines[1] and "ETA" in lines[1] and "framework" not in r.stdout + r.stderr
    log = (tmp_path / "train.log").read_text()
    assert "framework line 10" in log and "[run] iter 10/10" in log


def test_detection_demo_scores_nothing_found_as_zero_and_keeps_other_nans():
    from brixel_plugins.d2.demo import ap, found_nothing

    nan = float("nan")
    nothing = {task: {"AP": nan, "APs": nan} for task in ("bbox", "segm")}  # COCOEvaluator: no detections
    assert (ap(nothing, "segm", "AP"), found_nothing(nothing)) == (0.0, True)
    some = {"bbox": {"AP": 3.0, "APs": nan}, "segm": {"AP": 2.0, "APs": nan}}  # no small objects: APs undefined
    assert ap(some, "segm", "AP") == 2.0 and np.isnan(ap(some, "bbox", "APs"))


@pytest.fixture(scope="module")
def distilled_in_process(tmp_path_factory):
    """ensure_weights in a work dir without BRIXEL weights, at 1 iteration, with subprocesses refused:
    the segmentation and detection demos distil what they miss through the package, not tools/demo.py."""
    import torch

    from brixel_plugins.distill.demo import ensure_weights

    work = tmp_path_factory.mktemp("demo")
    threads = torch.get_num_threads()
    popen = subprocess.Popen

    def no_tool(args, *rest, **kwargs):  # mmengine's environment report runs git and gcc: those may run
        if "demo.py" in " ".join(map(str, args if isinstance(args, (list, tuple)) else [args])):
            raise AssertionError(f"the package ran a tool: {args}")
        return popen(args, *rest, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DINOV3_WEIGHTS", raising=False)
        mp.setattr(subprocess, "Popen", no_tool)  # subprocess.run, call, check_output: all through Popen
        path = ensure_weights(str(work), iters=1)
    return work, path, threads


def test_missing_demo_weights_are_distilled_in_process(distilled_in_process):
    import torch

    from brixel_plugins.distill.demo import ensure_weights

    work, path, threads = distilled_in_process
    assert path == str(work / "brixel" / "best_upsampler.safetensors") and Path(path).is_file()
    assert json.loads((work / "summary.json").read_text())["distill"]["brixel"]["iterations"] == 1
    assert torch.get_num_threads() == threads  # the caller's threads (the segmentation demo's --threads) kept
    before = Path(path).stat().st_mtime_ns
    assert ensure_weights(str(work)) == path and Path(path).stat().st_mtime_ns == before  # present: not redone


def test_segmentation_demo_refuses_a_backbone_the_brixel_weights_were_not_distilled_on(distilled_in_process):
    import warnings

    import torch

    from brixel_plugins.backbones import FrozenDINOv3
    from brixel_plugins.distill.demo import check_distilled_backbone
    from brixel_plugins.files.checkpoints import CheckpointError

    work = distilled_in_process[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "a RANDOM init"
        backbone = FrozenDINOv3("vits16")  # the demos' seeded random init
    assert check_distilled_backbone(backbone, str(work)).startswith("same random init as the distillation")
    with torch.no_grad():
        backbone.model.blocks[-1].mlp.fc2.bias.add_(1e-3)  # not the patch embedding: every tensor is compared
    with pytest.raises(CheckpointError, match="differs from the one in"):
        check_distilled_backbone(backbone, str(work))
    assert check_distilled_backbone(backbone, str(work / "nothing")).startswith("could not compare")
