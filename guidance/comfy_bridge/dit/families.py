"""The diffusion transformers the pack guides, told from the classes of the model (never from a name).

FLUX.1 (dev, schnell, Kontext, Fill) and Chroma share the double-stream block: text then image tokens in one joint
attention; their single-stream blocks come after every double block and are never read. SD3 / SD3.5 (MMDiT, and
MMDiT-X for SD3.5 medium) attend over context (CLIP, T5) then image tokens in every joint block; MMDiT-X adds an
image-only attention in some blocks, which has no text to read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...subjects.tokens import CLIP_ENCODER, T5_ENCODER

try:
    from comfy.ldm.chroma.model import Chroma
    from comfy.ldm.flux.model import Flux
    from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
except ImportError:  # 2024 host: no diffusion transformers
    Chroma = Flux = MMDiT = None
try:
    from comfy.ldm.chroma_radiance.model import ChromaRadiance
except ImportError:
    ChromaRadiance = None

DIT_FAMILIES = "FLUX.1 (dev, schnell) and Chroma, SD3 and SD3.5 (large, medium)"
GRID_TO_LEVEL = 2  # the image token grid is latent/2 (patch size 2); the pack's maps are latent/4


@dataclass(frozen=True)
class DiTFamily:
    """What the pack needs to know of a supported transformer.

    ``name``: for messages; ``block``: the kind of joint block ("flux", "chroma", "mmdit"); ``blocks``: how many
    joint (double) blocks the model has; ``text_offset``: tokens ahead of the prompt's in the text stream (MMDiT's
    register tokens); ``encoder_layouts``: the token layouts the model can be given (tuples of encoders in sequence
    order).
    """

    name: str
    block: str
    blocks: int
    text_offset: int
    encoder_layouts: tuple[tuple[str, ...], ...]

    def accepts(self, encoders: tuple[str, ...]) -> bool:
        return encoders in self.encoder_layouts


def dit_family(diffusion_model: Any) -> DiTFamily | None:
    """The family of ``diffusion_model`` (the module inside a BaseModel), or None when it is none of the supported
    transformers."""
    if Flux is None:
        return None
    if ChromaRadiance is not None and isinstance(diffusion_model, ChromaRadiance):
        return None  # pixel space: no latent grid to map
    if isinstance(diffusion_model, Chroma):
        return DiTFamily("Chroma", "chroma", len(diffusion_model.double_blocks), 0, ((T5_ENCODER,),))
    if isinstance(diffusion_model, Flux):
        return DiTFamily("FLUX.1", "flux", len(diffusion_model.double_blocks), 0, ((T5_ENCODER,),))
    if isinstance(diffusion_model, MMDiT) and hasattr(diffusion_model, "joint_blocks"):
        layouts = ((CLIP_ENCODER, T5_ENCODER), (CLIP_ENCODER,), (T5_ENCODER,))
        return DiTFamily("SD3", "mmdit", len(diffusion_model.joint_blocks), diffusion_model.register_length,
                         layouts)
    return None


def is_transformer(diffusion_model: Any) -> bool:
    """A model without a UNet's blocks: a diffusion transformer, supported or not."""
    return not all(hasattr(diffusion_model, name) for name in ("input_blocks", "middle_block", "output_blocks"))
