"""Train or evaluate a Detectron2 LazyConfig detector over frozen DINOv3 (+ an upsampler).

    .venv/bin/python tools/d2_train.py --config-file configs/d2/COCO/mask_rcnn_dinov3_vitb16_brixel_100ep.py \
        --num-gpus 8 [--resume] [key=value ...]
    .venv/bin/python tools/d2_train.py --config-file ... --eval-only train.init_checkpoint=work_dirs/.../model_final.pth

detectron2's lazyconfig interface (``--config-file``, ``--num-gpus``, ``--num-machines``,
``--machine-rank``, ``--dist-url``, ``--resume``, ``--eval-only``, ``key=value`` overrides); the
loop is brixel_plugins.d2.engine (detectron2's trainer, hooks and COCOEvaluator; bfloat16 autocast
on CUDA; checkpoints without the frozen backbone, written atomically; ``--resume`` continues from
the newest checkpoint that loads). Run it as a script: the detectron2 wheel installs a top-level
``tools`` package that shadows this folder for ``import tools``.
"""
import sys


def main(args):
    from detectron2.config import LazyConfig
    from detectron2.engine import default_setup

    from brixel_plugins.d2 import engine

    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    default_setup(cfg, args)
    try:
        results = engine.evaluate_checkpoint(cfg) if args.eval_only else engine.train(cfg, resume=args.resume)
    except FloatingPointError as e:
        sys.exit(f"training stopped: {e}\nThe checkpoints in {cfg.train.output_dir} predate the bad step and "
                 f"are intact; lower optimizer.lr or lengthen the warm-up, then continue with --resume.")
    return results


if __name__ == "__main__":
    from detectron2.engine import default_argument_parser, launch

    args = default_argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
