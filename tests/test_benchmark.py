"""Benchmark: FLOP counting against hand counts, memory measurement, rows, overheads and throughput, a tiny
CLI run; and the CPU-efficient forwards of the upsamplers (channels-last maps, same values as the plain flow)."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_DIMS
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from brixel_plugins.benchmark import (
    BenchConfig,
    PeakMemory,
    count_flops,
    measure_backbone_row,
    measure_row,
    run_benchmark,
)
from brixel_plugins.benchmark.large_output import format_large_output, large_output_row
from brixel_plugins.benchmark.runner import Prepared, build_backbone, time_rows
from brixel_plugins.files.method_spec import MethodSpec, check_methods, parse_method, parse_methods
from brixel_plugins.upsamplers import build_upsampler
from brixel_plugins.upsamplers.brixel import Brixel
from brixel_plugins.upsamplers.jbu import bicubic_padded, pad2d
from brixel_plugins.upsamplers.layers.deform_attn import reference_points
from brixel_plugins.upsamplers.layers.layout import run_folded

ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = ["--backbone-overrides", ",".join(f"{k}={v}" for k, v in TINY_DIMS.items())]


def test_flops_linear_and_conv_by_hand():
    lin = nn.Linear(7, 5)
    _, c = count_flops(lambda: lin(torch.randn(3, 7)))
    assert c.total == 2 * 3 * 7 * 5  # 105 multiply-adds; bias not counted
    conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)
    _, c = count_flops(lambda: conv(torch.randn(2, 3, 8, 8)))
    assert c.total == 2 * (2 * 4 * 8 * 8) * (3 * 3 * 3)  # outputs x (Cin k k) multiply-adds
    acc, a, b = torch.zeros(3, 5), torch.randn(3, 7), torch.randn(7, 5)
    _, c = count_flops(lambda: acc.addmm_(a, b))  # in place (a projection written onto a residual)
    assert c.total == 2 * 3 * 7 * 5
    convt = nn.ConvTranspose2d(6, 3, kernel_size=2, stride=2)
    _, c = count_flops(lambda: convt(torch.randn(1, 6, 4, 4)))
    assert c.total == 2 * (4 * 4) * 6 * 3 * 2 * 2  # every input pixel scatters a 2x2 kernel per in/out pair


def test_flops_added_ops_by_hand():
    x = torch.randn(1, 2, 4, 4)
    _, c = count_flops(lambda: F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False))
    assert c.total == 2 * 4 * (2 * 8 * 8)
    _, c = count_flops(lambda: F.interpolate(x, size=(8, 8), mode="bicubic", align_corners=False))
    assert c.total == 2 * 16 * (2 * 8 * 8)
    _, c = count_flops(lambda: F.grid_sample(x, torch.zeros(1, 3, 5, 2), align_corners=False))
    assert c.total == 2 * 4 * (2 * 3 * 5)
    q, k = torch.randn(1, 2, 10, 8), torch.randn(1, 2, 6, 8)
    v = torch.randn(1, 2, 6, 4)
    _, c = count_flops(lambda: F.scaled_dot_product_attention(q, k, v))  # CPU fused kernel
    assert c.total == 2 * 2 * 10 * 6 * 8 + 2 * 2 * 10 * 6 * 4


def test_peak_memory_sees_a_large_allocation():
    with PeakMemory(torch.device("cpu")) as mem:
        x = torch.ones(16 * 2 ** 20)  # 64 MiB, touched
        del x
    assert mem.peak_bytes >= 60 * 2 ** 20, (mem.method, mem.peak_bytes)


def test_method_specs_and_unknown_names(tmp_path):
    assert parse_method("lift:factor=2") == MethodSpec("lift", {"factor": 2})
    assert [m.name for m in parse_methods("bilinear, lift")] == ["bilinear", "lift"]
    with pytest.raises(KeyError, match=r"'nosuch'.*registered: .*bilinear.*lift"):
        check_methods(parse_methods("bilinear,nosuch"))
    with pytest.raises(FileNotFoundError):
        check_methods([parse_method(str(tmp_path / "x.safetensors"))])


def test_row_counts_backbone_passes_and_params(tiny_backbone):
    cfg = BenchConfig(warmup=0, runs=2)
    hi = measure_row(MethodSpec("highres"), 8, cfg, tiny_backbone)
    lift = measure_row(MethodSpec("lift"), 8, cfg, tiny_backbone)
    assert (hi["input_px"], hi["backbone_px"], hi["trainable_params"]) == (32, "1x128", 0)
    assert (lift["backbone_px"], lift["trainable_params"]) == ("1x32", 72_560)
    assert hi["frozen_params"] == lift["frozen_params"] == sum(p.numel() for p in tiny_backbone.parameters())
    assert hi["backbone_gflops"] > 0.9 * hi["gflops"]  # highres is all backbone
    assert lift["upsampler_gflops"] > 0 and lift["backbone_gflops"] < hi["backbone_gflops"] / 4
    assert lift["latency_ms"] > 0 and lift["iqr_ms"] >= 0
    floor = measure_backbone_row(32, 8, cfg, tiny_backbone)  # DINOv3 alone: all of it is backbone
    assert (floor["method"], floor["trainable_params"], floor["backbone_px"]) == ("backbone", 0, "1x32")
    assert floor["gflops"] == floor["backbone_gflops"] == pytest.approx(lift["backbone_gflops"], rel=0.01)


def test_rows_are_timed_round_robin():
    """Run k of every row before run k+1 of any (a drifting machine slows every row alike), each
    round rotated, so that no row always runs right after the same one."""
    calls = []
    rows = [Prepared(name, (lambda n=name: calls.append(n)), None, None, 1, "", None, {}) for name in "abc"]
    time_rows(rows, BenchConfig(runs=4))
    assert "".join(calls) == "abc" "bca" "cab" "abc"
    assert all(len(r.times) == 4 and min(r.times) >= 0 for r in rows)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_keep_freed_memory_takes_effect_under_glibc():
    """mallopt accepts the three settings (it answers 0 for a parameter or value it refuses);
    calling again changes nothing. (Page-fault counts on this VM vary too much run to run to be
    asserted: docs/benchmark.md has the measurements.)"""
    from brixel_plugins.common.allocator import keep_freed_memory

    assert keep_freed_memory() is True
    assert keep_freed_memory() is True


def test_lean_brixel_flops_meet_the_budget_at_vit_s():
    """ViT-S at 256 px (FLOPs counted on the meta device, no weights): BRIXEL-lean adds at most
    35% to the backbone's FLOPs (measured: 19%) and less than half of what the release adds."""
    cfg = BenchConfig(device="meta", warmup=0, runs=1)
    backbone = build_backbone(cfg)
    release, lean = (measure_row(MethodSpec(m), 64, cfg, backbone) for m in ("brixel", "brixel_lean"))
    assert lean["trainable_params"] < release["trainable_params"]
    assert lean["upsampler_gflops"] <= 0.35 * lean["backbone_gflops"]
    assert lean["upsampler_gflops"] < 0.5 * release["upsampler_gflops"]


