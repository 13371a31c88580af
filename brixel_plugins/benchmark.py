"""Cost of a dense DINOv3 map: the backbone at high resolution vs low resolution + an upsampler.

For a target feature density (default 64x64 tokens) every row produces that map from the same
low-resolution image (``target / factor * 16`` px, 256 px by default):

- ``highres``: DINOv3 on the image enlarged ``factor`` times (1024 px for 64x64): the reference.
- every other method: DINOv3 at the low resolution (the layers the method reads) + the
  upsampler at the factor that reaches the target (FeatSharp runs 1 + factor^2 backbone
  passes itself; the ``backbone passes`` column shows them).

Per row: parameters (trainable = upsampler, frozen = backbone), FLOPs, latency (median and
inter-quartile range of N timed runs after W warm-ups), peak memory, and FLOP / latency
ratios against the ``highres`` row. :func:`run_benchmark` sweeps several target densities
to show the backbone's quadratic (attention: quartic in the side) growth against the
upsamplers' linear growth in the number of output tokens.

FLOPs
-----
Counted with :class:`torch.utils.flop_counter.FlopCounterMode` on one real forward, so the
number is a property of the model and input size, not of the machine. Conventions:

- FlopCounterMode counts a multiply-add as **2 FLOPs** (matmul, convolution, attention).
  Many papers and tools (fvcore, thop, ptflops) report MACs (multiply-adds) and call them
  FLOPs; divide our numbers by 2 to compare with those (``gmacs`` column in the CSV).
- Counted by torch: mm/addmm/bmm/baddbmm (Linear, einsum, matmul), convolutions (incl.
  transposed), and the CUDA SDPA kernels (flash / efficient / cuDNN attention).
- Added here (:data:`EXTRA_FLOPS`), each documented at its function, because they matter for
  these models and torch does not count them: CPU fused attention
  (``_scaled_dot_product_flash_attention_for_cpu``: without it a CPU run would miss all of
  DINOv3's attention), bilinear / bicubic interpolation (2 FLOPs per tap per output value;
  antialiased downsampling has more taps, so that is a lower bound) and ``grid_sample``
  (bilinear: 4 taps, used by deformable attention).
- Not counted (small next to the above for every model here): elementwise ops (add, mul,
  activations, RoPE), normalisations (LayerNorm, BatchNorm, GroupNorm), softmax outside
  fused attention, pooling, padding, indexing and memory copies.

Memory
------
- CUDA: ``torch.cuda.max_memory_allocated`` over the timed runs, models resident (weights +
  activations + workspace), like the BRIXEL release figure.
- CPU: the rise of the process's peak resident set size over the timed runs (Linux: peak
  reset through ``/proc/self/clear_refs`` after returning freed heap to the OS with
  ``malloc_trim``) plus the models' parameter and buffer bytes. Caveats: the allocator may
  reuse pages a previous row freed but kept (an under-estimate), and RSS counts everything
  the process touched (libraries' lazily loaded pages, thread stacks: an over-estimate).
  ``isolate=True`` runs every row in a fresh spawned process to remove the first effect;
  without ``/proc`` it falls back to ``getrusage`` (peak of the whole process life, only
  meaningful with ``isolate``). The ``mem_method`` column says which was used.

Authors' figure vs ours (ViT-S, 64x64 map, batch 1)
-----------------------------------------------------
The BRIXEL release reports DINOv3-1024 200 GFLOPs vs BRIXEL-256 25 GFLOPs (8x). We count:

  ============ ========== ======= ==================================================
  row          GFLOPs     GMACs   of which
  ============ ========== ======= ==================================================
  highres-1024 487        243     88 GMACs linear + patch embed, 155 GMACs attention
  bilinear-256 12.5       6.25    5.6 GMACs linear + patch embed, 0.63 GMACs attention
  lift-256     22.3       11.2    backbone 6.25 + LiFT 4.9 GMACs (two 2x steps)
  brixel-256   20.3       10.1    backbone 6.25 + adapter/head 3.9 GMACs
  ============ ========== ======= ==================================================

Attention over 4101 tokens (1024 px) is 64 % of the high-resolution cost, so the ratio is
24x here. The authors' numbers fit a counter that takes a multiply-add as 2 FLOPs but does
not see fused ``scaled_dot_product_attention`` (module-hook counters such as ptflops / thop /
DeepSpeed's profiler count nn.Linear and nn.Conv2d) and adds elementwise / norm ops: linear +
conv only gives 177 vs 19 GFLOPs (9.3x), close to their 200 vs 25. That is our inference, not
something the release states. Reproduce with ``--device meta`` (FLOPs only, seconds; FeatSharp
must be counted on CPU: it fits PHI-S statistics from data before it runs).
"""
from __future__ import annotations

