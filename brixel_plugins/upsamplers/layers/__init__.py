"""Pure-PyTorch building blocks shared by the upsamplers (no compiled extensions), as timm keeps ``timm/layers``."""
from .deform_attn import MSDeformAttn, multi_scale_deformable_attn  # noqa: F401
from .local_attention import LocalAttention2d, local_attention  # noqa: F401
from .phi_s import PhiS  # noqa: F401
