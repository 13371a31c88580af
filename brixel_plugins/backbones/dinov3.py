"""Frozen DINOv3 (timm's Eva implementation) that returns normalised intermediate maps.

Every consumer in the project (upsamplers, distillation teacher, MMSeg/Detectron2 adapters)
gets its DINOv3 features from :class:`FrozenDINOv3`.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .weights import (
    WeightFileError,
    check_shapes,
    describe_state_dict,
    is_meta_layout,
    meta_to_timm,
    read_state_dict,
    verify_hash_suffix,
)

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PATCH_SIZE = 16


@dataclass(frozen=True)
class ArchInfo:
    timm_name: str
    embed_dim: int
    depth: int
    num_heads: int
    ffn: str  # "mlp" or "swiglu"
    hash_suffix: Optional[str] = None  # of Meta's official lvd1689m file


# Meta's names. The *_qkvb timm variants keep the q/v biases Meta's files carry (the 7B has none).
ARCHS: Dict[str, ArchInfo] = {
    "vits16": ArchInfo("vit_small_patch16_dinov3_qkvb", 384, 12, 6, "mlp", "08c60483"),
    "vits16plus": ArchInfo("vit_small_plus_patch16_dinov3_qkvb", 384, 12, 6, "swiglu"),
    "vitb16": ArchInfo("vit_base_patch16_dinov3_qkvb", 768, 12, 12, "mlp", "73cec8be"),
    "vitl16": ArchInfo("vit_large_patch16_dinov3_qkvb", 1024, 24, 16, "mlp", "8aa4cbdd"),
    "vith16plus": ArchInfo("vit_huge_plus_patch16_dinov3_qkvb", 1280, 32, 20, "swiglu", "7c1da9a5"),
    "vit7b16": ArchInfo("vit_7b_patch16_dinov3", 4096, 40, 32, "swiglu"),
}


@dataclass(frozen=True)
class BackboneSpec:
    """What an upsampler needs to know about its backbone (and what weight files record)."""

    arch: str
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = PATCH_SIZE

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def last_layer(self) -> int:
        return self.depth - 1


def check_image_batch(x: torch.Tensor, dtype: Optional[torch.dtype] = None, finite: bool = False) -> None:
    """Refuse what is not a non-empty (B, 3, H, W) floating-point image batch (of ``dtype`` if given;
    with ``finite``, also one holding NaN/Inf: that costs one pass over the pixels)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected an image batch as a torch.Tensor (B, 3, H, W), got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected an image batch of shape (B, 3, H, W), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"empty image batch (shape {tuple(x.shape)}): there is no image to compute features of")
    if not x.is_floating_point():
        raise ValueError(f"image batch has dtype {x.dtype}; expected ImageNet-normalised float images "
                         f"(for uint8 pixels use brixel_plugins.images.normalise(x))")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"image batch has dtype {x.dtype}, but the backbone computes in {dtype}; convert it "
                         f"with x.to({dtype}) (for mixed precision use torch.autocast, not half inputs)")
    if finite and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"image batch holds {bad} NaN/Inf values (of {x.numel()}); its features would be NaN")


def check_image_size(x: torch.Tensor, multiple: int = PATCH_SIZE, dtype: Optional[torch.dtype] = None,
                     finite: bool = False) -> Tuple[int, int]:
    """Validate an image batch (B, 3, H, W) (see :func:`check_image_batch`) with H, W multiples of
    ``multiple``; return the token grid."""
    check_image_batch(x, dtype, finite)
    h, w = x.shape[-2:]
    if h % multiple or w % multiple or h == 0 or w == 0:
        raise ValueError(
            f"image size {h}x{w} is not a multiple of {multiple} on both sides; resize or pad to "
            f"e.g. {max(multiple, round(h / multiple) * multiple)}x{max(multiple, round(w / multiple) * multiple)}"
        )
    return h // PATCH_SIZE, w // PATCH_SIZE


def arch_info(arch: str) -> ArchInfo:
    if arch not in ARCHS:
        raise KeyError(f"unknown DINOv3 arch {arch!r}; choose one of {sorted(ARCHS)}")
    return ARCHS[arch]