import ast
import contextlib
import csv
import ctypes
import math
import re
import resource
import statistics
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from .upsamplers import Upsampler, build_upsampler, list_upsamplers

DEFAULT_METHODS = ("bilinear", "jbu", "lift", "featsharp", "brixel")
REFERENCE = "highres"


# --------------------------------------------------------------------------------------------
# method specs
# --------------------------------------------------------------------------------------------
@dataclass
class MethodSpec:
    """A method by registry name with constructor options (``lift:factor=4``), or a weight file."""

    name: str
    options: Dict[str, Any] = field(default_factory=dict)
    path: Optional[str] = None

    @property
    def label(self) -> str:
        if self.path:
            return Path(self.path).name
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.name}({opts})" if opts else self.name


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_kv(text: str, sep: str = ",") -> Dict[str, Any]:
    """``"depth=4,embed_dim=64"`` -> ``{"depth": 4, "embed_dim": 64}`` (values as Python literals)."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(sep))):
        if "=" not in item:
            raise ValueError(f"expected key=value, got {item!r} in {text!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = _value(v.strip())
    return out


def parse_method(text: str) -> MethodSpec:
    """``name``, ``name:key=value:key=value`` or a path to an upsampler ``.safetensors`` file."""
    text = text.strip()
    if text.endswith(".safetensors") or Path(text).is_file():
        return MethodSpec(name="file", path=text)
    name, *opts = text.split(":")
    return MethodSpec(name=name.strip(), options=parse_kv(":".join(opts), sep=":"))


def parse_methods(text: str) -> List[MethodSpec]:
    return [parse_method(t) for t in text.split(",") if t.strip()]


def check_methods(methods: Sequence[MethodSpec]) -> None:
    """Fail before any timing if a method is not registered or a weight file is missing."""

    for m in methods:
        if m.path is not None:
            if not Path(m.path).is_file():
                raise FileNotFoundError(f"upsampler weight file not found: {m.path}")
        elif m.name not in list_upsamplers():
            raise KeyError(f"method {m.name!r} is not a registered upsampler; registered: "
                           f"{', '.join(list_upsamplers())} (or give an upsampler .safetensors file)")


def build_method(method: MethodSpec, spec, factor: int):
    """Build the upsampler of ``method`` at ``factor`` for backbone ``spec``.

    A method whose constructor takes no ``factor`` (fixed-factor models) is built as is and
    used at its own factor; a weight file is used at the factor it was saved with.
    """
    from .io import load_upsampler

    if method.path is not None:
        return load_upsampler(method.path, spec)
    opts = dict(method.options)
    opts.setdefault("factor", factor)
    try:
        return build_upsampler({"type": method.name, **opts}, spec)
    except TypeError as e:
        if "factor" not in str(e) or "factor" in method.options:
            raise
        opts.pop("factor")
        return build_upsampler({"type": method.name, **opts}, spec)


@torch.no_grad()
def prepare_upsampler(up, backbone, image: torch.Tensor) -> None:
    """Give an untrained upsampler the data statistics it must have before it runs.

    FeatSharp's PHI-S normaliser refuses to run unfitted; a freshly built one is fitted on
    the backbone's features of ``image`` (B,3,H,W). Cost does not depend on the values.
    """
    if not up.calibrated:
        up.calibrate(backbone.last_layer(image))
        up.finish_calibration()


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------
def _numel(shape) -> int:
    return math.prod(shape) if shape is not None else 0


def sdpa_cpu_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    """Fused attention: QK^T (B*H*L*S*E MACs) + AV (B*H*L*S*Ev MACs), 2 FLOPs per MAC.
    Same formula torch uses for its CUDA kernels; softmax not counted."""
    b, h, l, e = q
    s, ev = k[-2], v[-1]
    return 2 * b * h * l * s * e + 2 * b * h * l * s * ev


def _taps(n: int) -> Callable:
    def count(*args, out_shape=None, **kwargs) -> int:
        # A weighted sum of n input values per output value: n multiply-adds.
        return 2 * n * _numel(out_shape)

    count.__doc__ = f"{n}-tap interpolation: 2 * {n} FLOPs per output value."
    return count


def _extra_flops() -> Dict[Any, Callable]:
    aten = torch.ops.aten
    table = {
        "_scaled_dot_product_flash_attention_for_cpu": sdpa_cpu_flops,
        "upsample_bilinear2d": _taps(4),
        "_upsample_bilinear2d_aa": _taps(4),
        "upsample_bicubic2d": _taps(16),
        "_upsample_bicubic2d_aa": _taps(16),
        "grid_sampler_2d": _taps(4),
    }
    # Only ops this torch build has; never override torch's own counts.
    from torch.utils.flop_counter import flop_registry

    out = {}
    for name, fn in table.items():
        op = getattr(aten, name, None)
        if op is not None and op not in flop_registry:
            out[op] = fn
    return out


EXTRA_FLOPS = _extra_flops()


@dataclass
class FlopCount:
    total: int
    by_module: Dict[str, int]
    by_op: Dict[str, int]

    def in_backbone(self, prefix: str = "DenseFeaturizer.backbone.model") -> int:
        """FLOPs inside the timm model's top-level submodules (patch_embed, blocks.N, norm).

        Summed over those children rather than read at ``prefix``: FrozenDINOv3 reaches
        the timm model through ``forward_intermediates``, which fires no module hooks, so
        only the children carry names (and FeatSharp / highres call it from the upsampler).
        """
        top = re.compile(re.escape(prefix) + r"\.(blocks\.\d+|[^.]+)$")
        return sum(n for k, n in self.by_module.items() if top.match(k) and k != prefix + ".blocks")


def count_flops(fn: Callable[[], Any]) -> Tuple[Any, FlopCount]:
    """Run ``fn()`` once under FlopCounterMode (+ :data:`EXTRA_FLOPS`); return its output and counts."""
    from torch.utils.flop_counter import FlopCounterMode

    mode = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOPS)
    with mode:
        out = fn()
    counts = mode.get_flop_counts()
    by_module = {k: int(sum(v.values())) for k, v in counts.items()}
    by_op = {str(op): int(n) for op, n in counts.get("Global", {}).items()}
    return out, FlopCount(int(mode.get_total_flops()), by_module, by_op)


# --------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------
def _proc_status_kib(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Return freed heap to the OS, then reset VmHWM to the current RSS (Linux >= 4.0)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager measuring peak memory (bytes) of the block; see the module docstring."""

    def __init__(self, device: torch.device, resident_bytes: int = 0):
        self.device = device
        self.resident_bytes = resident_bytes
        self.peak_bytes = float("nan")
        self.method = "none"

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = "cuda_max_allocated"
        elif _reset_peak_rss() and _proc_status_kib("VmRSS") is not None:
            self._base = _proc_status_kib("VmRSS")
            self.method = "rss_peak_delta+weights"
        else:
            self._base = 0
            self.method = "ru_maxrss(process)"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("rss"):
            self.peak_bytes = (_proc_status_kib("VmHWM") - self._base) * 1024 + self.resident_bytes
        else:
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def module_bytes(*modules: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])


