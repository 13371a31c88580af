"""What ``tools/benchmark.py`` runs once its arguments are parsed: the rows, the files, the printed table
and, with ``large_output``, the large-output memory line."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

from ..files.method_spec import MethodSpec
from .large_output import check_large_output, format_large_output, large_output_row
from .output import markdown_table, plot_sweep, write_csv
from .runner import BenchConfig, build_backbone, configure_allocator, run_benchmark


def benchmark_report(methods: Sequence[MethodSpec], cfg: BenchConfig, sizes: Sequence[int], target: int,
                     out_dir: str, isolate: bool = False, large_output: Optional[int] = None) -> list:
    """Measure ``methods`` at every size of ``sizes`` (tokens per side), write ``benchmark.csv`` (all
    sizes), ``benchmark.md`` (``target``) and, for a sweep, ``benchmark_sweep.png`` under ``out_dir``;
    print the table for ``target`` and, with ``large_output`` (px), each method's peak memory beyond
    its output tensor at ``large_output`` x ``large_output``. Returns the rows."""
    if cfg.weights is None:
        print("note: random-init DINOv3 (no --weights): fine for cost, not for features", file=sys.stderr)
    spec = None
    if large_output is not None:  # refused before the table's minutes, not after
        spec = build_backbone(replace(cfg, device="meta")).spec
        for m in methods:
            check_large_output(m, spec, large_output)
    rows = run_benchmark(methods, cfg, sizes, isolate=isolate, log=lambda s: print(s, file=sys.stderr))

    out = Path(out_dir)
    csv_path = write_csv(rows, out / "benchmark.csv")
    table = markdown_table([r for r in rows if r["target"] == target])
    (out / "benchmark.md").write_text(table + "\n")
    print(f"DINOv3 {rows[0]['arch']}, {target}x{target} tokens, {cfg.device}, {cfg.dtype}, "
          f"batch {cfg.batch_size}, {cfg.runs} runs after {cfg.warmup} warm-ups"
          + (f"; images/s at batch {cfg.throughput_batch}" if cfg.throughput_batch else "")
          + ("; torch.compile" if cfg.compile else "")
          + ("" if "cuda" in str(cfg.device) else "; freed memory kept (glibc)" if configure_allocator(cfg)
             else "; default allocator") + "\n")
    print(table)
    if large_output is not None:
        print(f"\npeak memory beyond the output tensor, upsampler alone, {large_output}x{large_output} "
              f"from a {large_output // 16}x{large_output // 16} token map, inference, fresh process:")
        for m in methods:
            print(format_large_output(large_output_row(m, spec, large_output, device=cfg.device, seed=cfg.seed)),
                  flush=True)
    print(f"\nGFLOPs count a multiply-add as 2 FLOPs (GMACs = GFLOPs / 2); 'over backbone' = the row / DINOv3 "
          f"alone at the same input size - 1; peak memory: {rows[0]['mem_method']}")
    print(f"csv: {csv_path}")
    if len(sizes) > 1:
        print(f"plot: {plot_sweep(rows, out / 'benchmark_sweep.png')}")
    return rows
