"""Every trainer on 2 CPU processes (gloo), started as the docs say (torchrun, detectron2's
--num-gpus, two torchrun agents as two "nodes"): exit 0, the frozen DINOv3 and a frozen upsampler
outside DDP's gradient buckets and the optimizer, different images on every rank, the epoch length
and learning-rate schedule of the global batch, identical trainable weights on every rank, rank 0
alone writing into the work dir, and a resumed 2-process distillation identical to an
uninterrupted one. tests/dist_probe.py observes each run (see its docstring)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, TINY_DIMS, make_tiny_backbone, tiny_cfg_options, tiny_distill_options

from brixel_plugins.files.upsampler_file import save_upsampler
from brixel_plugins.upsamplers import build_upsampler

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
PROBE = str(ROOT / "tests" / "dist_probe.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    e.pop("DINOV3_WEIGHTS", None)
    return e


def run(cmd, timeout=400) -> str:
    p = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    return p.stdout + p.stderr


def torchrun(nproc=2, port=None):
    return [TORCHRUN, "--nproc-per-node", str(nproc), "--master-port", str(port or free_port())]


def probed(out, work, tool, *args):
    """``tool args`` under tests/dist_probe.py (``torchrun ... tools/X.py ...`` as users run it, observed)."""
    hook = [] if tool.endswith("d2_train.py") else [
        "default_hooks.dist_probe.type=DistProbeHook", f"default_hooks.dist_probe.out={out}"]
    return [PROBE, str(out), str(work), tool, *args, *hook]


def ranks(out, n=2):
    """Per rank: the probe's record, the trainable weights at the end, and the files it wrote in the work dir."""
    recs = [json.loads((Path(out) / f"rank{r}.json").read_text()) for r in range(n)]
    weights = [torch.load(Path(out) / f"rank{r}.pt", weights_only=True) for r in range(n)]
    writes = {r: json.loads((Path(out) / f"writes_rank{r}.json").read_text()) for r in range(1, n)}
    return recs, weights, writes


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys() and a
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"ranks differ in {different[:5]}"


def assert_frozen_kept_out(rec, frozen_at_least):
    w = rec["wrapper"]
    assert w["wrapper"] == "FrozenBackboneDDP" and w["device_ids"] is None  # CPU: no device ids
    assert w["find_unused_parameters"] is False
    assert w["frozen"] >= frozen_at_least and w["frozen_in_optimizer"] == 0
    assert w["optimizer_params"] == w["trainable"] == w["bucket_tensors"]  # only what trains is reduced
    assert w["bucket_bytes"] == 4 * w["trainable_numel"]


# -- distillation -------------------------------------------------------------------------------
DISTILL_OPTS = tiny_distill_options(1, train_cfg__val_interval=4)


def distill_args(folder, work, iters, *extra):
    return ["tools/distill.py", "configs/distill/brixel_vits16.py", "--launcher", "pytorch", "--amp", "off",
            "--data-root", str(folder), "--work-dir", str(work), *extra,
            "--cfg-options", *DISTILL_OPTS, f"train_cfg.max_iters={iters}"]


