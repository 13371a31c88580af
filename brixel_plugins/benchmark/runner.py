"""Measuring rows: one method producing a ``target x target`` token map from one image.

Every row produces that map from the same low-resolution image (``target / factor * 16`` px):

- ``highres``: DINOv3 on the image enlarged ``factor`` times (1024 px for 64x64): the reference.
- ``backbone``: DINOv3 alone at the low resolution (its ``target / factor`` map): the floor.
- every other method: DINOv3 at the low resolution (the layers the method reads) + the
  upsampler at the factor that reaches the target (FeatSharp runs 1 + factor^2 backbone
  passes itself; the ``backbone_px`` column shows them).

Per row: parameters, FLOPs (:mod:`.flops`), latency (median and inter-quartile range of
``runs`` timed runs after ``warmup`` untimed ones), throughput (images per second at
``throughput_batch``, median of ``runs`` timed batches; not for ``highres``, the slowest row by
far, which has its latency), peak memory (:mod:`.memory`); then
:func:`add_ratios` relates each row to ``highres`` (FLOP ratio, speed-up) and to ``backbone``
(the overhead in percent: what the upsampler adds to the backbone it serves).

Rows are first prepared (built, FLOPs counted, warmed up, peak memory taken on one call), then
timed round-robin: run k of every row before run k+1 of any. A machine whose speed drifts (a
shared or virtualised CPU, a GPU changing clocks) then slows every row alike, so the ratios
between rows, the numbers the table is for, stay steady even when absolute times move.
"""
from __future__ import annotations

import contextlib
import statistics
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from ..backbones.dinov3 import PATCH_SIZE
from ..files.method_spec import MethodSpec, check_methods, method_config, prepare_upsampler
from ..upsamplers import UPSAMPLERS
from .flops import FlopCount, count_flops
from .memory import PeakMemory, module_bytes
from .timing import timed

DEFAULT_METHODS = ("bilinear", "jbu", "lift", "featsharp", "brixel", "brixel_lean")
REFERENCE = "highres"
BACKBONE = "backbone"


@dataclass
class BenchConfig:
    arch: str = "vits16"
    weights: Optional[str] = None
    backbone_overrides: Dict[str, Any] = field(default_factory=dict)
    factor: int = 4
    # a non-integer upsampling (3.5): every row gives the target from a target/scale token grid, asked
    # for as an output size (methods with any output size only); None: each method's factor
    scale: Optional[float] = None
    device: str = "cpu"
    dtype: str = "fp32"
    batch_size: int = 1
    warmup: int = 2
    runs: int = 10
    seed: int = 0
    throughput_batch: int = 8  # images per batch of the throughput timing; 0: no throughput
    compile: bool = False  # every row's model through torch.compile (inductor) after its FLOPs are counted
    # glibc keeps freed blocks for the next run (brixel_plugins.common.allocator) instead of unmapping them
    keep_freed_memory: bool = True

    def __post_init__(self):
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"dtype must be fp32 or bf16, got {self.dtype!r}")
        if self.runs < 1 or self.warmup < 0 or self.batch_size < 1 or self.throughput_batch < 0:
            raise ValueError("need runs >= 1, warmup >= 0, batch_size >= 1, throughput_batch >= 0")
        if self.scale is not None and not float(self.scale) > 0:
            raise ValueError(f"scale must be > 0, got {self.scale!r}")

    def scaled_grid(self, target: int) -> int:
        """The token grid a ``target`` output comes from at ``scale`` (a whole number of tokens)."""
        grid = target / float(self.scale)
        if grid != int(grid) or grid < 1:
            raise ValueError(f"target {target} tokens at scale {self.scale:g} is not a whole token grid "
                             f"({grid:g}); pick a target that is a multiple of the scale, e.g. "
                             f"{max(1, round(grid)) * float(self.scale):g}")
        return int(grid)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast around a whole forward (backbone and upsampler), else nothing."""
        dev = torch.device(self.device).type
        if self.dtype == "bf16" and dev in ("cpu", "cuda"):
            return torch.autocast(dev, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def build_backbone(cfg: BenchConfig):
    from ..backbones import FrozenDINOv3

    dev = torch.device(cfg.device)
    amp = "bf16" if cfg.dtype == "bf16" and dev.type == "cuda" else None
    with warnings.catch_warnings():
        if cfg.weights is None:  # random init is fine for timing; the CLI says so once
            warnings.simplefilter("ignore", UserWarning)
        # Weights do not change the cost; the meta device cannot hold them anyway.
        weights = None if dev.type == "meta" else cfg.weights
        return FrozenDINOv3(cfg.arch, weights, device=dev, autocast=amp, **cfg.backbone_overrides)


class _PassCounter:
    """Counts images (and their sizes) entering the backbone's patch embedding."""

    def __init__(self, backbone):
        self.sizes: Counter = Counter()
        self.handle = backbone.model.patch_embed.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        x = args[0]
        self.sizes[tuple(x.shape[-2:])] += x.shape[0]

    def describe(self, batch: int) -> Tuple[float, str]:
        total = sum(self.sizes.values()) / batch
        text = " + ".join(f"{n // batch}x{h}" + (f"x{w}" if w != h else "") for (h, w), n in sorted(self.sizes.items()))
        return total, text


