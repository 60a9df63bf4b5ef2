"""Which cross-attention layers to read, chosen from the UNet's own structure (never from hard-coded block ids).

A *site* is one SpatialTransformer: its ComfyUI block key (``("input", 7)``, ``("middle", 0)``, ...), the number of
transformer blocks it stacks (``block_index`` runs over ``range(depth)``) and its down-sampling factor relative to
the latent. A layer at factor f works on a ``ceil(h / f) x ceil(w / f)`` map of an ``h x w`` latent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# latent/4: 16x16 at 512 px for SD1.x/SD2.x, 32x32 at 1024 px for SDXL (docs/methods.md, "Layers and map size")
GUIDANCE_LEVEL = 4


@dataclass(frozen=True)
class AttentionSite:
    block: tuple[str, int]
    depth: int
    downsample: int

    def keys(self) -> list[tuple[str, int, int]]:
        """Replace-patch keys ``(block, id, block_index)``, one per transformer block of the stack."""
        return [(self.block[0], self.block[1], index) for index in range(self.depth)]


def sites_at_level(sites: list[AttentionSite], downsample: int = GUIDANCE_LEVEL) -> list[AttentionSite]:
    return [site for site in sites if site.downsample == downsample]


def map_size(latent_height: int, latent_width: int, downsample: int) -> tuple[int, int]:
    """Spatial size of a layer's map; stride-2 convolutions round up at every level."""
    return math.ceil(latent_height / downsample), math.ceil(latent_width / downsample)