@pytest.fixture(scope="module")
def two_nodes(small_photo_folder, tmp_path_factory):
    """Distillation as 2 "nodes" x 1 process: two torchrun agents meeting at one c10d rendezvous
    (README's multi-node command, with 127.0.0.1 as the head node: the second agent finds the
    rendezvous store taken and joins it as a client), 4 iterations."""
    out, work = tmp_path_factory.mktemp("probe_nodes"), tmp_path_factory.mktemp("work_nodes")
    port = free_port()
    agents = [subprocess.Popen([TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                                "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "brixel-test",
                                *probed(out, work, *distill_args(small_photo_folder, work, 4))],
                               cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for _ in range(2)]
    logs = [a.communicate(timeout=400)[0] for a in agents]
    assert all(a.returncode == 0 for a in agents), logs[0][-4000:] + logs[1][-4000:]
    return out, work, "".join(logs)


def test_distill_two_nodes(two_nodes):
    out, work, log = two_nodes
    (r0, r1), (w0, w1), writes = ranks(out)
    assert "Distributed training: True" in log and "Iter(train) [4/4]" in log
    assert_frozen_kept_out(r0, frozen_at_least=1)
    assert_same_weights(w0, w1)
    # 6 training images, 2 ranks x batch 1: an epoch is 3 iterations of the global batch of 2 ...
    assert r0["epoch_length"] == r1["epoch_length"] == 3 and r0["world_size"] == 2
    epoch0 = [set(r["steps"][i]["images"][0] for i in range(3)) for r in (r0, r1)]
    assert not epoch0[0] & epoch0[1] and len(epoch0[0] | epoch0[1]) == 6  # ... each image once, on one rank
    # ... and the schedule's epoch is that epoch: lr 1e-4 for epoch 0, 1e-3 from iteration 3 on
    assert [round(s["lr"], 8) for s in r0["steps"]] == [1e-4, 1e-4, 1e-4, 1e-3]
    assert writes[1] == [], f"rank 1 wrote into the work dir: {writes[1][:5]}"
    assert (work / "upsampler.safetensors").is_file() and (work / "iter_4.pth").is_file()


def test_distill_resume_in_two_processes_continues_exactly(small_photo_folder, tmp_path, two_nodes):
    """The 2-node run, interrupted after its iteration-2 checkpoint, resumed on 1 node x 2
    processes (``--resume CHECKPOINT``): the weights are the uninterrupted run's, bit for bit."""
    nodes_out, nodes_work, _ = two_nodes
    out, work = tmp_path / "probe", tmp_path / "work"
    resume = ["--resume", str(nodes_work / "iter_2.pth")]
    log = run(torchrun() + probed(out, work, *distill_args(small_photo_folder, work, 4, *resume)))
    assert "resuming at iteration 2" in log and "Iter(train) [4/4]" in log
    (r0, _), (w0, w1), writes = ranks(out)
    assert_same_weights(w0, w1)
    assert [(s["iter"], s["lr"]) for s in r0["steps"]] == [(3, 1e-4), (4, 1e-3)]
    assert_same_weights(w0, torch.load(nodes_out / "rank0.pt", weights_only=True))
    assert writes[1] == []


# -- MMSegmentation -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seg_files(tmp_path_factory):
    from brixel_plugins.toydata.segmentation import write_toy_segmentation

    root = tmp_path_factory.mktemp("seg")
    torch.manual_seed(0)
    lift = save_upsampler(root / "lift.safetensors", build_upsampler(dict(type="lift", factor=4),
                                                                     make_tiny_backbone().spec))
    return dict(data=str(write_toy_segmentation(root / "shapes", num_train=8, num_val=4, size=64)), lift=str(lift))


def test_mmseg_two_processes(seg_files, tmp_path):
    """torchrun tools/train.py on the toy config with a frozen LiFT and the head's norm set to
    SyncBN (reverted on the CPU, where torch has no SyncBatchNorm): the issue's 'device_ids [0]
    ... CPU module' run."""
    out, work = tmp_path / "probe", tmp_path / "work"
    data = [f"{loader}.dataset.{k}" for loader in ("train_dataloader", "val_dataloader", "test_dataloader")
            for k in ("data_root", "generate")]
    opts = [*tiny_cfg_options(),
            f"model.decode_head.in_channels={TINY['embed_dim']}", "model.decode_head.norm_cfg.type=SyncBN",
            "model.backbone.upsampler.type=lift", f"model.backbone.upsampler.weights={seg_files['lift']}",
            *(f"{k}={seg_files['data'] if k.endswith('data_root') else None}" for k in data),
            "train_dataloader.batch_size=2", "val_dataloader.batch_size=2", "train_cfg.max_iters=3",
            "train_cfg.val_interval=3", "default_hooks.checkpoint.interval=3", "default_hooks.logger.interval=1"]
    config = "configs/mmseg/linear/linear_dinov3-vits16-bilinear_1xb8-60it_toy-shapes-128x128.py"
    log = run(torchrun() + probed(out, work, "tools/train.py", config, "--launcher", "pytorch",
                                  "--work-dir", str(work), "--cfg-options", *opts))
    assert "Distributed training: True" in log and "Iter(train) [3/3]" in log and "mIoU" in log
    assert "SyncBatchNorm runs on CUDA only" in log
    (r0, r1), (w0, w1), writes = ranks(out)
    assert_frozen_kept_out(r0, frozen_at_least=2)  # DINOv3 and the LiFT upsampler
    assert r0["wrapper"]["sync_bn"] == 0
    assert_same_weights(w0, w1)
    assert set(w0) == {n for n in w0 if n.startswith("decode_head.")}  # only the head trains
    # an epoch of the global batch (8 images / (2 ranks x 2)) is 2 steps: each image once, on one rank
    first_epoch = [{im for s in r["steps"][:2] for im in s["images"]} for r in (r0, r1)]
    assert not first_epoch[0] & first_epoch[1] and len(first_epoch[0] | first_epoch[1]) == 8
    assert writes[1] == [], f"rank 1 wrote into the work dir: {writes[1][:5]}"
    assert (work / "iter_3.pth").is_file()


# -- Detectron2 ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def det_files(tmp_path_factory):
    pytest.importorskip("detectron2")
    from brixel_plugins.toydata.instances import write_toy_instances

    root = tmp_path_factory.mktemp("det")
    path = root / "tiny_dinov3.pth"
    torch.save(make_tiny_backbone().model.state_dict(), path)
    return dict(data=str(write_toy_instances(root / "data", num_train=4, num_val=2, size=64)), dinov3=str(path))


def d2_args(files, output_dir, iters):
    dims = "{" + ",".join(f"{k}:{v}" for k, v in TINY_DIMS.items()) + "}"
    names = [f"dataloader.{split}.dataset.names.{k}={v}" for split in ("train", "test")
             for k, v in dict(root=files["data"], num_train=4, num_val=2, size=64).items()]
    return ["--config-file", "configs/d2/toy/mask_rcnn_dinov3_vits16_bilinear_toy.py",
            f"model.backbone.net.weights={files['dinov3']}", f"model.backbone.net.overrides={dims}", *names,
            "dataloader.train.total_batch_size=4", "model.backbone.square_pad=64", "train.device=cpu",
            f"train.max_iter={iters}", f"train.checkpointer.period={iters}", f"train.output_dir={output_dir}"]


def test_d2_torchrun_two_processes(det_files, tmp_path):
    out, work = tmp_path / "probe", tmp_path / "work"
    a = d2_args(det_files, work, 3)
    log = run(torchrun() + probed(out, work, "tools/d2_train.py", *a[:2], "--launcher", "pytorch", *a[2:]))
    assert "bbox" in log  # COCOEvaluator ran over both ranks' shares
    (r0, r1), (w0, w1), writes = ranks(out)
    assert_frozen_kept_out(r0, frozen_at_least=1)
    assert_same_weights(w0, w1)
    assert r0["world_size"] == 2 and [s["iter"] for s in r0["steps"]] == [0, 1, 2]
    for s0, s1 in zip(r0["steps"], r1["steps"]):  # total_batch_size 4 = 2 per rank: the 4 images, each once
        assert len(s0["images"]) == len(s1["images"]) == 2 and len(set(s0["images"]) | set(s1["images"])) == 4
    # besides detectron2's own per-rank log (default_setup's log.txt.rank1), rank 1 writes nothing
    assert [w for w in writes[1] if not w[1].endswith("/log.txt.rank1")] == [], writes[1][:5]
    assert (work / "model_final.pth").is_file()


def test_d2_num_gpus_two_on_cpu(det_files, tmp_path):
    """The issue's command: detectron2's own launcher with --num-gpus 2 and train.device=cpu, as in a
    fresh checkout: the toy dataset does not exist yet and both ranks ask for it at once."""
    fresh = dict(det_files, data=str(tmp_path / "toydata" / "instances"))
    a = d2_args(fresh, tmp_path / "work", 1)
    run([sys.executable, "tools/d2_train.py", *a[:2], "--num-gpus", "2", *a[2:], "train.eval_period=0"])
    assert (tmp_path / "work" / "model_final.pth").is_file()
    assert (tmp_path / "toydata" / "instances" / "toy_instances.json").is_file()
