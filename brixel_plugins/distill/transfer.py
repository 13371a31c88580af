"""AnyUp's cross-backbone claim, measured: weights trained on one backbone's layer applied, without
retraining, to another backbone (another width D) or another layer, and scored held-out against
bilinear enlargement of that same backbone / layer, with the demo's protocol and metrics
(:mod:`brixel_plugins.distill.demo`, :func:`~brixel_plugins.distill.metrics.map_metrics`): the map
of the image at ``student_size`` against the same layer computed on the image at ``factor`` x that.
"""
from __future__ import annotations

import os.path as osp
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..backbones.dinov3 import FrozenDINOv3
from ..images import normalise, resize
from ..upsamplers import Upsampler, build_upsampler
from .metrics import KEYS, map_metrics

__all__ = ["transfer", "held_out_layer_maps", "score_transfer", "transfer_lines", "demo_transfer"]


def transfer(upsampler: Upsampler, backbone: FrozenDINOv3, layer: int = -1) -> Upsampler:
    """The same weights as ``upsampler`` (a trained AnyUp), rebuilt for ``backbone`` on its ``layer``
    (negative counts from the end). Refused: a method whose weights depend on the backbone's width
    (every one but AnyUp), and an AnyUp with a zero start (its gate holds one weight per channel of
    the backbone it was trained on)."""
    if upsampler.method != "anyup":
        raise ValueError(f"only AnyUp applies to another backbone or layer without retraining, not "
                         f"{upsampler.method!r} (its weights are sized for one backbone and layer)")
    if upsampler.zero_start:
        raise ValueError("an AnyUp trained with zero_start=True holds a per-channel gate of its training backbone "
                         f"(D = {upsampler.spec.embed_dim}): it does not transfer; train with zero_start=False")
    config = {k: v for k, v in upsampler.config.items() if k != "layer"}
    out = build_upsampler(dict(type="anyup", **config, layer=layer), backbone.spec)
    out.load_state_dict(upsampler.state_dict(), strict=True)
    return out.to(next(upsampler.parameters()).device).eval()


@torch.no_grad()
def held_out_layer_maps(backbone: FrozenDINOv3, upsampler: Upsampler, image: torch.Tensor, student_size: int
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`~brixel_plugins.distill.model.held_out_maps` for the layer ``upsampler`` reads (any, not
    only the last): (its map of ``image`` at ``student_size``, that layer bilinearly enlarged, the
    same layer of the image at ``student_size * factor``), float32 (B, D, f*h, f*w)."""
    layer = upsampler.layer_indices[0]
    hr = resize(image, student_size * upsampler.factor)
    low_image = resize(image, student_size)
    target = backbone.layers(hr, [layer])[layer].float()
    layers = backbone.layers(low_image, [layer])
    pred = upsampler(low_image, layers, backbone, image_hr=hr).float()
    base = F.interpolate(layers[layer].float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
    return pred, base, target


def score_transfer(upsampler: Upsampler, backbone: FrozenDINOv3, images: Sequence[torch.Tensor],
                   student_size: int) -> Dict[str, Dict[str, float]]:
    """Held-out means over ``images`` ((1, 3, H, W) each, ImageNet-normalised) of cosine, relative L1
    and fidelity, for ``upsampler`` and for bilinear: ``{'upsampler': {...}, 'bilinear': {...}}``."""
    if not images:
        raise ValueError("score_transfer needs at least one held-out image")
    rows: Dict[str, List[Dict[str, float]]] = {"upsampler": [], "bilinear": []}
    for image in images:
        pred, base, target = held_out_layer_maps(backbone, upsampler, image, student_size)
        rows["upsampler"].append(map_metrics(pred, target))
        rows["bilinear"].append(map_metrics(base, target))
    return {k: {m: sum(r[m] for r in v) / len(v) for m in KEYS} for k, v in rows.items()}


def transfer_lines(results: Dict[str, dict]) -> str:
    """The demo's block of the cross-backbone line (:func:`demo_transfer`'s result): per case, AnyUp
    and bilinear on that backbone / layer."""
    results = {k: v for k, v in results.items() if isinstance(v, dict)}
    width = max(12, *(len(k) + 1 for k in results))
    lines = [f"{'':<{width}}{'':<10}{'cosine':>9}{'rel L1':>9}{'fidelity':>10}"]
    for case, r in results.items():
        for i, who in enumerate(("upsampler", "bilinear")):
            m = r[who]
            lines.append(f"{case if i == 0 else '':<{width}}{'AnyUp' if i == 0 else 'bilinear':<10}"
                         f"{m['cosine']:>9.4f}{m['rel_l1']:>9.4f}{m['fidelity']:>10.4f}")
        if r.get("change_from_last_layer", 1.0) < 1e-3:
            lines.append(f"{'':<{width}}!! this layer's map differs from the last layer's by "
                         f"{r['change_from_last_layer']:.1e} (relative): the same features, not another layer")
    return "\n".join(lines)


def demo_transfer(runner, student_size: int, other_arch: str = "vitb16", weights: Optional[str] = None) -> dict:
    """The demo's cross-backbone line for its AnyUp run ``runner`` (trained on the demo's ViT-S last
    layer): its best weights applied unchanged to (a) a ``other_arch`` DINOv3's last layer (random
    init from the same seed as the demo's backbone; ``weights``: a real file instead) and (b) the
    middle layer of the run's own backbone, each scored on the run's held-out photos at
    ``student_size`` px (the demo's student size) against bilinear on that backbone / layer.
    Returns ``{case: {'upsampler', 'bilinear', 'layer', 'embed_dim'}, 'seconds': ...}``."""
    from ..files.upsampler_file import load_upsampler

    t0 = time.time()
    model = runner.model
    source = model.backbone
    trained = load_upsampler(osp.join(runner.work_dir, "best_upsampler.safetensors"), source.spec, "anyup")
    dataset = runner.val_dataloader.dataset
    device = next(source.parameters()).device
    images = [normalise(dataset[i]["image"][None].to(device)) for i in range(len(dataset))]
    other = FrozenDINOv3(other_arch, weights, init_seed=source.init_seed or 0, autocast=source.autocast).to(device)
    middle = source.depth // 2 - 1
    out = {}
    init = "" if weights else " (random init)"
    for case, backbone, layer in ((f"{other_arch}{init}, last layer", other, -1),
                                  (f"{source.spec.arch}, layer {middle + 1} of {source.depth}", source, middle)):
        scores = score_transfer(transfer(trained, backbone, layer), backbone, images, student_size)
        out[case] = dict(scores, layer=layer % backbone.depth, embed_dim=backbone.embed_dim)
    # a random-init DINOv3's residual branches start near zero: its layers can be the same map
    with torch.no_grad():
        maps = source.layers(images[0], [middle, source.depth - 1])
    last = maps[source.depth - 1].float()
    out[case]["change_from_last_layer"] = float((maps[middle].float() - last).norm() / last.norm())
    out["seconds"] = round(time.time() - t0, 1)
    return out
