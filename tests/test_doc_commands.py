"""Every command of README.md and docs/*.md (their ```bash blocks, ``\\`` continuations joined) is
classified by ROWS below: run here as documented with toy substitutions only (tiny DINOv3, a few
photos, two iterations, files the test makes), covered by a named test that runs the same command
at toy size, or skipped with the reason (CUDA, 8 GPUs, ADE20K/COCO, real DINOv3 weights, ...).
A command no row matches fails the suite: classify it. ``pytest -rA`` shows the list."""
from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import TINY, TINY_DIMS, make_tiny_backbone, tiny_distill_options

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOY_SEG = ROOT / "configs" / "mmseg" / "linear" / "linear_dinov3-vits16-bilinear_1xb8-60it_toy-shapes-128x128.py"
TOY_DET = ROOT / "configs" / "d2" / "toy" / "mask_rcnn_dinov3_vits16_bilinear_toy.py"
TINY_OVERRIDES = ",".join(f"{k}={v}" for k, v in TINY_DIMS.items())
META_WEIGHTS = "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"  # Meta's file name (its hash suffix is verified)


def documented_commands() -> dict:
    """{command: [where]} for every command line of the ```bash blocks; comments dropped, a
    ``.venv/bin/python`` read as ``python`` (the same command in two places is one entry)."""
    found: dict = {}
    for doc in DOCS:
        text = doc.read_text()
        for block in re.finditer(r"```bash\n(.*?)```", text, flags=re.S):
            line_no = text[:block.start()].count("\n") + 2
            for line in re.sub(r"\\\n\s*", " ", block.group(1)).splitlines():
                cmd = re.sub(r"(^|\s+)#\s.*$", "", line).strip()
                cmd = re.sub(r"^\S*/bin/python ", "python ", re.sub(r"\s+", " ", cmd))
                if cmd:
                    found.setdefault(cmd, []).append(f"{doc.relative_to(ROOT)}:{line_no}")
    return found


COMMANDS = documented_commands()