@dataclass
class Prepared:
    """A row ready to time: its ``forward`` and what one untimed call measured."""
    label: str
    forward: Callable[[], torch.Tensor]
    out: torch.Tensor
    flops: FlopCount
    passes: float
    backbone_px: str
    memory: PeakMemory
    fields: Dict[str, Any]  # the rest of the row (sizes, parameters)
    times: List[float] = field(default_factory=list)
    backbone_flops: int = 0  # of ``flops``, those spent in the backbone
    # the row's computation on any image batch (the throughput timing); None: no throughput
    run: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    batch_times: List[float] = field(default_factory=list)


def _prepare(label: str, forward: Callable[[], torch.Tensor], backbone, cfg: BenchConfig, resident_bytes: int,
             model: Optional[torch.nn.Module] = None, **fields) -> Prepared:
    """Count FLOPs and backbone passes on one call (also the first warm-up), compile ``model`` in
    place if ``cfg.compile`` (its first call, a warm-up, compiles), finish the warm-up, then take
    the peak memory of one more call."""
    dev = torch.device(cfg.device)
    counter = _PassCounter(backbone)
    try:
        out, flops = count_flops(forward)
    finally:
        counter.handle.remove()
    passes, pass_text = counter.describe(cfg.batch_size)
    mem = PeakMemory(dev)
    if dev.type != "meta":  # the meta device counts FLOPs only (seconds even for ViT-H+ at 1024 px)
        if cfg.compile:
            model.compile()
        for _ in range(max(cfg.warmup - 1, int(cfg.compile))):
            forward()
        with PeakMemory(dev, resident_bytes) as mem:
            forward()
    return Prepared(label, forward, out, flops, passes, pass_text, mem, fields)


def time_rows(rows: Sequence[Prepared], cfg: BenchConfig) -> None:
    """``cfg.runs`` timed calls of every row, round-robin, each round in another order
    (:func:`rotated`; see the module docstring); then, as
    many batches of ``cfg.throughput_batch`` images through every row that has a ``run``, also
    round-robin, after one untimed batch each."""
    dev = torch.device(cfg.device)
    if dev.type == "meta":
        for r in rows:
            r.times = [float("nan")]
        return
    for k in range(cfg.runs):
        for r in rotated(rows, k):
            r.times.extend(timed(r.forward, dev))
    if not cfg.throughput_batch:
        return
    batches = {id(r): _image(cfg, r.fields["input_px"], cfg.throughput_batch) for r in rows if r.run is not None}
    batched = [r for r in rows if id(r) in batches]
    for r in batched:
        r.run(batches[id(r)])
    for k in range(cfg.runs):
        for r in rotated(batched, k):
            r.batch_times.extend(timed(lambda: r.run(batches[id(r)]), dev))


def rotated(rows: Sequence[Prepared], k: int) -> List[Prepared]:
    """Round ``k``'s order: the rows rotated by ``k``, so that no row always runs right after the
    same one (measured: the row right after ``highres``, 30x the work, read ~10% fast against the
    others in a fixed order)."""
    k %= max(1, len(rows))
    return list(rows[k:]) + list(rows[:k])


def _row(p: Prepared, cfg: BenchConfig, backbone) -> Dict[str, Any]:
    q = statistics.quantiles(p.times, n=4, method="inclusive") if len(p.times) > 1 else [p.times[0]] * 3
    per_img = 1.0 / cfg.batch_size
    return {
        "method": p.label, **p.fields,
        "backbone_passes": p.passes, "backbone_px": p.backbone_px,
        "frozen_params": sum(t.numel() for t in backbone.parameters()),
        "gflops": p.flops.total * per_img / 1e9, "gmacs": p.flops.total * per_img / 2e9,
        "backbone_gflops": p.backbone_flops * per_img / 1e9,
        "upsampler_gflops": (p.flops.total - p.backbone_flops) * per_img / 1e9,
        "latency_ms": statistics.median(p.times) * 1e3, "iqr_ms": (q[2] - q[0]) * 1e3,
        "throughput_batch": cfg.throughput_batch if p.batch_times else 0,
        "images_per_s": (cfg.throughput_batch / statistics.median(p.batch_times) if p.batch_times
                         else float("nan")),
        "min_ms": min(p.times) * 1e3, "max_ms": max(p.times) * 1e3, "runs": len(p.times),
        "peak_mib": p.memory.peak_bytes / 2 ** 20, "mem_method": p.memory.method,
        "batch_size": cfg.batch_size, "device": str(torch.device(cfg.device)), "dtype": cfg.dtype,
        "arch": backbone.spec.arch,
    }