def test_cli_tiny_sweep(tmp_path):
    out = tmp_path / "bench"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py"), "--methods", "bilinear,lift",
                        "--target", "8", "--sizes", "4,8", "--runs", "1", "--warmup", "0", "--device", "cpu",
                        "--out-dir", str(out), *TINY_ARGS], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "| highres | 4 | 32 | 1x128 |" in r.stdout and "| lift | 4 | 32 | 1x32 |" in r.stdout
    assert "freed memory kept (glibc)" in r.stdout.splitlines()[0]  # the allocator setting is stated
    rows = list(csv.DictReader(open(out / "benchmark.csv")))
    assert [(x["method"], x["target"]) for x in rows] == [
        (m, t) for t in ("4", "8") for m in ("highres", "backbone", "bilinear", "lift")]
    by = {(x["method"], int(x["target"])): x for x in rows}
    for t in (4, 8):
        hi, bb, bil, lift = (by[(m, t)] for m in ("highres", "backbone", "bilinear", "lift"))
        assert float(hi["gflops"]) > float(lift["gflops"]) > float(bil["gflops"]) >= float(bb["gflops"]) > 0
        assert float(hi["flop_ratio"]) == 1.0 and float(bil["flop_ratio"]) > 1.0
        assert int(hi["input_px"]) == int(bb["input_px"]) == int(bil["input_px"]) == t * 4
        # overhead over DINOv3 alone at the same input: (row / backbone - 1) in percent
        assert float(bb["flop_overhead_pct"]) == 0 and float(bb["latency_overhead_pct"]) == 0
        assert 0 <= float(bil["flop_overhead_pct"]) < 5  # a bilinear resize costs next to nothing
        want = 100 * (float(lift["gflops"]) / float(bb["gflops"]) - 1)
        assert float(lift["flop_overhead_pct"]) == pytest.approx(want, rel=1e-4) and want > 100
        assert float(hi["flop_overhead_pct"]) > float(lift["flop_overhead_pct"])
    # highres grows ~x16 for 2x the side (attention); the low-res backbone grows less
    assert float(by[("highres", 8)]["gflops"]) / float(by[("highres", 4)]["gflops"]) > \
        float(by[("bilinear", 8)]["gflops"]) / float(by[("bilinear", 4)]["gflops"])
    assert (out / "benchmark_sweep.png").stat().st_size > 1000
    assert (out / "benchmark.md").read_text().count("\n") == 6  # header, rule, 4 rows


