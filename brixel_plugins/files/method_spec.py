"""An upsampler named on a command line: a registered name with options, or a weight file.

``lift``, ``lift:factor=2`` (options as Python literals) or ``path/to/upsampler.safetensors``:
what ``tools/benchmark.py --methods`` and ``tools/visualize.py --methods`` take, parsed, checked and
built here for both.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..upsamplers import UPSAMPLERS, Upsampler, UpsamplerConfig, list_upsamplers
from .upsampler_file import upsampler_from_config


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


def method_config(method: MethodSpec, factor: int) -> UpsamplerConfig:
    """The upsampler config of ``method`` at ``factor``: a weight file as saved; a registered name
    at ``factor`` unless its options say otherwise or the method has a fixed factor (BRIXEL: 4)."""
    if method.path is not None:
        return method.path
    cfg = {"type": method.name, **method.options}
    if UPSAMPLERS[method.name].fixed_factor is None:
        cfg.setdefault("factor", factor)
    return cfg


def build_method(method: MethodSpec, spec, factor: int) -> Upsampler:
    """Build the upsampler of ``method`` (see :func:`method_config`) for backbone ``spec``."""
    return upsampler_from_config(method_config(method, factor), spec)


@torch.no_grad()
def prepare_upsampler(up: Upsampler, backbone, image: torch.Tensor) -> None:
    """Give an untrained upsampler the data statistics it must have before it runs.

    FeatSharp's PHI-S normaliser refuses to run unfitted; a freshly built one is fitted on the
    backbone's features of ``image`` (B,3,H,W). Cost does not depend on the values.
    """
    if not up.calibrated:
        up.calibrate(backbone.last_layer_map(image))
        up.finish_calibration()