def _image(cfg: BenchConfig, px: int, batch: Optional[int] = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(cfg.seed)  # content does not change the cost
    return torch.randn(batch or cfg.batch_size, 3, px, px, generator=gen).to(cfg.device)


def prepare_row(method: MethodSpec, target: int, cfg: BenchConfig, backbone) -> Prepared:
    """One method producing a ``target x target`` token map, ready to time."""
    from ..featurizer import DenseFeaturizer

    dev = torch.device(cfg.device)
    sized = {} if cfg.scale is None else dict(output_size=(target, target))
    model = DenseFeaturizer.build(backbone, method_config(method, cfg.factor), **sized).to(dev).eval()
    up = model.upsampler
    if cfg.scale is None:
        f = up.factor
        if target % f:
            raise ValueError(f"{method.label}: target {target} tokens is not a multiple of its factor {f}")
        grid = target // f
    else:
        check_scale(method.label, up.any_output_size, cfg.scale, up.factor)
        f, grid = float(cfg.scale), cfg.scaled_grid(target)
    px = grid * backbone.patch_size
    image = _image(cfg, px)
    if dev.type != "meta":  # on the meta device data statistics have no values to fit
        prepare_upsampler(up, backbone, image)

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), cfg.autocast():
            return model(images)

    label = method.label if method.path is None else f"{up.method}:{method.label}"
    p = _prepare(label, lambda: run(image), backbone, cfg, module_bytes(model), model=model, target=target, factor=f,
                 input_px=px, trainable_params=sum(t.numel() for t in up.parameters()))
    p.run = None if method.name == REFERENCE else run
    if tuple(p.out.shape[-2:]) != (target, target):
        raise RuntimeError(f"{method.label} returned {tuple(p.out.shape)}, expected a {target}x{target} map")
    p.backbone_flops = p.flops.in_backbone()
    return p


class LastLayer(torch.nn.Module):
    """The backbone row's model: DINOv3's last-layer map, as a module (what ``--compile`` compiles)."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.last_layer_map(images)


def check_scale(label: str, any_output_size: bool, scale: float, factor: Optional[int] = None) -> None:
    """Refuse a method that cannot give ``scale`` x its token grid (it gives ``factor`` x only)."""
    if any_output_size or (factor is not None and float(scale) == factor):
        return
    raise ValueError(f"{label} upsamples by {f'its factor {factor}' if factor else 'an integer factor'} only, not by "
                     f"{float(scale):g}; a non-integer scale needs a method with any output size (e.g. bilinear, "
                     f"anyup, jafar, loftup)")


def prepare_backbone_row(px: int, target: int, cfg: BenchConfig, backbone, label: str = BACKBONE) -> Prepared:
    """DINOv3 alone on the ``px`` image (its last layer): what every upsampler row adds to (``label``
    ``backbone``), or, at the output's resolution, the ``highres`` reference of a non-integer scale."""
    image = _image(cfg, px)

    model = LastLayer(backbone)

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), cfg.autocast():
            return model(images)

    # the floor: factor 1, no upsampling; the reference gives the target from the scaled rows' input size
    fields = (dict(factor=1, input_px=px) if label == BACKBONE
              else dict(factor=float(cfg.scale), input_px=cfg.scaled_grid(target) * backbone.patch_size))
    p = _prepare(label, lambda: run(image), backbone, cfg, module_bytes(backbone), model=model, target=target,
                 trainable_params=0, **fields)
    p.run = run if label == BACKBONE else None
    p.backbone_flops = p.flops.total
    return p


def measure_row(method: MethodSpec, target: int, cfg: BenchConfig, backbone=None) -> Dict[str, Any]:
    """One method producing a ``target x target`` token map, measured alone; a flat row dict."""
    backbone = backbone if backbone is not None else build_backbone(cfg)
    p = prepare_row(method, target, cfg, backbone)
    time_rows([p], cfg)
    return _row(p, cfg, backbone)


def measure_backbone_row(px: int, target: int, cfg: BenchConfig, backbone=None, label: str = BACKBONE
                         ) -> Dict[str, Any]:
    """DINOv3 alone on the ``px`` image, measured alone; a flat row dict."""
    backbone = backbone if backbone is not None else build_backbone(cfg)
    p = prepare_backbone_row(px, target, cfg, backbone, label)
    time_rows([p], cfg)
    return _row(p, cfg, backbone)


