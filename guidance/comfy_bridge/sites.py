"""Where the cross-attention layers are: UNet structure, supported families, the positive rows of a batched call."""
from __future__ import annotations

from typing import Any

import comfy.ldm.modules.attention as comfy_attention
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, Upsample

from ..capture.sites import GUIDANCE_LEVEL, AttentionSite, sites_at_level

UNET_FAMILIES = "SD1.x, SD2.x and SDXL (UNet models with text cross-attention, fine-tunes and merges included)"
SUPPORTED_FAMILIES = f"{UNET_FAMILIES}, FLUX.1 (dev, schnell) and Chroma, SD3 and SD3.5 (large, medium)"


class UnsupportedModelError(ValueError):
    pass


def attention_sites(model: Any) -> list[AttentionSite]:
    """Every SpatialTransformer of the model's UNet with its block key, depth and down-sampling factor.

    ``model`` is a ModelPatcher (MODEL), the BaseModel inside it, or the diffusion model itself.
    """
    base_model = getattr(model, "model", model)
    unet = getattr(base_model, "diffusion_model", base_model)
    if not all(hasattr(unet, name) for name in ("input_blocks", "middle_block", "output_blocks")):
        raise UnsupportedModelError(
            f"{type(unet).__name__} is not a UNet with cross-attention blocks; cross-attention layers are read on "
            f"UNets only, and this supports {UNET_FAMILIES}"
        )
    sites: list[AttentionSite] = []
    downsample = 1
    for block_id, block in enumerate(unet.input_blocks):
        if any(isinstance(layer, Downsample) for layer in block):
            downsample *= 2
        sites.extend(_transformer_sites(block, ("input", block_id), downsample))
    sites.extend(_transformer_sites(unet.middle_block, ("middle", 0), downsample))
    for block_id, block in enumerate(unet.output_blocks):
        sites.extend(_transformer_sites(block, ("output", block_id), downsample))
        if any(isinstance(layer, Upsample) for layer in block):
            downsample //= 2
    return sites


def _transformer_sites(block: torch.nn.Module, key: tuple[str, int], downsample: int) -> list[AttentionSite]:
    return [
        AttentionSite(key, len(layer.transformer_blocks), downsample)
        for layer in block
        if isinstance(layer, comfy_attention.SpatialTransformer)
    ]


def guidance_sites(model: Any, level: int = GUIDANCE_LEVEL) -> list[AttentionSite]:
    sites = sites_at_level(attention_sites(model), level)
    if not sites:
        raise UnsupportedModelError(
            f"this UNet has no cross-attention layer at latent/{level}; attention guidance supports {UNET_FAMILIES}"
        )
    return sites