def test_throughput_column(tiny_backbone):
    """images/s at ``throughput_batch`` beside the batch-1 latency, for every row but highres."""
    cfg = BenchConfig(warmup=0, runs=1, throughput_batch=2)
    lift, hi = (measure_row(MethodSpec(m), 8, cfg, tiny_backbone) for m in ("lift", "highres"))
    floor = measure_backbone_row(32, 8, cfg, tiny_backbone)
    assert lift["throughput_batch"] == floor["throughput_batch"] == 2
    assert lift["images_per_s"] > 0 and floor["images_per_s"] > lift["images_per_s"] / 10
    assert hi["throughput_batch"] == 0 and hi["images_per_s"] != hi["images_per_s"]  # NaN: not timed
    off = measure_row(MethodSpec("lift"), 8, BenchConfig(warmup=0, runs=1, throughput_batch=0), tiny_backbone)
    assert off["images_per_s"] != off["images_per_s"]


# -- efficiency rewrites (issue 23): what the CPU-fast forwards must not do, and that they compute
#    what the plain NCHW data flow computes ------------------------------------------------------
def canonical_channels_last(t: torch.Tensor) -> bool:
    """Channels-last with the canonical strides, batch stride included: torch's CPU kernels treat a
    batch-of-one map with any other batch stride as NCHW (and answer in NCHW)."""
    b, c, h, w = t.shape
    return t.stride() == (c * h * w, 1, w * c, c)


class LayoutAudit(TorchDispatchMode):
    """Records the ops on maps of at least ``numel`` elements that run slowly on CPU: a spatial op
    (convolution, resize, pooling, padding, normalisation) on a map that is not channels-last, a
    binary elementwise op on two maps of different layouts, or a copy of such a map."""

    SPATIAL = {"convolution", "upsample_bilinear2d", "upsample_bicubic2d", "max_pool2d_with_indices",
               "native_group_norm", "native_batch_norm", "reflection_pad2d", "replication_pad2d"}
    BINARY = {"add", "sub", "mul"}

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.seen = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        maps = [a for a in args if isinstance(a, torch.Tensor) and a.dim() == 4 and a.numel() >= self.numel]
        if name in self.SPATIAL and maps and maps[0] is args[0] and not canonical_channels_last(args[0]):
            self.seen.append((name, tuple(args[0].shape), args[0].stride()))
        if name in self.BINARY and len(maps) == 2 and maps[0].stride() != maps[1].stride():
            self.seen.append((name, tuple(maps[0].shape), maps[0].stride(), maps[1].stride()))
        if name in ("clone", "copy_") and maps:
            self.seen.append((name, tuple(maps[0].shape)))
        return func(*args, **(kwargs or {}))