def measure_reference_row(px: int, target: int, cfg: BenchConfig, backbone=None) -> Dict[str, Any]:
    """``highres`` at a non-integer scale: DINOv3 alone at the output's resolution ``px``, measured alone."""
    return measure_backbone_row(px, target, cfg, backbone, REFERENCE)


def _isolated(args) -> Dict[str, Any]:
    fn, *rest = args
    configure_allocator(rest[-1])
    torch.manual_seed(rest[-1].seed)
    return fn(*rest)


def configure_allocator(cfg: BenchConfig) -> bool:
    """Apply ``cfg.keep_freed_memory`` to this process; whether freed memory is kept."""
    from ..common.allocator import keep_freed_memory

    return cfg.keep_freed_memory and keep_freed_memory()


def add_ratios(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per target size: ``flop_ratio`` and ``speedup`` (highres / row), and the overhead over the
    backbone alone at the row's input size, in percent (``flop_overhead_pct``, ``latency_overhead_pct``)."""
    ref = {r["target"]: r for r in rows if r["method"] == REFERENCE}
    floor = {(r["target"], r["input_px"]): r for r in rows if r["method"] == BACKBONE}
    nan = float("nan")
    for r in rows:
        h, b = ref.get(r["target"]), floor.get((r["target"], r["input_px"]))
        r["flop_ratio"] = h["gflops"] / r["gflops"] if h and r["gflops"] else nan
        r["speedup"] = h["latency_ms"] / r["latency_ms"] if h and r["latency_ms"] else nan
        r["flop_overhead_pct"] = 100 * (r["gflops"] / b["gflops"] - 1) if b and b["gflops"] else nan
        r["latency_overhead_pct"] = 100 * (r["latency_ms"] / b["latency_ms"] - 1) if b and b["latency_ms"] else nan
    return rows


def run_benchmark(methods: Sequence[MethodSpec], cfg: BenchConfig, sizes: Iterable[int] = (64,),
                  isolate: bool = False, log: Optional[Callable[[str], None]] = None) -> List[Dict[str, Any]]:
    """Rows for ``highres``, ``backbone`` (at every input size the methods use) and every method,
    at every target size (tokens per side). The rows of one target are timed round-robin
    (:func:`time_rows`); with ``isolate`` every row runs alone in a fresh process instead."""
    methods = list(methods)
    if not any(m.path is None and m.name == REFERENCE and not m.options for m in methods):
        methods.insert(0, MethodSpec(REFERENCE))
    check_methods(methods)
    if cfg.scale is not None:  # before any timing: every target and every registered method
        for t in sizes:
            cfg.scaled_grid(int(t))
        for m in methods:
            if m.path is None and m.name != REFERENCE:
                check_scale(m.label, UPSAMPLERS[m.name].any_output_size, cfg.scale)
    configure_allocator(cfg)
    rows: List[Dict[str, Any]] = []
    if isolate:
        import multiprocessing as mp

        def measure(fn, *args) -> Dict[str, Any]:
            with mp.get_context("spawn").Pool(1) as pool:
                return pool.map(_isolated, [(fn, *args, cfg)])[0]
    backbone = None if isolate else build_backbone(cfg)
    for target in sorted(set(int(s) for s in sizes)):
        floors, prepared = set(), []
        for m in methods:
            if log:
                log(f"[benchmark] {m.label} -> {target}x{target} tokens")
            if m.name == REFERENCE and cfg.scale is not None:  # DINOv3 at the output's resolution
                px = target * PATCH_SIZE
                p = (measure(measure_reference_row, px, target) if isolate
                     else prepare_backbone_row(px, target, cfg, backbone, REFERENCE))
                prepared.append(p)
                continue
            p = measure(measure_row, m, target) if isolate else prepare_row(m, target, cfg, backbone)
            px = p["input_px"] if isolate else p.fields["input_px"]
            if m.name != REFERENCE and px not in floors:
                floors.add(px)
                if log:
                    log(f"[benchmark] DINOv3 alone at {px} px")
                prepared.append(measure(measure_backbone_row, px, target) if isolate
                                else prepare_backbone_row(px, target, cfg, backbone))
            prepared.append(p)
        if not isolate:
            if log:
                log(f"[benchmark] timing {len(prepared)} rows round-robin, {cfg.runs} runs each")
            time_rows(prepared, cfg)
            prepared = [_row(p, cfg, backbone) for p in prepared]
            if cfg.device.startswith("cuda"):
                torch.cuda.empty_cache()
        rows.extend(prepared)
    return add_ratios(rows)
