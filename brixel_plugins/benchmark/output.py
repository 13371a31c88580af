"""Benchmark rows as a CSV file, a Markdown table and a sweep plot."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

CSV_FIELDS = ("method", "target", "factor", "input_px", "backbone_passes", "backbone_px", "trainable_params",
              "frozen_params", "gflops", "gmacs", "backbone_gflops", "upsampler_gflops", "flop_overhead_pct",
              "flop_ratio", "latency_ms", "iqr_ms", "min_ms", "max_ms", "runs", "latency_overhead_pct", "speedup",
              "throughput_batch", "images_per_s",
              "peak_mib", "mem_method", "batch_size", "device", "dtype", "arch")


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


def _pct(v: float) -> str:
    return "" if v != v else f"{v:+.0f}%"  # NaN (no backbone row at this size): empty


def _num(v: float, fmt: str = ".3g", unit: str = "") -> str:
    return "" if v != v else f"{v:{fmt}}{unit}"  # NaN (not measured, e.g. on the meta device): empty


def _throughput_batch(rows: Sequence[Mapping[str, Any]]) -> int:
    return max((r.get("throughput_batch", 0) for r in rows), default=0)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line per row; the overhead columns compare with DINOv3 alone at the row's input size."""
    head = ["method", "factor", "input px", "backbone passes", "trainable M", "GFLOPs", "FLOPs over backbone",
            "latency ms (median)", "IQR ms", "latency over backbone", "highres / row FLOPs", "speed-up vs highres",
            f"images/s (batch {_throughput_batch(rows)})", "peak MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], r["factor"], r["input_px"], r["backbone_px"], f"{r['trainable_params'] / 1e6:.3f}",
                 f"{r['gflops']:.3g}", _pct(r["flop_overhead_pct"]), _num(r["latency_ms"], ".1f"),
                 _num(r["iqr_ms"], ".1f"),
                 _pct(r["latency_overhead_pct"]), f"{r['flop_ratio']:.1f}x", _num(r["speedup"], ".2f", "x"),
                 _num(r.get("images_per_s", float("nan"))), _num(r["peak_mib"], ".0f")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def plot_sweep(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """GFLOPs and latency against the target density (tokens per side), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    panels = [("gflops", "GFLOPs per image"), ("latency_ms", "latency ms (median)")]
    # a log axis needs positive values: the meta device counts FLOPs but times nothing
    panels = [(k, t) for k, t in panels if all(math.isfinite(r[k]) and r[k] > 0 for r in rows)]
    if not panels:
        raise ValueError("nothing to plot: no row has positive GFLOPs or latencies")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    axes = axes[0]
    for (key, title), ax in zip(panels, axes):
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = sorted((r["target"], r[key]) for r in rows if r["method"] == method)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("output tokens per side (map is side x side)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    r0 = rows[0]
    fig.suptitle(f"DINOv3 {r0['arch']} on {r0['device']} ({r0['dtype']}, batch {r0['batch_size']}): "
                 f"slope 4 = attention at high resolution, slope 2 = linear in output tokens", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
