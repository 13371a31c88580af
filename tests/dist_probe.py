"""Run one of the tools under torchrun and record, per rank, what a distributed run must get right.

    torchrun --nproc-per-node 2 tests/dist_probe.py OUT WORK_DIR tools/train.py CONFIG --launcher pytorch ...

The tool runs unchanged (as ``__main__``, with its own argv); the probe only observes:

- every file this rank writes, renames or deletes under WORK_DIR (Python's audit events: ranks
  other than 0 must write nothing there);
- with mmengine tools, a hook the command line adds (``--cfg-options
  default_hooks.dist_probe.type=DistProbeHook default_hooks.dist_probe.out=OUT``); with
  tools/d2_train.py, the same observations through ``engine.train``'s ``extra_hooks``:
  the wrapper (type, device ids, unused-parameter search, what is in its gradient buckets), the
  optimizer's parameters against the frozen ones, the images of every step, the learning rate,
  the epoch length, and at the end the trainable weights (``OUT/rank<r>.pt`` + ``OUT/rank<r>.json``).
"""
from __future__ import annotations

import atexit
import json
import os
import runpy
import sys

import torch

OUT, WORK, TOOL, *TOOL_ARGS = sys.argv[1:]
RANK = int(os.environ.get("RANK", "0"))
WORK = os.path.abspath(WORK)
WRITES: list = []
RECORD: dict = {"steps": []}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _under_work(path) -> bool:
    try:
        return os.path.abspath(os.fsdecode(path)).startswith(WORK + os.sep)
    except TypeError:  # a file descriptor
        return False


def _audit(event, args):
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS)
        if writing and _under_work(path):
            WRITES.append(["open", os.fsdecode(path)])
    elif event in ("os.rename", "os.remove", "os.unlink", "shutil.rmtree") and _under_work(args[0]):
        WRITES.append([event, os.fsdecode(args[0])])


def _dump_writes():
    with open(os.path.join(OUT, f"writes_rank{RANK}.json"), "w") as f:
        json.dump(WRITES, f)


def _wrapper_facts(model, optimizer) -> dict:
    from brixel_plugins.engine import unwrap_model

    inner = unwrap_model(model)
    frozen = {id(p) for p in inner.parameters() if not p.requires_grad}
    trainable = [p for p in inner.parameters() if p.requires_grad]
    held = [p for g in optimizer.param_groups for p in g["params"]]
    facts = dict(wrapper=type(model).__name__, frozen=len(frozen), trainable=len(trainable),
                 trainable_numel=sum(p.numel() for p in trainable),
                 frozen_in_optimizer=sum(id(p) in frozen for p in held), optimizer_params=len(held))
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        data = model._get_ddp_logging_data()  # what the reducer actually synchronises
        facts.update(device_ids=model.device_ids, find_unused_parameters=model.find_unused_parameters,
                     bucket_tensors=int(data["num_parameter_tensors"]),
                     bucket_bytes=int(data["total_parameter_size_bytes"]),
                     sync_bn=sum(isinstance(m, torch.nn.SyncBatchNorm) for m in inner.modules()))
    return facts


def _finish(model, extra: dict) -> None:
    from brixel_plugins.engine import unwrap_model

    RECORD.update(extra)
    weights = {n: p.detach().cpu().clone() for n, p in unwrap_model(model).named_parameters() if p.requires_grad}
    torch.save(weights, os.path.join(OUT, f"rank{RANK}.pt"))
    with open(os.path.join(OUT, f"rank{RANK}.json"), "w") as f:
        json.dump(RECORD, f)


def _mmengine_hook():
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS

    @HOOKS.register_module(force=True)
    class DistProbeHook(Hook):
        priority = "LOWEST"

        def __init__(self, out: str):
            self.out = out

        def before_train(self, runner):
            RECORD["wrapper"] = _wrapper_facts(runner.model, runner.optim_wrapper.optimizer)

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            if "index" in data_batch:  # distillation: dataset indices
                images = [int(i) for i in data_batch["index"]]
            else:  # mmseg: image files
                images = [os.path.basename(s.img_path) for s in data_batch["data_samples"]]
            # the learning rate this step uses (schedulers step after it)
            RECORD["steps"].append(dict(iter=runner.iter + 1, images=images,
                                        lr=runner.optim_wrapper.get_lr()["lr"][0]))

        def after_train(self, runner):
            loop = runner.train_loop
            _finish(runner.model, dict(epoch_length=getattr(loop, "epoch_length", len(runner.train_dataloader)),
                                       max_iters=loop.max_iters, world_size=runner.world_size))


def _d2_hooks():
    from detectron2.engine import HookBase
    from detectron2.utils import comm

    import brixel_plugins.d2.engine as engine
    from brixel_plugins.engine import unwrap_model

    class D2Probe(HookBase):
        stepping = False

        def before_train(self):
            RECORD["wrapper"] = _wrapper_facts(self.trainer.model, self.trainer.optimizer)
            unwrap_model(self.trainer.model).register_forward_pre_hook(self.inputs)

        def inputs(self, module, args):  # the images of a training step, as the model receives them
            if self.stepping:
                RECORD["steps"][-1]["images"] = [d["image_id"] for d in args[0]]

        def before_step(self):
            self.stepping = True
            RECORD["steps"].append(dict(iter=self.trainer.iter, lr=self.trainer.optimizer.param_groups[0]["lr"]))

        def after_step(self):
            self.stepping = False

        def after_train(self):
            _finish(self.trainer.model, dict(max_iters=self.trainer.max_iter, world_size=comm.get_world_size()))

    train = engine.train
    engine.train = lambda cfg, resume=False: train(cfg, resume=resume, extra_hooks=[D2Probe()])


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    if RANK != 0:
        sys.addaudithook(_audit)
        atexit.register(_dump_writes)
    if TOOL.endswith("d2_train.py"):
        _d2_hooks()
    else:
        _mmengine_hook()
    sys.argv = [TOOL, *TOOL_ARGS]
    runpy.run_path(TOOL, run_name="__main__")
