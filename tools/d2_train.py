"""Train or evaluate a Detectron2 LazyConfig detector over frozen DINOv3 (+ an upsampler).

    .venv/bin/python tools/d2_train.py --config-file configs/d2/COCO/mask_rcnn_dinov3_vitb16_brixel_100ep.py \
        --num-gpus 8 [--resume [CHECKPOINT]] [--amp [auto|bf16|off]] [key=value ...]
    torchrun --nproc-per-node 8 tools/d2_train.py --config-file ... --launcher pytorch   # 8 GPUs, or 8 CPU processes
    .venv/bin/python tools/d2_train.py --config-file ... --eval-only train.init_checkpoint=work_dirs/.../model_final.pth

detectron2's lazyconfig interface (``--config-file``, ``--num-gpus``, ``--num-machines``,
``--machine-rank``, ``--dist-url``, ``--resume``, ``--eval-only``, ``key=value`` overrides) with the
options every tool here shares (``--resume [CHECKPOINT]``, ``--amp``, ``--launcher pytorch`` under
torchrun); the loop is brixel_plugins.d2.engine (detectron2's trainer, hooks and COCOEvaluator;
bfloat16 autocast on CUDA; checkpoints without the frozen backbone, written atomically; ``--resume``
continues from the newest checkpoint that loads). ``--num-gpus N`` without CUDA starts N CPU
processes (gloo). One training run at a time per ``train.output_dir``: a second is refused. Run it
as a script: the detectron2 wheel installs a top-level ``tools`` package that shadows this folder
for ``import tools``.
"""
import argparse
import contextlib
import os
import sys

from brixel_plugins.cli.errors import DEBUG_FLAG, run_tool
from brixel_plugins.engine.tool import add_amp_argument, add_launcher_argument, add_resume_argument, amp_enabled


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train or evaluate a Detectron2 detector on frozen DINOv3 (+ upsampler)")
    p.add_argument("--config-file", required=True, metavar="FILE", help="LazyConfig file (configs/d2/...)")
    add_resume_argument(p)
    p.add_argument("--eval-only", action="store_true", help="evaluate train.init_checkpoint, no training")
    add_amp_argument(p)
    p.add_argument("--num-gpus", type=int, default=1,
                   help="processes per machine started by detectron2's launch (CPU processes without CUDA)")
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0, help="this machine's rank (with --num-machines)")
    p.add_argument("--dist-url", default="auto", help="rendezvous of detectron2's launch, e.g. tcp://HOST:PORT")
    add_launcher_argument(p, choices=("none", "pytorch"))
    p.add_argument("opts", nargs=argparse.REMAINDER, default=None,
                   help="config overrides key=value, e.g. train.max_iter=1000 train.device=cpu")
    args = p.parse_args(argv)
    # detectron2's --resume is a flag: in `--resume key=value` the override is not a checkpoint to resume
    if args.resume not in (None, "auto") and "=" in args.resume and not os.path.exists(args.resume):
        args.opts, args.resume = [args.resume, *(args.opts or [])], "auto"
    return args


def main(args):
    from detectron2.config import LazyConfig
    from detectron2.engine import default_setup

    from brixel_plugins.d2 import engine
    from brixel_plugins.engine.files import work_dir_lock
    from brixel_plugins.engine.finite import NonFiniteError
    from brixel_plugins.files.lookup import config_folder

    cfg = LazyConfig.load(args.config_file)
    if args.amp != "auto":  # auto: the config's train.amp.enabled (ours: bfloat16 on CUDA only)
        cfg.train.amp.enabled = amp_enabled(args.amp)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    # one training run at a time in train.output_dir, refused before any rank writes there
    output_dir = cfg.train.get("output_dir")
    with work_dir_lock(output_dir) if output_dir and not args.eval_only else contextlib.nullcontext():
        default_setup(cfg, args)
        try:
            with config_folder(args.config_file):  # weight files beside the config
                return engine.evaluate_checkpoint(cfg) if args.eval_only else engine.train(cfg, resume=args.resume)
        except FloatingPointError as e:  # detectron2's own NaN check
            raise NonFiniteError(f"training stopped: {e}. The checkpoints in {cfg.train.output_dir} predate the bad "
                                 f"step and are intact; lower optimizer.lr or lengthen the warm-up, then continue "
                                 f"with --resume.") from e


def launched(args):
    """``main`` in one of the processes detectron2's ``launch`` starts: a failure ends there as in
    the tool itself (one ``error:`` line, exit status 1), not as a traceback handed to the parent."""
    run_tool(lambda _: main(args), [DEBUG_FLAG] if DEBUG_FLAG in sys.argv else [])


def cli(argv=None):
    args = parse_args(argv)
    if args.launcher == "pytorch":  # torchrun started this process; it is one of the N
        from brixel_plugins.d2.engine import init_torchrun_process_group

        init_torchrun_process_group()
        return main(args)
    from detectron2.engine import launch
    from torch.multiprocessing import ProcessExitedException

    several = args.num_gpus * args.num_machines > 1
    try:
        launch(launched if several else main, args.num_gpus, num_machines=args.num_machines,
               machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
    except ProcessExitedException as e:
        if e.exit_code == 1:  # that process has said why (launched)
            sys.exit(1)
        raise


if __name__ == "__main__":
    run_tool(cli)
