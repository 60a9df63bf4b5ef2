"""How the pack's attn2 replace patches share a layer with each other and with other packs' patches.

A layer has one replace slot. A patch the pack installs keeps whatever was in the slot as ``wrapped`` and lets it
compute the layer's output; installing a patch of the same kind again replaces the earlier one (keeping what that
one wrapped), so installing twice equals installing once.
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any, Protocol, runtime_checkable

import torch

from .compat import host_attention

LayerKey = tuple[str, int, int]  # (block, id, block_index)


@runtime_checkable
class ReportsAttention(Protocol):
    """A patch that can say which attention probabilities it used (e.g. an edited attention), for a recorder
    wrapping it to record those instead of computing its own."""

    def output_and_probabilities(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict
                                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The layer output and, when the patch changed the attention, the conditional rows' probabilities
        ``[rows, heads, h·w, T]`` (fp32, rows in batch order); ``None`` when it used the plain attention."""


def layer_output(wrapped: Callable | None, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 extra_options: dict) -> torch.Tensor:
    """The layer's output as it would be without the pack's patch: the wrapped patch's, else the host's attention."""
    if wrapped is not None:
        return wrapped(q, k, v, extra_options)
    return host_attention(q, k, v, extra_options)


def with_attn2_patches(model_options: dict, keys: Iterable[LayerKey], make: Callable[[Callable | None], Any],
                       kind: type) -> dict:
    """Copy-on-write ``model_options`` with ``make(wrapped)`` in the attn2 slot of every layer key.

    ``wrapped`` is what the slot held (by ``(block, id, block_index)`` or ``(block, id)``), or, when that is already a
    ``kind`` patch, what that patch wrapped. The caller's dictionaries are never changed.
    """
    transformer_options = dict(model_options.get("transformer_options", {}))
    patches_replace = dict(transformer_options.get("patches_replace", {}))
    attn2 = dict(patches_replace.get("attn2", {}))
    for key in keys:
        wrapped = attn2.get(key, attn2.get(key[:2]))
        if isinstance(wrapped, kind):
            wrapped = wrapped.wrapped
        attn2[key] = make(wrapped)
    patches_replace["attn2"] = attn2
    transformer_options["patches_replace"] = patches_replace
    return {**model_options, "transformer_options": transformer_options}


def conditional_chunks(cond_or_uncond: list[int], batch: int) -> list[tuple[int, list[int]]]:
    """``(chunk index, rows)`` of each positive-prompt chunk of a batched call (ComfyUI orders CFG batches uncond
    first; each chunk holds ``batch // len(cond_or_uncond)`` rows)."""
    size = batch // len(cond_or_uncond)
    return [(index, list(range(index * size, (index + 1) * size)))
            for index, kind in enumerate(cond_or_uncond) if kind == 0]


def entry_chunks(extra_options: dict, batch: int, entries: Collection | None) -> list[tuple[int, list[int]]]:
    """The positive chunks of a batched call (:func:`conditional_chunks`) that belong to ``entries``, uuids of positive
    conditioning entries as the call's ``uuids`` name them; ``None``: every positive chunk."""
    chunks = conditional_chunks(extra_options["cond_or_uncond"], batch)
    if entries is None:
        return chunks
    uuids = extra_options.get("uuids") or []
    return [(index, rows) for index, rows in chunks if index < len(uuids) and uuids[index] in entries]
