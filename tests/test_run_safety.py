"""Runs never mix their outputs, shared one-time work is race-free, files get the umask's
permissions, and what a user causes ends in one clear line (issue 27, items 4, 6 and 7).

Real processes, real locks, real files: a second distillation into a busy work dir, a run killed
while it holds the lock, toy datasets written by several processes at once, writes into a full
device (``/dev/full``) and under a regular file (tests run as root, where permissions stop nothing).
"""
from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_distill_options

from brixel_plugins.cli.errors import run_tool
from brixel_plugins.common.filesystem import atomic_path, write_text_atomic
from brixel_plugins.engine.files import LOCK_FILE, WorkDirBusyError, work_dir_lock
from brixel_plugins.files.checkpoints import CheckpointError, load_checkpoint_file
from brixel_plugins.toydata.instances import write_toy_instances

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/distill/brixel_vits16.py"


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="default")
    e.pop("DINOV3_WEIGHTS", None)
    e.pop("BRIXEL_DEBUG", None)
    return e


def error_lines(stderr: str) -> list:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# -- 6. permissions and write errors ----------------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_get_the_umask_permissions(tmp_path, umask, mode):
    """Checkpoints (torch.save through atomic_path) and pointers (write_text_atomic) were 0600
    whatever the umask: mkstemp's mode, so another user on shared storage could not read them."""
    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "iter_2.pth") as tmp:
            torch.save({"w": torch.ones(2)}, tmp)
        write_text_atomic(tmp_path / "last_checkpoint", "iter_2.pth")
        plain = tmp_path / "plain"
        plain.write_text("x")  # what open() gives, for comparison
    finally:
        os.umask(old)
    for name in ("iter_2.pth", "last_checkpoint", "plain"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_a_write_into_a_full_device_names_the_file_and_keeps_the_old_one(tmp_path):
    """ENOSPC: the writer's file lives on /dev/full (every write fails with ENOSPC, as on a full disk)."""
    target = tmp_path / "val_metrics.json"
    target.write_text("[]")
    with pytest.raises(OSError) as e:
        with atomic_path(target) as tmp:
            tmp.unlink()
            tmp.symlink_to("/dev/full")
            tmp.write_bytes(b"x" * 65536)
    assert e.value.errno == errno.ENOSPC
    assert str(target) in str(e.value) and "No space left on device" in str(e.value)
    assert target.read_text() == "[]" and [p.name for p in tmp_path.iterdir()] == ["val_metrics.json"]


def test_a_write_under_a_regular_file_names_the_blocking_file(tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match=rf"cannot write {blocker}/a/iter_2.pth: {blocker} is a file, not a folder"):
        write_text_atomic(blocker / "a" / "iter_2.pth", "x")


def test_an_error_about_another_file_is_not_renamed(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        with atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_bytes((tmp_path / "missing.bin").read_bytes())


def test_distill_into_a_folder_under_a_regular_file_ends_in_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    p = subprocess.run([sys.executable, "tools/distill.py", CONFIG, "--work-dir", str(blocker / "work"),
                        "--data-root", str(tmp_path)], cwd=ROOT, env=env(), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 1, p.stderr[-3000:]
    assert "Traceback" not in p.stderr and len(error_lines(p.stderr)) == 1, p.stderr[-3000:]
    assert f"cannot write {blocker / 'work'}/" in error_lines(p.stderr)[0], p.stderr[-3000:]
    assert f"{blocker} is a file, not a folder" in error_lines(p.stderr)[0]


class Opaque:
    """Anything a pickle can rebuild by calling code."""


@pytest.mark.parametrize("zip_format", [False, True])
def test_a_checkpoint_pickling_objects_is_refused_without_suggesting_weights_only_false(tmp_path, zip_format):
    path = tmp_path / "old.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "obj": Opaque()}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint_file(str(path))
    text = str(e.value)
    assert str(path) in text and "can run code" in text and "weights_only=False" not in text, text
    assert "\n" not in text
    if not zip_format:
        assert "legacy torch file" in text and "Opaque" in text, text


def test_a_legacy_checkpoint_of_tensors_still_loads_and_garbage_is_named(tmp_path):
    old = tmp_path / "old.pth"
    torch.save({"w": torch.arange(3.0)}, old, _use_new_zipfile_serialization=False)
    assert torch.equal(load_checkpoint_file(str(old))["w"], torch.arange(3.0))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        load_checkpoint_file(str(junk))


class BadLabels(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise ValueError("label map x.png is 20x20 (HxW),\nbut its image is 32x32")


def test_an_error_in_a_dataloader_worker_ends_in_its_own_words(capsys):
    """A label check failing in a DataLoader worker reached the user as the worker's whole traceback
    (torch re-raises it as the message), folded into the error line."""
    def main(argv):
        for _ in torch.utils.data.DataLoader(BadLabels(), num_workers=1):
            pass

    with pytest.raises(SystemExit) as e:
        run_tool(main, [])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("error: label map x.png is 20x20 (HxW), but its image is 32x32 (in DataLoader worker "
                             "process 0)"), err


# -- 4. one run per work dir ------------------------------------------------------------------------
def _hold(work_dir: str, held, release) -> None:
    with work_dir_lock(work_dir):
        held.set()
        release.wait(60)


def _holder(work_dir):
    ctx = mp.get_context("fork")
    held, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=(str(work_dir), held, release))
    proc.start()
    assert held.wait(60)
    return proc, release


def test_a_busy_work_dir_is_refused_with_its_holder_then_free_after_it_ends(tmp_path):
    proc, release = _holder(tmp_path)
    try:
        with pytest.raises(WorkDirBusyError) as e:
            with work_dir_lock(tmp_path):
                pass
        text = str(e.value)
        assert f"pid {proc.pid} on host {socket.gethostname()}" in text and str(tmp_path) in text, text
    finally:
        release.set()
        proc.join(30)
    assert proc.exitcode == 0 and not (tmp_path / LOCK_FILE).exists()
    with work_dir_lock(tmp_path):  # free again
        record = json.loads((tmp_path / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid()


def test_the_lock_is_released_when_the_run_fails(tmp_path):
    with pytest.raises(ValueError):
        with work_dir_lock(tmp_path):
            raise ValueError("the run failed")
    assert not (tmp_path / LOCK_FILE).exists()
    with work_dir_lock(tmp_path):
        pass


def test_the_lock_of_a_killed_run_is_taken_over_with_a_warning(tmp_path):
    proc, _ = _holder(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    assert (tmp_path / LOCK_FILE).exists()  # left behind, but the OS has released its flock
    with pytest.warns(UserWarning, match=rf"taking over the lock .*\(pid {proc.pid} "):
        with work_dir_lock(tmp_path):
            pass


def test_a_lock_recorded_on_another_machine_is_not_guessed_away(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps(dict(pid=1234, host="other-node-7", started="?", command="x")))
    with pytest.raises(WorkDirBusyError, match=rf"other-node-7.*delete {tmp_path / LOCK_FILE}"):
        with work_dir_lock(tmp_path):
            pass


def distill(work, photos, *extra, max_iters=2):
    return [sys.executable, "tools/distill.py", CONFIG, "--data-root", str(photos), "--work-dir", str(work),
            "--amp", "off", *extra, "--cfg-options",
            *tiny_distill_options(2, train_cfg__max_iters=max_iters, train_cfg__val_interval=1000)]


def test_a_second_distillation_into_a_busy_work_dir_is_refused(small_photo_folder, tmp_path):
    """Two runs in one work dir used to both exit 0, one's best_upsampler.safetensors holding the
    other's weights. Now the second stops at once naming the first; a killed first run's lock is
    taken over (with a warning) by a run resuming in that work dir."""
    work = tmp_path / "work"
    first = subprocess.Popen(distill(work, small_photo_folder, max_iters=100000), cwd=ROOT, env=env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while f'"pid": {first.pid},' not in ((work / LOCK_FILE).read_text() if (work / LOCK_FILE).is_file() else ""):
            assert first.poll() is None and time.time() < deadline, first.stderr.read()[-3000:] if first.poll() else ""
            time.sleep(0.2)
        second = subprocess.run(distill(work, small_photo_folder), cwd=ROOT, env=env(), capture_output=True,
                                text=True, timeout=180)
        assert second.returncode == 1, second.stderr[-3000:]
        lines = error_lines(second.stderr)
        assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]
        assert f"work dir {work} is in use by another run (pid {first.pid} on host" in lines[0], lines[0]
    finally:
        first.kill()
        first.wait(30)
    done = max([int(x.stem.split("_")[1]) for x in work.glob("iter_*.pth")] + [0])  # where the kill left it
    resumed = subprocess.run(distill(work, small_photo_folder, "--resume", max_iters=done + 2), cwd=ROOT, env=env(),
                             capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(0o002))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    files = sorted(x.name for x in work.iterdir())
    for name in (f"iter_{done + 2}.pth", "last_checkpoint", "upsampler.safetensors", "val_metrics.json"):
        assert name in files and (work / name).stat().st_mode & 0o777 == 0o664, (name, files)  # umask, not 0600
    assert f"taking over the lock of an earlier run that has ended and no longer holds it (pid {first.pid}" \
        in resumed.stderr, resumed.stderr[-3000:]
    assert "resume" in resumed.stdout + resumed.stderr and not (work / LOCK_FILE).exists()


def test_torchrun_into_a_busy_work_dir_is_refused_on_every_rank_before_any_writes(small_photo_folder, tmp_path):
    """Rank 0 alone takes the lock (the other ranks do not refuse themselves: see the 2-process runs
    of tests/test_distributed.py); every rank learns its refusal before the Runner writes anything."""
    work = tmp_path / "work"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--nproc-per-node", "2", "--master-port", str(port)]
    with work_dir_lock(work):
        p = subprocess.run([*torchrun, *distill(work, small_photo_folder)[1:], "--launcher", "pytorch"], cwd=ROOT,
                           env=env(), capture_output=True, text=True, timeout=180)
    assert p.returncode != 0
    lines = error_lines(p.stderr)
    busy = f"is in use by another run (pid {os.getpid()} "
    assert len(lines) == 2 and all(busy in x for x in lines), p.stderr[-3000:]
    assert sorted(x.name for x in work.iterdir()) == []  # no rank wrote (and our lock is released)


def test_detectron2_training_into_a_busy_output_dir_is_refused(tmp_path):
    pytest.importorskip("detectron2")
    with work_dir_lock(tmp_path):
        p = subprocess.run([sys.executable, "tools/d2_train.py", "--config-file",
                            "configs/d2/toy/mask_rcnn_dinov3_vits16_bilinear_toy.py", "train.device=cpu",
                            f"train.output_dir={tmp_path}"], cwd=ROOT, env=env(), capture_output=True, text=True,
                           timeout=180)
    assert p.returncode == 1, p.stderr[-3000:]
    lines = error_lines(p.stderr)
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert f"work dir {tmp_path} is in use by another run (pid {os.getpid()}" in lines[0]
    assert sorted(x.name for x in tmp_path.iterdir()) == []  # nothing written (and our lock released)


# -- 7. shared one-time work ------------------------------------------------------------------------
def _write_toy(root: str, start, out) -> None:
    start.wait(60)
    try:
        write_toy_instances(root, num_train=3, num_val=2, size=48)
        out.put(("ok", sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))))
    except Exception as e:  # noqa: BLE001  reported to the test
        out.put(("error", f"{type(e).__name__}: {e}"))


def test_processes_writing_one_toy_dataset_at_once_all_succeed_and_agree(tmp_path):
    """The first 2-process Detectron2 run of a fresh checkout crashed: both ranks wrote the toy
    dataset and the second rename failed with 'Directory not empty'."""
    ctx = mp.get_context("fork")  # the imports done once, here
    start, out = ctx.Event(), ctx.Queue()
    root = tmp_path / "toydata" / "instances"  # its parent does not exist either
    procs = [ctx.Process(target=_write_toy, args=(str(root), start, out)) for _ in range(3)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert [r[0] for r in results] == ["ok"] * 3, results
    assert results[0][1] == results[1][1] == results[2][1] and results[0][1]
    assert sorted(p.name for p in root.parent.iterdir()) == ["instances"]  # no temporary folder or lock left