def trained_looking(up, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in up.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return up.eval()


@pytest.mark.parametrize("method", ["brixel", "brixel_lean", "jbu", "lift"])
def test_maps_stay_channels_last(tiny_backbone, photo, method):
    """From the first convolution to the output, every map as large as the output is channels-last
    where a spatial op reads it, no elementwise op mixes layouts and no such map is copied. (Before:
    BRIXEL's stem, pooling and residual base, LiFT's convolutions and JBU's enlargement ran on NCHW
    maps, where torch's CPU kernels for bilinear resizing and max pooling take 20-30x longer, and
    BRIXEL and BRIXEL-lean added maps of different layouts, 25x slower than two channels-last maps.)"""
    up = trained_looking(build_upsampler(dict(type=method, **({} if method.startswith("brixel") else {"factor": 4})),
                                         tiny_backbone.spec))
    layers = tiny_backbone.layers(photo, up.layer_indices)
    with torch.no_grad():
        out = up(photo, layers)
        with LayoutAudit(out.numel()) as audit:
            up(photo, layers)
    assert audit.seen == []


def brixel_plain_flow(m, image, layers):
    """The released BRIXEL data flow written plainly (NCHW maps, convolutions as modules, F.interpolate):
    what the channels-last forward must compute."""
    taps = [layers[i] for i in m.layer_indices]
    h, w = taps[-1].shape[-2:]
    size1, size2 = (4 * h, 4 * w), (2 * h, 2 * w)
    spm, ad = m.adapter.spm, m.adapter
    s1 = spm.stem(image)
    c1 = F.interpolate(spm.fc1(s1), size=size1, mode="bilinear", align_corners=False)
    c2 = F.interpolate(spm.fc2(spm.conv2(s1)), size=size2, mode="bilinear", align_corners=False)
    q = c2.flatten(2).transpose(1, 2) + ad.level_embed
    ref = reference_points([size2], image.device)
    for block, tap in zip(ad.interactions, taps):
        q = block(q, ref, tap.flatten(2).transpose(1, 2), (h, w), [size2])
    q_map = q.transpose(1, 2).reshape(q.shape[0], -1, *size2)
    f1 = ad.norm1(c1 + F.interpolate(q_map, size=size1, mode="bilinear", align_corners=False))
    x = m.head.align_in(f1)
    x = x + m.head.trunk(x)
    detail = m.head.out_conv(m.head.head_norm(m.head.mix(x)))
    half = F.interpolate(taps[-1], size=(max(1, h // 2), max(1, w // 2)), mode="bilinear", align_corners=False)
    return F.interpolate(half, size=size1, mode="bilinear", align_corners=False) + detail


def test_brixel_channels_last_forward_equals_plain_flow(tiny_backbone):
    m = trained_looking(Brixel(tiny_backbone.spec))
    for batch, hw in [(1, (64, 96)), (2, (48, 80)), (1, (16, 32))]:
        x = torch.randn(batch, 3, *hw)
        layers = tiny_backbone.layers(x, m.layer_indices)
        with torch.no_grad():
            torch.testing.assert_close(m(x, layers), brixel_plain_flow(m, x, layers), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw,size,pad", [((5, 7), (10, 14), 3), ((4, 6), (12, 18), 3), ((1, 2), (2, 4), 3),
                                         ((3, 3), (6, 6), 0)])
def test_bicubic_padded_equals_interpolate_then_pad(hw, size, pad):
    """JBU's enlargement as two matrix products, reflect padding (replicate below 4 pixels) folded in."""
    x = torch.randn(2, 5, *hw, dtype=torch.float64)
    want = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
    want = pad2d(want, pad) if pad else want
    got = bicubic_padded(x, size, pad)  # (B, H + 2 pad, W + 2 pad, D)
    torch.testing.assert_close(got.permute(0, 3, 1, 2), want, rtol=1e-12, atol=1e-12)


def test_folded_batchnorm_stem_equals_the_modules():
    """``run_folded`` folds eval-mode BatchNorms into the convolution before them: the same values as
    running the modules; a BatchNorm in training mode (batch statistics) is left as it is."""
    torch.manual_seed(0)
    stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
    x = torch.randn(2, 3, 16, 16)
    stem.train()(torch.randn(4, 3, 16, 16))  # non-trivial running statistics
    with torch.no_grad():
        for bn in (stem[1], stem[4]):
            bn.weight.normal_()
            bn.bias.normal_()
        stem.eval()
        torch.testing.assert_close(run_folded(stem, x), stem(x), rtol=1e-5, atol=1e-5)
        stem.train()
        torch.testing.assert_close(run_folded(stem, x), stem(x), rtol=0, atol=0)


def test_cli_meta_sweep_counts_every_default_method(tmp_path):
    """The documented FLOPs-only sweep (``--device meta --sizes ...``) runs the default methods,
    FeatSharp included (its PHI-S statistics have no values to fit there), and plots GFLOPs alone
    (nothing is timed on the meta device, and a log axis takes no NaN)."""
    out = tmp_path / "bench"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py"), "--device", "meta", "--sizes", "4,8",
                        "--out-dir", str(out), *TINY_ARGS], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out / "benchmark.csv")))
    assert {row["method"] for row in rows} >= {"featsharp", "brixel", "jbu", "lift", "bilinear"}
    assert all(float(row["gflops"]) > 0 for row in rows)
    assert "| featsharp | 4 |" in r.stdout and "nan" not in r.stdout
    assert (out / "benchmark_sweep.png").stat().st_size > 0