# (pattern searched in the command, how: "run" / "covered" / "skip", detail). First match wins.
# run: the handler of that name below runs it; covered: "tests/test_x.py::test_name" runs the same
# command at toy size; skip: why it cannot run here.
ROWS = [
    (r"^make demo$", "skip", "the full demo: ~20 min of CPU (its parts have their own tests: test_infer, test_d2, "
                             "test_mmseg, test_recipes)"),
    (r"^make test$", "skip", "runs this suite itself"),
    (r"^pip install", "skip", "installs packages (network; the test environment is already installed)"),
    (r"^#(!/bin/bash|SBATCH )", "skip", "the header of a SLURM batch script"),
    (r"^head=\$\(scontrol", "skip", "SLURM"),
    (r"^srun ", "skip", "SLURM, multi-node"),
    (r"--nnodes 2 .*tools/distill\.py", "covered", "tests/test_distributed.py::test_distill_two_nodes"),
    (r"--nnodes 2 .*tools/(train|d2_train)\.py", "skip",
     "multi-node (two machines); the same rendezvous runs for tools/distill.py in test_distill_two_nodes"),
    (r"^torchrun --nproc-per-node 8 tools/distill\.py", "covered",
     "tests/test_distributed.py::test_distill_resume_in_two_processes_continues_exactly"),
    (r"^torchrun --nproc-per-node 8 tools/train\.py", "covered", "tests/test_distributed.py::test_mmseg_two_processes"),
    (r"^torchrun --nproc-per-node 8 tools/d2_train\.py", "covered",
     "tests/test_distributed.py::test_d2_torchrun_two_processes"),
    (r"^python tools/distill\.py .*--resume", "covered",
     "tests/test_distill_dist.py::test_cli_single_process_then_resume"),
    (r"^python tools/distill\.py ", "covered", "tests/test_distill_dist.py::test_cli_single_process_then_resume"),
    (r"^python tools/convert_weights\.py (brixel|lift|anyup|jafar|loftup) ", "run", "convert_weights"),
    (r"tools/benchmark\.py .*--device cuda", "skip", "needs CUDA"),
    (r"tools/benchmark\.py .*--compile", "skip",
     "torch.compile (inductor) compiles every row with a C++ compiler: minutes on 2 cores"),
    (r"^python tools/benchmark\.py ", "run", "benchmark"),
    (r"tools/benchmark_distill\.py .*--device cuda", "skip", "needs CUDA (NCCL, one GPU per process)"),
    (r"^python tools/benchmark_distill\.py ", "run", "benchmark_distill"),
    (r"^python tools/visualize\.py ", "run", "visualize"),
    (r"^python tools/compare_recipes\.py ", "skip",
     "trains each variant on the demo protocol (ViT-S at 384 px): minutes per variant; its recipes build in "
     "tests/test_recipes.py::test_demo_recipe_builds_under_the_demo_protocol"),
    (r"^python tools/d2_train\.py --config-file configs/d2/COCO/", "skip", "8 GPUs and COCO (real DINOv3 weights)"),
    (r"^python tools/d2_train\.py --config-file CONFIG --num-gpus 8", "skip",
     "8 GPUs; --num-gpus 2 on CPU runs in tests/test_distributed.py::test_d2_num_gpus_two_on_cpu"),
    (r"^python tools/d2_train\.py --config-file \.\.\. --resume$", "run", "d2_train"),
    (r"^python tools/d2_train\.py --config-file \.\.\. --eval-only", "run", "d2_eval"),
    (r"^python tools/d2_infer\.py ", "run", "d2_infer"),
    (r"^python tools/demo_det\.py$", "skip", "the detection demo: ~5 min (400 iterations x 2); its training and "
                                            "drawing run in tests/test_d2.py and tests/test_infer.py"),
    (r"^python tools/demo_seg\.py$", "skip", "the segmentation demo: minutes; its parts run in tests/test_mmseg.py "
                                            "and tests/test_infer.py"),
    (r"^python tools/train\.py configs/mmseg/.*ade20k", "skip", "needs ADE20K"),
    (r"^python tools/train\.py CONFIG --amp off$", "run", "mmseg_train"),
    (r"^python tools/train\.py CONFIG --resume$", "run", "mmseg_resume"),
    (r"^python tools/train\.py CONFIG --cfg-options model\.backbone\.train_upsampler=True$", "covered",
     "tests/test_mmseg.py::test_train_upsampler_finetunes_and_is_checkpointed"),
    (r"^python tools/test\.py CONFIG \S+ \[--show-dir vis\] \[--out preds\]$", "run", "mmseg_test"),
    (r"^brixel --help$", "covered", "tests/test_packaged_configs.py::test_help_lists_every_command"),
    (r"^brixel train brixel_plugins::mmseg/", "covered",
     "tests/test_wheel.py::test_wheel_console_script_trains_a_packaged_config"),
    (r"^brixel d2-train --config-file brixel_plugins::d2/toy/", "run", "brixel_d2_train"),
    (r"^torchrun --nproc-per-node 2 -m brixel_plugins\.cli\.commands train CONFIG --launcher pytorch$", "covered",
     "tests/test_packaged_configs.py::test_torchrun_reaches_the_tool_with_its_launcher"),
    (r"^python tools/infer\.py CONFIG \S+ photo\.jpg ", "run", "mmseg_infer"),
    (r"^python tools/infer\.py CONFIG ", "covered",
     "tests/test_infer.py::test_infer_tool_writes_picture_sized_maps_and_overlays"),
    (r"^python tools/export_model\.py CONFIG ", "run", "export_model"),
]


def row_of(cmd: str):
    return next((row for row in ROWS if re.search(row[0], cmd)), None)


def test_every_documented_command_is_classified(record_property):
    assert len(COMMANDS) > 20, "no commands found: did the ```bash blocks move?"
    new = [f"{cmd}  ({', '.join(where)})" for cmd, where in COMMANDS.items() if row_of(cmd) is None]
    assert not new, "new documented command: classify it in ROWS of tests/test_doc_commands.py:\n" + "\n".join(new)
    lines = []
    for cmd, where in COMMANDS.items():
        _, how, detail = row_of(cmd)
        lines.append(f"{how:8} {cmd}\n         ({', '.join(where)}) -> {detail}")
    record_property("documented_commands", "\n".join(lines))
    print("\n".join(lines))  # visible with -rA


