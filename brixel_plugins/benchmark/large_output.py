"""The large-output memory line: one upsampler alone, from the token map of an ``side`` px image to a
``side x side`` output (16x the token grid), its peak memory beyond the output tensor itself.

What AnyUp's users hit (out of memory at 2048 x 2048, its tracker's issues 11 and 22): attention
over output x keys grows with the product. The line measures, in a fresh process (CPU: its peak
resident set owes nothing to earlier rows), inference (no autograd) on a random (1, D, side/16,
side/16) map and a random ``side`` px image: the peak (:class:`.memory.PeakMemory`, weights
included) minus the output's own bytes, and the wall time of that one call. Only methods with any
output size (``any_output_size``) give 16x: the others are refused with the reason.
"""
from __future__ import annotations

import multiprocessing as mp
from typing import Any, Dict

import torch

from ..files.method_spec import MethodSpec, build_method
from .memory import PeakMemory, module_bytes
from .timing import timed


def _measure(method: MethodSpec, backbone_spec, side: int, device: str, seed: int) -> Dict[str, Any]:
    dev = torch.device(device)
    torch.manual_seed(seed)
    up = build_method(method, backbone_spec, 4).to(dev).eval()
    grid = side // backbone_spec.patch_size
    feats = torch.randn(1, backbone_spec.embed_dim, grid, grid, device=dev)
    image = torch.randn(1, 3, side, side, device=dev)
    layers = {i: feats for i in up.layer_indices}
    outputs = []
    with torch.no_grad(), PeakMemory(dev, module_bytes(up)) as mem:
        seconds = timed(lambda: outputs.append(up(image, layers, image_hr=image, output_size=(side, side))), dev)
    out = outputs.pop()
    if tuple(out.shape) != (1, backbone_spec.embed_dim, side, side):
        raise RuntimeError(f"{method.label} returned {tuple(out.shape)}, expected (1, D, {side}, {side})")
    out_bytes = out.numel() * out.element_size()
    return dict(method=method.label, side=side, feature_shape=tuple(feats.shape), device=str(dev),
                peak_bytes=mem.peak_bytes, output_bytes=out_bytes, beyond_output_bytes=mem.peak_bytes - out_bytes,
                seconds=seconds[0], mem_method=mem.method)


def _child(args):
    return _measure(*args)


def check_large_output(method: MethodSpec, backbone_spec, side: int) -> None:
    """Refuse a side that is not a whole token grid, or a method that gives only its factor x the grid."""
    p = backbone_spec.patch_size
    if side % p:
        raise ValueError(f"the large-output side must be a multiple of {p} px (one token each), got {side}")
    up = build_method(method, backbone_spec, 4)
    if not up.any_output_size and up.factor != p:
        raise ValueError(f"{method.label} gives only {up.factor}x its token grid, not a {side}x{side} output from "
                         f"{side // p}x{side // p} tokens; the large-output line needs a method with any output size")


def large_output_row(method: MethodSpec, backbone_spec, side: int = 2048, device: str = "cpu", seed: int = 0,
                     isolate: bool = True) -> Dict[str, Any]:
    """``method`` (an upsampler with any output size) from a (1, D, side/16, side/16) map to ``side x side``:
    ``peak_bytes``, ``output_bytes``, ``beyond_output_bytes``, ``seconds``; in a fresh process with ``isolate``."""
    check_large_output(method, backbone_spec, side)
    args = (method, backbone_spec, side, device, seed)
    if not isolate:
        return _measure(*args)
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.map(_child, [args])[0]


def format_large_output(row: Dict[str, Any]) -> str:
    """One line: peak beyond the output, the output, the time."""
    g = 2 ** 30
    return (f"{row['side']}x{row['side']} from {row['feature_shape']} on {row['device']}: {row['method']} peak "
            f"{row['beyond_output_bytes'] / g:.2f} GiB beyond the {row['output_bytes'] / g:.2f} GiB output "
            f"({row['peak_bytes'] / g:.2f} GiB in all, {row['mem_method']}), {row['seconds']:.1f} s")
