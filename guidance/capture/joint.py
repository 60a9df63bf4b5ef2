"""Image-to-text attention read from a diffusion transformer's joint attention (pure).

A joint block attends over one sequence that holds the text tokens and the image tokens (and, in some models,
reference-image tokens after them). Its maps are the image queries' probabilities on the text keys, computed from
``q`` and ``k`` beside the host's attention (never the full ``L x L`` matrix: one head chunk at a time, only the
image rows), in fp32 or better.

Two normalisers (docs/methods.md, "Attention on diffusion transformers"):

* ``text``: softmax over the text keys only, the analogue of a UNet's cross-attention, which the A&E, D&B and A-STAR
  losses and AG_ATTENTION expect (rows sum to 1 over the prompt's tokens);
* ``joint``: the exact probabilities of the joint softmax over all keys (FOCUS reads these); a row's text part then
  sums to the share of attention the pixel gives the text.

Shapes: ``q``, ``k`` ``[B, H, L, D]``; maps on the image token grid ``[B, N, T]`` (N = grid h·w, T text tokens),
summed over heads (the caller divides by the head count when averaging).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint


@dataclass(frozen=True)
class JointLayout:
    """Where one joint-attention call keeps its tokens: ``text_count`` prompt tokens from ``text_start`` and the
    image grid's ``grid[0]·grid[1]`` tokens from ``image_start``; ``length`` is the whole sequence."""

    text_start: int
    text_count: int
    image_start: int
    grid: tuple[int, int]
    length: int

    @property
    def image_count(self) -> int:
        return self.grid[0] * self.grid[1]

    def __post_init__(self) -> None:
        if self.text_start + self.text_count > self.length or self.image_start + self.image_count > self.length:
            raise ValueError(f"the layout {self} does not fit a sequence of {self.length} tokens")


class TextAttention(NamedTuple):
    """Head sums of the image rows' text probabilities ``[B, N, T]``: ``text`` normalised over the text keys,
    ``joint`` over all keys (None when not asked for); ``heads`` summed."""

    text: torch.Tensor
    joint: torch.Tensor | None
    heads: int


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.promote_types(tensor.dtype, torch.float32)


def _mask_rows(mask: torch.Tensor, heads: slice, rows: slice, columns: slice) -> torch.Tensor:
    """An attention mask (``[L, L]``, ``[B, L, L]`` or ``[B, 1|H, L, L]``; additive or boolean "keep") cut to
    ``[B|1, h, rows, columns]`` as an additive bias."""
    while mask.ndim < 4:
        mask = mask.unsqueeze(0 if mask.ndim == 2 else 1)
    mask = mask[:, heads if mask.shape[1] > 1 else slice(None), rows, columns]
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, -math.inf)
    return mask


def _head_chunk(q_image: torch.Tensor, k_text: torch.Tensor, k_all: torch.Tensor | None, text_bias: torch.Tensor | None,
                all_bias: torch.Tensor | None, scale: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One head chunk's image rows: text-normalised probabilities and, with ``k_all``, joint ones, summed over the
    chunk's heads: ``[B, h, N, D] -> [B, N, T]``."""
    logits = q_image @ k_text.transpose(-1, -2) * scale
    if text_bias is not None:
        logits = logits + text_bias
    text = torch.softmax(logits, dim=-1).sum(dim=1)
    if k_all is None:
        return text, None
    every = q_image @ k_all.transpose(-1, -2) * scale
    if all_bias is not None:
        every = every + all_bias
    return text, torch.exp(logits - torch.logsumexp(every, dim=-1, keepdim=True)).sum(dim=1)


def text_attention(q: torch.Tensor, k: torch.Tensor, layout: JointLayout, joint: bool = False,
                   mask: torch.Tensor | None = None, heads_per_chunk: int = 1) -> TextAttention:
    """The image queries' attention on the text keys, summed over heads; ``mask`` as the host's attention takes it.

    ``heads_per_chunk`` heads are computed at a time, so the largest tensor is ``[B, heads_per_chunk, N, T]``
    (``[..., N, L]`` with ``joint``). When autograd records, each chunk is checkpointed: a backward keeps only its
    inputs and recomputes one chunk at a time (FOCUS's joint rows are ``N x L`` per head).
    """
    batch, heads, length, dim = q.shape
    if length != layout.length or k.shape[2] != length:
        raise ValueError(f"joint attention over {length} tokens does not match the layout's {layout.length}")
    dtype = _compute_dtype(q)
    scale = dim ** -0.5
    rows = slice(layout.image_start, layout.image_start + layout.image_count)
    text = slice(layout.text_start, layout.text_start + layout.text_count)
    recorded = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)
    text_sum = torch.zeros((), dtype=dtype, device=q.device)
    joint_sum = torch.zeros((), dtype=dtype, device=q.device) if joint else None
    for first in range(0, heads, heads_per_chunk):
        chunk = slice(first, min(first + heads_per_chunk, heads))
        inputs = (q[:, chunk, rows].to(dtype), k[:, chunk, text].to(dtype),
                  k[:, chunk].to(dtype) if joint else None,
                  None if mask is None else _mask_rows(mask, chunk, rows, text).to(dtype),
                  None if mask is None or not joint else _mask_rows(mask, chunk, rows, slice(None)).to(dtype))
        if recorded:
            text_part, joint_part = torch.utils.checkpoint.checkpoint(_head_chunk, *inputs, scale, use_reentrant=False)
        else:
            text_part, joint_part = _head_chunk(*inputs, scale)
        text_sum = text_sum + text_part
        if joint_sum is not None:
            joint_sum = joint_sum + joint_part
    return TextAttention(text_sum, joint_sum, heads)


def pool_grid(maps: torch.Tensor, grid: tuple[int, int], factor: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``[B, h·w, T]`` on a ``h x w`` grid -> the mean over ``factor x factor`` cells, ``[B, ceil(h/f)·ceil(w/f), T]``
    (edge cells average what they cover), and the pooled grid size."""
    if factor == 1:
        return maps, grid
    batch, _, tokens = maps.shape
    height, width = grid
    spatial = maps.transpose(1, 2).reshape(batch, tokens, height, width)
    pooled = F.avg_pool2d(spatial, factor, ceil_mode=True)
    return pooled.reshape(batch, tokens, -1).transpose(1, 2), (pooled.shape[-2], pooled.shape[-1])
