"""Benchmark: FLOP counting against hand counts, memory measurement, rows and overheads, and a tiny CLI run."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from brixel_plugins.benchmark import (BenchConfig, MethodSpec, PeakMemory, check_methods, count_flops,
                                      measure_backbone_row, measure_row, parse_method, parse_methods)
from brixel_plugins.benchmark.runner import Prepared, build_backbone, time_rows

ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = ["--backbone-overrides", "depth=4,embed_dim=64,num_heads=2"]


def test_flops_linear_and_conv_by_hand():
    lin = nn.Linear(7, 5)
    _, c = count_flops(lambda: lin(torch.randn(3, 7)))
    assert c.total == 2 * 3 * 7 * 5  # 105 multiply-adds; bias not counted
    conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)
    _, c = count_flops(lambda: conv(torch.randn(2, 3, 8, 8)))
    assert c.total == 2 * (2 * 4 * 8 * 8) * (3 * 3 * 3)  # outputs x (Cin k k) multiply-adds
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
    """Run k of every row before run k+1 of any: a drifting machine slows every row alike."""
    calls = []
    rows = [Prepared(name, (lambda n=name: calls.append(n)), None, None, 1, "", None, {}) for name in "abc"]
    time_rows(rows, BenchConfig(runs=3))
    assert "".join(calls) == "abcabcabc"
    assert all(len(r.times) == 3 and min(r.times) >= 0 for r in rows)


def test_lean_brixel_flops_meet_the_budget_at_vit_s():
    """ViT-S at 256 px (FLOPs counted on the meta device, no weights): BRIXEL-lean adds at most
    35% to the backbone's FLOPs (measured: 17%) and less than half of what the release adds."""
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
