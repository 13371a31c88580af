"""Where a distillation hour goes: images/s of the real training step with 1, 2, ... processes
(DDP through the engine's wrapper, gloo on CPU, NCCL on CUDA), with the frozen teacher's pass
timed on its own, and the peak memory of each process (tools/benchmark_distill.py).

Each process builds the config's :class:`DistillModel` and optimizer, then times, on the same
batch of photos at the teacher resolution:

- ``step``: one real training step (``train_step``: teacher, student, loss, backward, all-reduce,
  optimizer step), as the Runner runs it;
- ``teacher``: the frozen DINOv3 at the teacher resolution alone (no gradient);
- ``student``: ``step - teacher``: DINOv3 at the student resolution, the upsampler, the loss,
  backward, the gradient all-reduce and the optimizer step.

Images/s counts the global batch (processes x batch per process) per median step.
"""
from __future__ import annotations

import os
import resource
import socket
import statistics
import time
import warnings
from typing import Dict, List, Optional, Sequence

import torch

from .timing import timed

__all__ = ["measure", "format_rows"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _photos(size: int, batch: int) -> torch.Tensor:
    """``batch`` of scikit-image's photos as uint8 (B, 3, size, size) (repeated if there are fewer)."""
    from ..images import resize, skimage_photos, to_tensor

    photos = skimage_photos()
    out = [resize(to_tensor(photos[i % len(photos)]).float(), size) for i in range(batch)]
    return torch.cat(out).clamp(0, 255).round().to(torch.uint8)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _worker(rank: int, world: int, port: int, config: str, options: Dict, batch: int, runs: int, warmup: int,
            threads: Optional[int], device_name: str, results) -> None:
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope

    from ..distill.registry import MODELS
    from ..engine import FrozenBackboneDDP
    from ..images import normalise

    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // world))
    cuda = device_name == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1:
        torch.distributed.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                                             rank=rank, world_size=world)
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(options)
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope("brixel_plugins"):
        model = MODELS.build(cfg.model).to(device)
        if model.calibration_targets():  # statistics fitted before training (PHI-S): once, from the batch
            feats = model.last_layer_map(normalise(_photos(model.student_size, batch).to(device)))
            for m in model.calibration_targets():
                m.calibrate(feats)
                m.finish_calibration()
        wrapped = FrozenBackboneDDP(model) if world > 1 else model
        optim = build_optim_wrapper(wrapped, cfg.optim_wrapper)
    data = {"image": _photos(model.teacher_size, batch)}
    teacher_input = normalise(data["image"].to(device))
    wrapped.train()

    def step():
        wrapped.train_step(data, optim_wrapper=optim)

    def teacher():
        model.last_layer_map(teacher_input)

    timed(step, device, warmup)
    steps = timed(step, device, runs)
    teachers = timed(teacher, device, runs)
    row = dict(rank=rank, step=statistics.median(steps), teacher=statistics.median(teachers),
               memory_mb=_peak_memory_mb(device))
    rows = [row]
    if world > 1:
        rows = [None] * world
        torch.distributed.all_gather_object(rows, row)
    if rank == 0:  # before the group is torn down: the parent needs nothing else from any process
        results.put(rows)
    if world > 1:
        torch.distributed.destroy_process_group()


def measure(config: str, options: Dict, procs: Sequence[int] = (1, 2), batch: int = 2, runs: int = 5,
            warmup: int = 2, threads: Optional[int] = None, device: str = "cpu") -> List[dict]:
    """One row per process count: images/s of the global batch, step / teacher / student seconds
    (median over ``runs``, slowest rank), peak memory per process (the largest)."""
    import torch.multiprocessing as mp

    rows = []
    ctx = mp.get_context("spawn")
    for world in procs:
        results = ctx.SimpleQueue()
        procs_ctx = mp.start_processes(_worker, args=(world, _free_port(), config, options, batch, runs, warmup,
                                                      threads, device, results), nprocs=world, start_method="spawn",
                                       join=False)
        while results.empty():  # rank 0's rows, or every process ended (join raises if one failed)
            if procs_ctx.join(timeout=0.5) and results.empty():
                raise RuntimeError(f"{world} process(es) ended without reporting a measurement")
        per_rank = results.get()
        _join_or_end(procs_ctx)
        step = max(r["step"] for r in per_rank)
        teacher = max(r["teacher"] for r in per_rank)
        rows.append(dict(processes=world, batch=batch * world, images_per_s=batch * world / step, step_s=step,
                         teacher_s=teacher, student_s=step - teacher,
                         memory_mb=max(r["memory_mb"] for r in per_rank)))
    return rows


def _join_or_end(procs_ctx, grace_s: float = 30.0) -> None:
    """Wait for the workers once their results are in; one stuck in its own exit (seen with gloo on a
    loaded CPU: a process idle on a lock after its peer has gone) is ended instead of holding the run."""
    deadline = time.monotonic() + grace_s
    try:
        while not procs_ctx.join(timeout=0.5):
            if time.monotonic() > deadline:
                break
    except Exception as e:  # noqa: BLE001  a failure after the measurement: said, not fatal to it
        warnings.warn(f"a benchmark process failed after reporting its measurement: {e}", RuntimeWarning)
    for proc in procs_ctx.processes:
        if proc.is_alive():
            proc.kill()


def format_rows(rows: List[dict]) -> str:
    head = ("| processes | global batch | images/s | step s | teacher s | student s (incl. backward, "
            "all-reduce, step) | peak memory / process MB |\n|---|---|---|---|---|---|---|")
    lines = [f"| {r['processes']} | {r['batch']} | {r['images_per_s']:.2f} | {r['step_s']:.3f} | "
             f"{r['teacher_s']:.3f} ({100 * r['teacher_s'] / r['step_s']:.0f}%) | {r['student_s']:.3f} | "
             f"{r['memory_mb']:.0f} |" for r in rows]
    return "\n".join([head, *lines])