class FrozenDINOv3(nn.Module):
    """A frozen DINOv3 ViT/16 that returns normalised patch-token maps of chosen layers.

    Args:
        arch: Meta's name: ``vits16``, ``vits16plus``, ``vitb16``, ``vitl16``, ``vith16plus``, ``vit7b16``.
        weights: Meta's official ``.pth`` or a timm-layout ``.pth``/``.safetensors``. ``None``
            gives a random init (with a warning: the features are meaningless for real use),
            drawn from ``init_seed``.
        init_seed: the seed of a random init (``weights=None``; ignored with a file). The draw
            uses its own RNG stream (the global RNG is left as it was), so the same seed gives the
            same backbone in every process and build on one device type (the adapters build on
            the CPU); checkpoints record the seed and a digest of the drawn tensors
            (:attr:`init_digest`), so a checkpoint is refused under another random backbone, as
            under another weight file. Default 0: every random backbone is reproducible.
        device: where to build; ``"meta"`` builds without allocating memory (shape checks of 7B).
        autocast: ``"bf16"`` runs the forward under bfloat16 autocast on CUDA (ignored on CPU).
        check_finite: refuse input batches holding NaN/Inf (one pass over the pixels per call;
            False skips it in loops whose inputs are known to be finite).
        **overrides: timm constructor overrides (``depth``, ``embed_dim``, ``num_heads``) for
            tiny test models; a weight file must match the resulting shapes.

    Shapes: ``layers(x (B,3,H,W), [i, ...]) -> {i: (B, D, H/16, W/16)}`` (float32).
    """

    def __init__(self, arch: str = "vits16", weights: Optional[Union[str, Path]] = None, *, init_seed: int = 0,
                 device: Optional[Union[str, torch.device]] = None, autocast: Optional[str] = None,
                 check_finite: bool = True, **overrides):
        super().__init__()
        import timm

        info = arch_info(arch)
        if autocast not in (None, "bf16"):
            raise ValueError(f"autocast must be None or 'bf16', got {autocast!r}")
        self.autocast = autocast
        self.check_finite = bool(check_finite)
        if isinstance(init_seed, bool) or not isinstance(init_seed, int):
            raise ValueError(f"init_seed must be an int (the seed of a random init), got {init_seed!r}")
        random_init = weights is None and str(device) != "meta"
        build_on = torch.device(device or "cpu")
        with self._seeded(build_on, init_seed if random_init else None), build_on:
            self.model = timm.create_model(info.timm_name, pretrained=False, num_classes=0, **overrides)
        m = self.model
        self.spec = BackboneSpec(arch, m.embed_dim, len(m.blocks), m.blocks[0].attn.num_heads)
        self.weights = str(weights) if weights is not None else None
        self.init_seed: Optional[int] = init_seed if random_init else None
        self._init_digest: Optional[str] = None
        if weights is not None:
            self.load_weights(weights)
        elif random_init:
            warnings.warn(
                f"FrozenDINOv3({arch}): no weight file given, using a RANDOM init; its features are meaningless "
                f"for real use (drawn from init_seed={init_seed}, the same in every run). Pass weights=<path to Meta's "
                f"{info.timm_name.split('_qkvb')[0]} file> (e.g. dinov3_{arch}_pretrain_lvd1689m-*.pth).",
                UserWarning, stacklevel=2)
        self.model.requires_grad_(False)
        super().train(False)

    @staticmethod
    @contextlib.contextmanager
    def _seeded(device: torch.device, seed: Optional[int]):
        """Draw from ``seed`` on a forked RNG: the same tensors in every process (on one device
        type: CPU and CUDA generators differ; the adapters build on the CPU), and the caller's
        RNG stream is not consumed."""
        if seed is None:
            yield
            return
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.random.default_generator.manual_seed(seed)  # torch.manual_seed would reseed every GPU
            for index in cuda:
                torch.cuda.default_generators[index].manual_seed(seed)
            yield

    @property
    def init_digest(self) -> Optional[str]:
        """sha256 of a random init's tensors (None with a weight file), computed once when first
        asked for (a checkpoint's record): it tells two draws apart even from the same seed."""
        if self.init_seed is not None and self._init_digest is None:
            self._init_digest = tensor_digest(self.model.state_dict())
        return self._init_digest

    # -- identity ----------------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    @property
    def depth(self) -> int:
        return self.spec.depth

    @property
    def patch_size(self) -> int:
        return PATCH_SIZE

    # -- weights -----------------------------------------------------------------------------
    def load_weights(self, path: Union[str, Path]) -> None:
        """Load Meta-layout or timm-layout weights; refuse files for another model clearly."""
        path = Path(path)
        verify_hash_suffix(path)
        sd = read_state_dict(path)
        seen = describe_state_dict(sd)
        want = {"embed_dim": self.spec.embed_dim, "depth": self.spec.depth,
                "ffn": "swiglu" if hasattr(self.model.blocks[0].mlp, "fc1_g") else "mlp"}
        if any(seen[k] != v for k, v in want.items()):
            match = [a for a, i in ARCHS.items()
                     if (i.embed_dim, i.depth, i.ffn) == (seen["embed_dim"], seen["depth"], seen["ffn"])]
            raise WeightFileError(
                f"{path} does not fit {self.spec.arch}: the file looks like a {seen['layout']}-layout "
                f"ViT with embed_dim={seen['embed_dim']}, depth={seen['depth']}, ffn={seen['ffn']}"
                f"{' (' + '/'.join(match) + ')' if match else ''}; expected embed_dim={want['embed_dim']}, "
                f"depth={want['depth']}, ffn={want['ffn']}.")
        if is_meta_layout(sd):
            sd = meta_to_timm(sd, self.model)
        own = self.model.state_dict()
        check_shapes(sd, own, path, self.spec.arch)
        for k in list(own):
            # timm-layout files of the bias-free variants: zero q/v biases are the same model.
            if k.endswith(("attn.q_bias", "attn.v_bias")) and k not in sd:
                sd[k] = torch.zeros_like(own[k])
        missing, unexpected = self.model.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.startswith("rope")]  # RoPE tables are computed
        if missing or unexpected:
            raise WeightFileError(
                f"{path} does not match {self.spec.arch}: missing {missing[:5]}{'...' if len(missing) > 5 else ''}"
                f", unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        self.weights = str(path)
        self.init_seed = self._init_digest = None
        logger.info("loaded DINOv3 %s weights from %s (%s layout)", self.spec.arch, path, seen["layout"])

    # -- frozen-ness -------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "FrozenDINOv3":
        """Always stays in eval mode: a frozen backbone has no training behaviour."""
        return super().train(False)

    def _apply(self, fn, *args, **kwargs):
        # .to()/.cuda()/.half() keep parameters frozen
        out = super()._apply(fn, *args, **kwargs)
        for p in self.parameters():
            p.requires_grad_(False)
        return out

    # -- features ----------------------------------------------------------------------------
    def resolve_indices(self, indices: Optional[Iterable[int]]) -> Tuple[int, ...]:
        """Map layer indices (negatives count from the end; ``None`` = last) to absolute ones."""
        if indices is None:
            return (self.depth - 1,)
        out = []
        for i in indices:
            j = int(i) + self.depth if int(i) < 0 else int(i)
            if not 0 <= j < self.depth:
                raise IndexError(f"layer index {i} out of range for {self.spec.arch} (depth {self.depth})")
            out.append(j)
        return tuple(sorted(set(out)))

    def forward(self, x: torch.Tensor, indices: Optional[Sequence[int]] = None,
                return_cls: bool = False):
        """Normalised patch-token maps of ``indices``: ``{i: (B, D, H/16, W/16)}``.

        With ``return_cls`` also returns ``{i: (B, D)}`` CLS tokens: ``(maps, cls)``.
        """
        # under autocast the backbone casts inputs itself; the meta device (FLOP counting) has no values
        autocasting = x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type)
        check_image_size(x, dtype=None if autocasting else self.model.patch_embed.proj.weight.dtype,
                         finite=self.check_finite and x.device.type != "meta")
        take = self.resolve_indices(indices)
        # Only ever *enable* autocast here: a disabled block would override the caller's own.
        amp = (torch.autocast("cuda", dtype=torch.bfloat16)
               if self.autocast == "bf16" and x.device.type == "cuda" else contextlib.nullcontext())
        with torch.no_grad(), amp:
            outs = self.model.forward_intermediates(
                x, indices=list(take), norm=True, output_fmt="NCHW", intermediates_only=True,
                stop_early=True, return_prefix_tokens=return_cls)
        if return_cls:
            maps = {i: o[0].float() for i, o in zip(take, outs)}
            cls = {i: o[1][:, 0].float() for i, o in zip(take, outs)}
            return maps, cls
        return {i: o.float() for i, o in zip(take, outs)}

    layers = forward

    def last_layer_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's normalised map (B, D, H/16, W/16): the distillation target (its index
        is ``spec.last_layer``)."""
        return self.forward(x, [self.depth - 1])[self.depth - 1]

    def last_block_keys(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's attention keys of the patch tokens (B, D, H/16, W/16): heads
        concatenated, before RoPE, without the final norm (LiFT's release target, its ``key`` facet)."""
        attn = self.model.blocks[-1].attn
        seen = {}
        handle = attn.register_forward_pre_hook(lambda module, args: seen.setdefault("tokens", args[0]))
        try:
            self.forward(x, [self.depth - 1])
        finally:
            handle.remove()
        tokens = seen["tokens"][:, self.model.num_prefix_tokens:]  # norm1(x) of the patch tokens
        with torch.no_grad():
            if attn.qkv is not None:
                d = attn.qkv.weight.shape[0] // 3
                keys = torch.nn.functional.linear(tokens.to(attn.qkv.weight.dtype), attn.qkv.weight[d:2 * d],
                                                  attn.k_bias)
            else:
                keys = attn.k_proj(tokens.to(attn.k_proj.weight.dtype))
            b, n, _ = keys.shape
            keys = attn.k_norm(keys.view(b, n, attn.num_heads, -1)).reshape(b, n, -1)
        h, w = x.shape[-2] // PATCH_SIZE, x.shape[-1] // PATCH_SIZE
        return keys.float().transpose(1, 2).reshape(b, -1, h, w)

    def extra_repr(self) -> str:
        init = "" if self.weights is not None else f", init_seed={self.init_seed}"
        return f"arch={self.spec.arch}, embed_dim={self.embed_dim}, depth={self.depth}, weights={self.weights}{init}"


def tensor_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and bytes: tells two random draws apart
    (another seed, or another torch/timm drawing other values from the same seed)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