# --------------------------------------------------------------------------------------------
# one row
# --------------------------------------------------------------------------------------------
@dataclass
class BenchConfig:
    arch: str = "vits16"
    weights: Optional[str] = None
    backbone_overrides: Dict[str, Any] = field(default_factory=dict)
    factor: int = 4
    device: str = "cpu"
    dtype: str = "fp32"
    batch_size: int = 1
    warmup: int = 2
    runs: int = 10
    seed: int = 0

    def __post_init__(self):
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"dtype must be fp32 or bf16, got {self.dtype!r}")
        if self.runs < 1 or self.warmup < 0 or self.batch_size < 1:
            raise ValueError("need runs >= 1, warmup >= 0, batch_size >= 1")


def build_backbone(cfg: BenchConfig):
    from .backbones import FrozenDINOv3

    dev = torch.device(cfg.device)
    amp = "bf16" if cfg.dtype == "bf16" and dev.type == "cuda" else None
    with warnings.catch_warnings():
        if cfg.weights is None:  # random init is fine for timing; say so once in the CLI instead
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


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measure_row(method: MethodSpec, target: int, cfg: BenchConfig, backbone=None) -> Dict[str, Any]:
    """Measure one method producing a ``target x target`` token map; returns a flat row dict."""
    from .featurizer import DenseFeaturizer

    dev = torch.device(cfg.device)
    backbone = backbone if backbone is not None else build_backbone(cfg)
    up = build_method(method, backbone.spec, cfg.factor).to(dev).eval()
    f = up.factor
    if target % f:
        raise ValueError(f"{method.label}: target {target} tokens is not a multiple of its factor {f}")
    px = target // f * backbone.patch_size
    model = DenseFeaturizer(backbone, up).eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    image = torch.randn(cfg.batch_size, 3, px, px, generator=gen).to(dev)  # content does not change cost
    if dev.type != "meta":
        prepare_upsampler(up, backbone, image)
    elif type(up).calibrated is not Upsampler.calibrated:
        raise ValueError(f"{method.label} fits statistics from data before it runs (PHI-S), which the meta "
                         f"device cannot do: count its FLOPs with --device cpu")

    amp = (torch.autocast(dev.type, dtype=torch.bfloat16) if cfg.dtype == "bf16" and dev.type in ("cpu", "cuda")
           else contextlib.nullcontext())

    def forward():
        with torch.no_grad(), amp:
            return model(image)

    counter = _PassCounter(backbone)
    try:
        out, flops = count_flops(forward)  # also the first warm-up
    finally:
        counter.handle.remove()
    passes, pass_text = counter.describe(cfg.batch_size)
    if tuple(out.shape[-2:]) != (target, target):
        raise RuntimeError(f"{method.label} returned {tuple(out.shape)}, expected a {target}x{target} map")
    times, mem = [float("nan")], PeakMemory(dev)
    if dev.type != "meta":  # the meta device counts FLOPs only (seconds even for ViT-H+ at 1024 px)
        for _ in range(max(cfg.warmup - 1, 0)):
            forward()
        times = []
        with PeakMemory(dev, module_bytes(model)) as mem:
            for _ in range(cfg.runs):
                _sync(dev)
                t0 = time.perf_counter()
                forward()
                _sync(dev)
                times.append(time.perf_counter() - t0)
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else [times[0]] * 3
    bb = flops.in_backbone()
    per_img = 1.0 / cfg.batch_size
    return {
        "method": method.label if method.path is None else f"{up.method}:{method.label}",
        "target": target,
        "factor": f,
        "input_px": px,
        "backbone_passes": passes,
        "backbone_px": pass_text,
        "trainable_params": sum(p.numel() for p in up.parameters()),
        "frozen_params": sum(p.numel() for p in backbone.parameters()),
        "gflops": flops.total * per_img / 1e9,
        "gmacs": flops.total * per_img / 2e9,
        "backbone_gflops": bb * per_img / 1e9,
        "upsampler_gflops": (flops.total - bb) * per_img / 1e9,
        "latency_ms": statistics.median(times) * 1e3,
        "iqr_ms": (q[2] - q[0]) * 1e3,
        "min_ms": min(times) * 1e3,
        "max_ms": max(times) * 1e3,
        "runs": cfg.runs,
        "peak_mib": mem.peak_bytes / 2 ** 20,
        "mem_method": mem.method,
        "batch_size": cfg.batch_size,
        "device": str(dev),
        "dtype": cfg.dtype,
        "arch": backbone.spec.arch,
    }


