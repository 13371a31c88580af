"""DINOv3 weight files: Meta's official layout, timm's layout, hash suffixes, clear refusals.

Meta's release ships flat state dicts (``dinov3_vits16_pretrain_lvd1689m-08c60483.pth``)
in its own key layout; timm ships the same tensors renamed. ``meta_to_timm`` delegates to
timm's own converter (one source of truth for the renames), ``timm_to_meta`` is its inverse
(used to write Meta-layout files, e.g. in tests).
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

StateDict = Dict[str, torch.Tensor]

# torch.hub's convention: the suffix is the first hex digits of the file's sha256.
HASH_SUFFIX = re.compile(r"-([a-f0-9]{8,})\.(?:pth|pt|safetensors)$")


class WeightFileError(ValueError):
    """A weight file is missing, unreadable, corrupt or made for another model."""


_sha256_cache: Dict[Tuple[str, int, int], str] = {}


def file_sha256(path: os.PathLike | str) -> str:
    """The sha256 (hex) of a file, computed once per process for a given (path, size, mtime):
    the hash-suffix check and the training records of checkpoints read a ViT-L file once."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _sha256_cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _sha256_cache[key] = h.hexdigest()
    return _sha256_cache[key]


def sha256_prefix(path: Path, n: int) -> str:
    return file_sha256(path)[:n]


def verify_hash_suffix(path: Path) -> Optional[str]:
    """If the file name carries a hash suffix (``...-08c60483.pth``), check it. Returns it."""
    m = HASH_SUFFIX.search(path.name)
    if not m:
        return None
    if not path.is_file():  # the project's "not found", not the hash check's raw FileNotFoundError
        raise WeightFileError(f"weight file not found: {path}")
    want = m.group(1)
    got = sha256_prefix(path, len(want))
    if got != want:
        raise WeightFileError(
            f"{path}: sha256 of the file starts with {got}, but its name says {want}: the file is "
            f"corrupt, truncated or renamed. Download it again (or rename it without the suffix "
            f"if you really mean to use a different file)."
        )
    return want


def read_state_dict(path: os.PathLike | str) -> StateDict:
    """Read a flat tensor dict from ``.pth``/``.pt`` or ``.safetensors``, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f"weight file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise WeightFileError(f"{path} is empty (0 bytes): an interrupted download or copy? Fetch it again.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            # weights_only: a weight file is data, never code.
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch/safetensors raise a variety of types for bad bytes
        first_line = (str(e).strip().splitlines() or ["(no message)"])[0][:200]
        raise WeightFileError(
            f"could not read {path} ({size} bytes): {type(e).__name__}: {first_line}. "
            f"The file is probably truncated or corrupt (or not a weight file)."
        ) from e
    for key in ("model_ema", "model", "model_state", "module", "state_dict", "teacher"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightFileError(f"{path} does not hold a flat dict of tensors (found {type(sd).__name__})")
    return sd


def check_shapes(sd: StateDict, expected: StateDict, path: os.PathLike | str, model: str) -> None:
    """Refuse a file whose tensors do not have the shapes of ``expected`` (the model's own state),
    naming the first few that differ, instead of torch's size-mismatch RuntimeError."""
    wrong = [(k, tuple(v.shape), tuple(expected[k].shape)) for k, v in sd.items()
             if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        shown = "; ".join(f"{k}: {got} in the file, {want} expected" for k, got, want in wrong[:3])
        raise WeightFileError(f"{path} does not fit {model}: {len(wrong)} tensor(s) have the wrong shape "
                              f"({shown}{'; ...' if len(wrong) > 3 else ''}). The file is for another model "
                              f"or damaged.")


def is_meta_layout(sd: StateDict) -> bool:
    return "storage_tokens" in sd or any(k.endswith("ls1.gamma") for k in sd)


def describe_state_dict(sd: StateDict) -> dict:
    """What a DINOv3-like state dict looks like: dim, depth, FFN kind, layout."""
    w = sd.get("patch_embed.proj.weight")
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    swiglu = any(re.search(r"mlp\.(w1|w12|fc1_g)\.", k) for k in sd)
    return {
        "layout": "meta" if is_meta_layout(sd) else "timm",
        "embed_dim": int(w.shape[0]) if w is not None else None,
        "patch_size": int(w.shape[-1]) if w is not None else None,
        "depth": max(blocks) + 1 if blocks else 0,
        "ffn": "swiglu" if swiglu else "mlp",
        "num_tensors": len(sd),
    }


def meta_to_timm(sd: StateDict, model: torch.nn.Module) -> StateDict:
    """Convert Meta's official key layout to timm's Eva layout (timm's own converter)."""
    from timm.models.eva import checkpoint_filter_fn

    return checkpoint_filter_fn(sd, model)


def timm_to_meta(sd: StateDict, periods: Optional[torch.Tensor] = None) -> StateDict:
    """Inverse of :func:`meta_to_timm`: write timm Eva DINOv3 tensors in Meta's key layout.

    q/v biases are merged back into ``qkv.bias`` with a zero k part, and the ``bias_mask``
    buffer Meta stores is re-created, so timm's converter reads the result back unchanged.
    """
    out: StateDict = {}
    for k, v in sd.items():
        if k.startswith("rope") or k.startswith("head") or k.startswith("fc_norm"):
            continue
        if k.endswith("attn.q_bias"):
            vb = sd[k.replace("q_bias", "v_bias")]
            out[k.replace("q_bias", "qkv.bias")] = torch.cat([v, torch.zeros_like(v), vb])
            mask = torch.ones(3 * v.numel(), dtype=v.dtype)
            mask[v.numel(): 2 * v.numel()] = 0
            out[k.replace("q_bias", "qkv.bias_mask")] = mask
            continue
        if k.endswith("attn.v_bias"):
            continue
        nk = (k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma")
              .replace("gamma_2", "ls2.gamma").replace("mlp.fc1_g", "mlp.w1")
              .replace("mlp.fc1_x", "mlp.w2"))
        if ".mlp.fc2" in nk and any(".mlp.fc1_g" in key for key in sd):
            nk = nk.replace("mlp.fc2", "mlp.w3")  # SwiGLU output projection
        out[nk] = v
    out["mask_token"] = torch.zeros(1, out["cls_token"].shape[-1])
    if periods is not None:
        out["rope_embed.periods"] = periods
    return out