def test_non_integer_scale_rows_and_refusals(tiny_backbone):
    """``scale`` 2.5: a 10x10 map from a 4x4 grid (64 px) for the methods with any output size; a
    factor-only method, or a target that is no whole grid at that scale, is refused before any timing."""
    cfg = BenchConfig(scale=2.5, warmup=0, runs=1, throughput_batch=0)
    for name in ("bilinear", "anyup", "jafar", "loftup"):
        row = measure_row(MethodSpec(name), 10, cfg, tiny_backbone)
        assert (row["factor"], row["input_px"], row["backbone_px"]) == (2.5, 64, "1x64"), name
        assert row["upsampler_gflops"] >= 0 and row["latency_ms"] > 0
    with pytest.raises(ValueError, match=r"lift upsamples by an integer factor only, not by 2.5"):
        run_benchmark([MethodSpec("lift")], cfg, sizes=(10,))
    with pytest.raises(ValueError, match=r"target 9 tokens at scale 2.5 is not a whole token grid"):
        run_benchmark([MethodSpec("bilinear")], cfg, sizes=(9,))


def test_large_output_line_counts_beyond_the_output(tiny_spec):
    """The upsampler alone from a (1, D, 4, 4) map to 64x64: the output's own bytes are subtracted from
    the peak; a factor-only method is refused naming the reason."""
    row = large_output_row(MethodSpec("anyup"), tiny_spec, 64, isolate=False)
    assert row["feature_shape"] == (1, tiny_spec.embed_dim, 4, 4)
    assert row["output_bytes"] == 4 * tiny_spec.embed_dim * 64 * 64
    assert row["beyond_output_bytes"] == row["peak_bytes"] - row["output_bytes"] and row["seconds"] > 0
    assert "anyup peak" in format_large_output(row)
    with pytest.raises(ValueError, match="lift gives only 4x its token grid, not a 64x64 output from 4x4 tokens"):
        large_output_row(MethodSpec("lift"), tiny_spec, 64)


def test_cli_scale_and_large_output(tmp_path):
    out = tmp_path / "bench"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py"), "--methods", "bilinear,anyup",
                        "--scale", "2.5", "--target", "10", "--large-output", "64", "--runs", "1", "--warmup", "0",
                        "--throughput-batch", "0", "--device", "cpu", "--out-dir", str(out), *TINY_ARGS],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "| highres | 2.5 | 64 | 1x160 |" in r.stdout and "| anyup | 2.5 | 64 | 1x64 |" in r.stdout
    assert "| backbone | 1 | 64 | 1x64 |" in r.stdout
    assert "64x64 from (1, 64, 4, 4) on cpu: anyup peak" in r.stdout
    assert "64x64 from (1, 64, 4, 4) on cpu: bilinear peak" in r.stdout
