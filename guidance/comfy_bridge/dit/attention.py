"""The block-scoped attention override: ComfyUI calls it for every attention of one joint block (the block patch puts
it in that block's own copy of ``transformer_options``), so the pack never replaces attention globally.

It records the image-to-text probabilities of the block's joint call beside the host's attention, leaves the output
to the host's backend (or to the override another pack had set, which it chains), and in guidance passes hands that
backend ComfyUI's PyTorch attention, which has a backward (sage and others have none).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import comfy.ldm.modules.attention as comfy_attention
import torch

from ...capture.attention import split_heads
from ...capture.joint import JointLayout, pool_grid, text_attention
from ...capture.sites import GUIDANCE_LEVEL
from ...capture.store import AttentionStore
from .families import GRID_TO_LEVEL

OVERRIDE_KEY = "optimized_attention_override"
HEADS_PER_CHUNK = 1  # the largest recording tensor is one head's [B, N, T] (or [B, N, L] for joint probabilities)


def differentiable_attention() -> Callable:
    """ComfyUI's PyTorch attention backend (scaled_dot_product_attention), which autograd can differentiate."""
    return comfy_attention.get_attention_function("pytorch")


class BlockAttention:
    """``optimized_attention_override`` of one joint block in one model call.

    ``layout`` locates the text and image tokens of the block's joint call (the only call whose sequence length is
    ``layout.length``; MMDiT-X's image-only call is passed through). ``rows``: the batch rows of the positive prompt.
    ``store``: where the maps go (None: nothing recorded), at ``levels`` (down-sampling factors: 4 pools the token
    grid 2x2, 2 keeps it; joint probabilities at latent/4 only). In guidance passes (``store.guidance_pass``) the maps are
    computed whenever grad is on, even after the pass stopped recording, so that a checkpointed block recomputes
    exactly the operations of its forward during backward (those replays are not stored). ``chained``: the override
    that was set before this one, which then computes the output.
    """

    def __init__(self, layout: JointLayout, rows: list[int], store: AttentionStore | None, levels: tuple[int, ...],
                 joint: bool, differentiable: bool, chained: Callable | None) -> None:
        self.layout = layout
        self.rows = rows
        self.store = store
        self.levels = levels
        self.joint = joint
        self.differentiable = differentiable
        self.chained = chained

    def __call__(self, func: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        q, k = args[0], args[1]
        heads = args[3] if len(args) > 3 else kwargs["heads"]
        length = q.shape[2] if kwargs.get("skip_reshape") else q.shape[1]
        if length == self.layout.length and self._computes():
            self._record(q, k, heads, kwargs)
        attention = differentiable_attention() if self.differentiable else func
        if self.chained is not None:
            return self.chained(attention, *args, **kwargs)
        return attention(*args, **kwargs)

    def _computes(self) -> bool:
        store = self.store
        if store is None or not self.rows:
            return False
        return store.recording or (store.guidance_pass and torch.is_grad_enabled())

    def _record(self, q: torch.Tensor, k: torch.Tensor, heads: int, kwargs: dict) -> None:
        rows = self.rows
        if kwargs.get("skip_reshape"):  # [B, H, L, D] (FLUX, Chroma: after RoPE)
            q_rows, k_rows = q[rows], k[rows]
        else:  # [B, L, H·D] (MMDiT)
            q_rows, k_rows = split_heads(q[rows], heads), split_heads(k[rows], heads)
        mask = kwargs.get("mask")
        if mask is not None and mask.ndim >= 3 and mask.shape[0] == q.shape[0] and q.shape[0] > 1:
            mask = mask[rows]
        found = text_attention(q_rows, k_rows, self.layout, self.joint, mask, HEADS_PER_CHUNK)
        pooled = {level: pool_grid(found.text, self.layout.grid, level // GRID_TO_LEVEL) for level in self.levels}
        joint = None
        if found.joint is not None:
            joint = pool_grid(found.joint, self.layout.grid, GUIDANCE_LEVEL // GRID_TO_LEVEL)[0]
        if not self.store.recording:
            return  # a checkpoint replay during backward: the same operations again, not stored again
        for level, (maps, size) in pooled.items():
            self.store.add_summed(level, maps, found.heads, *size)
        if joint is not None:
            self.store.add_joint(GUIDANCE_LEVEL, joint)