def test_every_row_still_matches_a_documented_command():
    stale = [pattern for pattern, *_ in ROWS if not any(re.search(pattern, c) for c in COMMANDS)]
    assert not stale, f"rows that no documented command matches any more (remove them): {stale}"


def test_covering_tests_exist():
    for pattern, how, detail in ROWS:
        if how != "covered":
            continue
        path, name = detail.split("::")
        tree = ast.parse((ROOT / path).read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert name in names, f"row {pattern!r} names {detail}, which does not exist"


# -- running the runnable ones ---------------------------------------------------------------------
def run(cmd: str, cwd: Path, replace=(), append=(), timeout=300) -> str:
    """The documented command with only the toy substitutions ``replace`` ((old, new) on the
    text) and extra arguments ``append``, run in ``cwd`` with this checkout's code; its output."""
    for old, new in replace:
        assert old in cmd, f"{old!r} is no longer in {cmd!r}: update the substitution"
        cmd = cmd.replace(old, str(new))
    argv = shlex.split(cmd) + [str(a) for a in append]
    assert argv[0] in ("python", "brixel"), cmd
    python = [sys.executable] if argv[0] == "python" else [sys.executable, "-m", "brixel_plugins.cli.commands"]
    argv = python + [str(ROOT / a) if a.startswith(("tools/", "configs/")) else a for a in argv[1:]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("DINOV3_WEIGHTS", None)
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{cmd}\nexit {r.returncode}\n{out[-4000:]}"
    return out


def commands_for(handler: str) -> list:
    return [c for c in COMMANDS if (row_of(c) or (None, None, None))[1:] == ("run", handler)]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A working directory with what the documented commands name: a tiny DINOv3 file, a tiny
    BRIXEL export, pictures, and the toy configs with the tiny backbone (``CONFIG``)."""
    from PIL import Image
    from skimage import data

    from brixel_plugins.files.upsampler_file import save_upsampler
    from brixel_plugins.toydata.instances import write_toy_instances
    from brixel_plugins.toydata.segmentation import write_toy_segmentation
    from brixel_plugins.upsamplers import build_upsampler

    root = tmp_path_factory.mktemp("doc_commands")
    backbone = make_tiny_backbone()
    torch.save(backbone.model.state_dict(), root / "tiny_dinov3.pth")
    torch.manual_seed(0)
    save_upsampler(root / "work_dirs" / "brixel_vits16" / "best_upsampler.safetensors",
                   build_upsampler(dict(type="brixel"), backbone.spec))
    photo = Image.fromarray(data.astronaut())
    for name, size in (("photo.jpg", (64, 48)), ("photos/a.png", (80, 64)), ("more/b.png", (50, 61))):
        (root / name).parent.mkdir(exist_ok=True)
        photo.resize(size).save(root / name)
    seg = write_toy_segmentation(root / "seg", num_train=4, num_val=2, size=64)
    data_cfg = dict(data_root=str(seg), generate=None)
    (root / "toy_seg.py").write_text(
        f"_base_ = [{str(TOY_SEG)!r}]\n"
        f"model = dict(backbone=dict(weights={str(root / 'tiny_dinov3.pth')!r}, **{TINY_DIMS!r}),\n"
        f"             decode_head=dict(in_channels={TINY['embed_dim']}))\n"
        f"train_dataloader = dict(batch_size=2, dataset={data_cfg!r})\n"
        f"val_dataloader = dict(batch_size=2, dataset={data_cfg!r})\n"
        f"test_dataloader = val_dataloader\n"
        "train_cfg = dict(max_iters=2, val_interval=2)\n"
        "default_hooks = dict(checkpoint=dict(interval=2, save_best=None), logger=dict(interval=1))\n")
    det = write_toy_instances(root / "det", num_train=4, num_val=2, size=64)
    # the toy LazyConfig with the tiny backbone, so that the documented command lines need no
    # key=value overrides (``--resume`` takes an optional value: ``--resume key=value`` would be read
    # as the checkpoint to resume from)
    (root / "toy_det.py").write_text(
        "from detectron2.config import LazyConfig\n"
        f"_cfg = LazyConfig.load({str(TOY_DET)!r})\n"
        f"_cfg.model.backbone.net.weights = {str(root / 'tiny_dinov3.pth')!r}\n"
        f"_cfg.model.backbone.net.overrides = {TINY_DIMS!r}\n"
        "for _split in ('train', 'test'):\n"
        f"    _cfg.dataloader[_split].dataset.names.update(root={str(det)!r}, num_train=4, num_val=2, size=64)\n"
        "_cfg.dataloader.train.total_batch_size = 2\n"
        "_cfg.model.backbone.square_pad = 64\n"
        "_cfg.train.update(device='cpu', max_iter=2, output_dir='output')\n"
        "_cfg.train.checkpointer.period = 2\n"
        "globals().update(_cfg)\n")
    return dict(root=root, seg_config=root / "toy_seg.py", det_config=root / "toy_det.py", done=set())


def seg_checkpoint(work) -> Path:
    folder = work["root"] / "work_dirs" / "toy_seg"
    return folder / (folder / "last_checkpoint").read_text().strip()


def handle_convert_weights(cmd, work):
    """The authors' layouts, written at ViT-S size by the test (as test_brixel / test_lift read them)."""
    from test_brixel import fake_release_file

    from brixel_plugins.backbones import FrozenDINOv3
    from brixel_plugins.files.upsampler_file import read_upsampler_file
    from brixel_plugins.upsamplers import build_upsampler

    argv = shlex.split(cmd)
    method, src, dst = argv[2:5]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        spec = FrozenDINOv3("vits16").spec
    if method == "brixel":
        fake_release_file(work["root"] / src, build_upsampler(dict(type="brixel", zero_start=False), spec))
    elif method in ("anyup", "jafar", "loftup"):  # the authors' key layouts, seeded, as their tests write them
        from test_anyup import release_state_dict
        from test_jafar import seeded_release as jafar_release
        from test_loftup import seeded_release as loftup_release

        state = {"anyup": release_state_dict, "jafar": lambda: {"jafar": jafar_release(spec.embed_dim)},
                 "loftup": lambda: loftup_release(spec.embed_dim)}[method]()
        torch.save(state, work["root"] / src)
    else:
        lift = build_upsampler(dict(type="lift", factor=4, zero_start=False), spec)
        torch.save(lift.state_dict(), work["root"] / src)
    run(cmd, work["root"])
    assert read_upsampler_file(work["root"] / dst)[1]["extra"]["converted_from"] == src


def handle_benchmark(cmd, work):
    target = [("--target 64", "--target 8")] if "--target 64" in cmd else []
    extra = [] if "--target" in cmd or "--sizes" in cmd else ["--target", "8"]
    out = run(cmd, work["root"], replace=target, append=[*extra, "--backbone-overrides", TINY_OVERRIDES])
    assert "| brixel " in out or "| bilinear " in out, out[-2000:]
    if "--out-dir work_dirs/bench" in cmd:
        assert (work["root"] / "work_dirs" / "bench" / "benchmark.csv").is_file()


def handle_benchmark_distill(cmd, work):
    out = run(cmd, work["root"], append=["--runs", "1", "--warmup", "0", "--teacher-size", "64", "--cfg-options",
                                         *tiny_distill_options(2)])
    assert "images/s" in out, out[-2000:]


def handle_visualize(cmd, work):
    run(cmd, work["root"], replace=[(META_WEIGHTS, "tiny_dinov3.pth")],
        append=["astronaut", "--size", "32", "--hr-size", "64", "--cell", "64", "--backbone-overrides", TINY_OVERRIDES])
    assert (work["root"] / "work_dirs" / "visualize" / "pca.png").stat().st_size > 0  # the default --out


def handle_mmseg_train(cmd, work):
    run(cmd, work["root"], replace=[("CONFIG", work["seg_config"])])
    assert seg_checkpoint(work).name == "iter_2.pth"
    work["done"].add("mmseg_train")


def need(work, *steps):
    for step in steps:
        if step not in work["done"]:
            HANDLERS[step](commands_for(step)[0], work)


def handle_mmseg_resume(cmd, work):
    need(work, "mmseg_train")
    out = run(cmd, work["root"], replace=[("CONFIG", work["seg_config"])],
              append=["--cfg-options", "train_cfg.max_iters=3"])
    assert re.search(r"resumed epoch: \d+, iter: 2", out), out[-2000:]
    assert seg_checkpoint(work).name == "iter_3.pth"


def handle_mmseg_test(cmd, work):
    need(work, "mmseg_train")
    out = run(cmd.replace("[--show-dir vis]", "--show-dir vis").replace("[--out preds]", "--out preds"), work["root"],
              replace=[("CONFIG", work["seg_config"]),
                       ("work_dirs/<config>/best_mIoU_epoch_40.pth", seg_checkpoint(work))])
    assert re.search(r"mIoU", out), out[-2000:]
    assert list((work["root"] / "vis" / "vis_data" / "vis_image").glob("*.png")), "no --show-dir pictures"
    assert list((work["root"] / "preds").rglob("*.png")), "no --out predictions"


def handle_mmseg_infer(cmd, work):
    need(work, "mmseg_train")
    run(cmd, work["root"], replace=[("CONFIG", work["seg_config"]),
                                    ("work_dirs/<config>/best_mIoU_epoch_40.pth", seg_checkpoint(work))])
    overlays = sorted(p.name for p in (work["root"] / "preds" / "overlays").rglob("*.png"))
    assert overlays == ["a.png", "b.png", "photo.png"]


def handle_export_model(cmd, work):
    need(work, "mmseg_train")
    run(cmd, work["root"], replace=[("CONFIG", work["seg_config"]),
                                    ("work_dirs/<config>/best_mIoU_iter_N.pth", seg_checkpoint(work))])
    assert (work["root"] / "model.safetensors").stat().st_size > 0


def handle_brixel_d2_train(cmd, work):
    """The packaged toy LazyConfig by name, through the ``brixel`` command (what its console script runs)."""
    det = work["root"] / "det"
    run(cmd, work["root"], append=[
        "train.device=cpu", "train.max_iter=2", "train.output_dir=output_brixel", "train.checkpointer.period=2",
        "dataloader.train.total_batch_size=2", "model.backbone.square_pad=64",
        f"model.backbone.net.weights={work['root'] / 'tiny_dinov3.pth'}",
        "model.backbone.net.overrides={" + ",".join(f"{k}:{v}" for k, v in TINY_DIMS.items()) + "}",
        *(f"dataloader.{split}.dataset.names.{k}={v}" for split in ("train", "test")
          for k, v in (("root", det), ("num_train", 4), ("num_val", 2), ("size", 64)))])
    assert (work["root"] / "output_brixel" / "model_final.pth").is_file()


def handle_d2_train(cmd, work):
    run(cmd, work["root"], replace=[("...", work["det_config"])])
    assert (work["root"] / "output" / "model_final.pth").is_file()
    work["done"].add("d2_train")


def handle_d2_eval(cmd, work):
    need(work, "d2_train")
    out = run(cmd, work["root"], replace=[("...", work["det_config"])])
    assert "bbox" in out and "segm" in out, out[-2000:]


def handle_d2_infer(cmd, work):
    need(work, "d2_train")
    cmd = cmd.replace(" [key=value ...]", "")  # the overrides are optional; the toy config holds them
    run(cmd, work["root"], replace=[("configs/d2/COCO/mask_rcnn_dinov3_vitb16_brixel_100ep.py", work["det_config"])])
    assert list((work["root"] / "preds").glob("*.json")), "no COCO-format results"


HANDLERS = {name[len("handle_"):]: f for name, f in dict(globals()).items() if name.startswith("handle_")}
RUN = sorted((cmd for cmd in COMMANDS if (row_of(cmd) or ("", ""))[1] == "run"), key=lambda c: row_of(c)[2])


def test_every_run_row_has_a_handler():
    assert {d for _, how, d in ROWS if how == "run"} <= set(HANDLERS)


@pytest.mark.parametrize("cmd", RUN, ids=[f"{row_of(c)[2]}-{i}" for i, c in enumerate(RUN)])
def test_documented_command_runs(cmd, work):
    if row_of(cmd)[2] in work["done"]:
        return  # already run (and checked) as the step another command needs
    HANDLERS[row_of(cmd)[2]](cmd, work)