def _isolated_row(args) -> Dict[str, Any]:
    method, target, cfg = args
    torch.manual_seed(cfg.seed)
    return measure_row(method, target, cfg)


def add_ratios(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Add ``flop_ratio`` and ``speedup`` (highres / row) per target size."""
    ref = {r["target"]: r for r in rows if r["method"] == REFERENCE}
    for r in rows:
        h = ref.get(r["target"])
        r["flop_ratio"] = h["gflops"] / r["gflops"] if h and r["gflops"] else float("nan")
        r["speedup"] = h["latency_ms"] / r["latency_ms"] if h and r["latency_ms"] else float("nan")
    return rows


def run_benchmark(methods: Sequence[MethodSpec], cfg: BenchConfig, sizes: Iterable[int] = (64,),
                  isolate: bool = False, log: Optional[Callable[[str], None]] = None) -> List[Dict[str, Any]]:
    """Rows for ``highres`` + every method at every target size (tokens per side)."""
    methods = list(methods)
    if not any(m.path is None and m.name == REFERENCE and not m.options for m in methods):
        methods.insert(0, MethodSpec(REFERENCE))
    check_methods(methods)
    rows: List[Dict[str, Any]] = []
    backbone = None if isolate else build_backbone(cfg)
    for target in sorted(set(int(s) for s in sizes)):
        for m in methods:
            if log:
                log(f"[benchmark] {m.label} -> {target}x{target} tokens")
            if isolate:
                import multiprocessing as mp

                with mp.get_context("spawn").Pool(1) as pool:
                    row = pool.map(_isolated_row, [(m, target, cfg)])[0]
            else:
                row = measure_row(m, target, cfg, backbone)
                if cfg.device.startswith("cuda"):
                    torch.cuda.empty_cache()
            rows.append(row)
    return add_ratios(rows)


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
CSV_FIELDS = ("method", "target", "factor", "input_px", "backbone_passes", "backbone_px", "trainable_params",
              "frozen_params", "gflops", "gmacs", "backbone_gflops", "upsampler_gflops", "flop_ratio",
              "latency_ms", "iqr_ms", "min_ms", "max_ms", "runs", "speedup", "peak_mib", "mem_method",
              "batch_size", "device", "dtype", "arch")


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    head = ["method", "factor", "input px", "backbone passes", "trainable M", "frozen M", "GFLOPs",
            "highres / row FLOPs", "latency ms (median)", "IQR ms", "speed-up", "peak MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], r["factor"], r["input_px"], r["backbone_px"], f"{r['trainable_params'] / 1e6:.3f}",
                 f"{r['frozen_params'] / 1e6:.2f}", f"{r['gflops']:.3g}", f"{r['flop_ratio']:.1f}x",
                 f"{r['latency_ms']:.1f}", f"{r['iqr_ms']:.1f}", f"{r['speedup']:.2f}x", f"{r['peak_mib']:.0f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def plot_sweep(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """GFLOPs and latency against the target density (tokens per side), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, ax, title in (("gflops", axes[0], "GFLOPs per image"), ("latency_ms", axes[1], "latency ms (median)")):
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
