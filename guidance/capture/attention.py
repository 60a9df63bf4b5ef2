"""Cross-attention that also returns its probabilities, for the layers whose maps are recorded.

Shapes follow ComfyUI's attn2 replace patches: q ``[B, N, heads·d]`` (N = h·w pixels), k and v ``[B, T, heads·d]``.
"""
from __future__ import annotations

import torch


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, L, heads·d] -> [B, heads, L, d]``."""
    batch, length, width = x.shape
    return x.reshape(batch, length, heads, width // heads).transpose(1, 2)


def attention_logits(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """``q kᵀ / sqrt(d)`` in fp32: ``[B, heads, N, T]``."""
    q_heads, k_heads = split_heads(q.float(), heads), split_heads(k.float(), heads)
    return q_heads @ k_heads.transpose(-1, -2) * q_heads.shape[-1] ** -0.5


def attention_probabilities(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """``softmax(q kᵀ / sqrt(d))`` in fp32: ``[B, heads, N, T]``, each row summing to 1 over the T tokens."""
    return torch.softmax(attention_logits(q, k, heads), dim=-1)


def attend(probabilities: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``probabilities @ v`` with heads merged back: ``[B, heads, N, T] x [B, T, heads·d] -> [B, N, heads·d]``."""
    heads = probabilities.shape[1]
    out = probabilities @ split_heads(v.float(), heads)
    batch, _, length, dim = out.shape
    return out.transpose(1, 2).reshape(batch, length, heads * dim).to(v.dtype)
