"""The attention recorder: an attn2 replace patch that writes conditional attention into a sampling run's store."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from ..capture.attention import attend, attention_probabilities
from ..capture.sites import AttentionSite, map_size
from ..capture.store import AttentionStore
from .patches import ReportsAttention, entry_chunks, layer_output, with_attn2_patches

STORE_KEY = "attention_guidance_store"
ENTRIES_KEY = "attention_guidance_recorded_entries"  # uuids of the positive entries recorded (None: all)
_RECORDED_OUTSIDE_KEY = "attention_guidance_recorded"  # set for the patches a recorder wraps: record each call once


class ForwardComplete(Exception):
    """Raised by the recorder once a guidance pass has every map it needs; the model's remaining blocks are skipped."""


class RecorderPatch:
    """attn2 replace patch that records conditional attention probabilities while the run's store is recording.

    It holds no run state (the store arrives through ``transformer_options``), so clones of a model can share it.
    A patch another pack installed on the same layer is kept in ``wrapped`` and still computes the layer output; a
    recorder nested inside it records nothing. Outside guidance passes, a wrapped patch that reports the attention
    it used (:class:`~.patches.ReportsAttention`, e.g. Attention Regulation's edit) gives the attention to record:
    the one the model uses.
    """

    def __init__(self, downsample: int, wrapped: Callable | None = None) -> None:
        self.downsample = downsample
        self.wrapped = wrapped

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        store: AttentionStore | None = extra_options.get(STORE_KEY)
        recording = store is not None and store.recording and not extra_options.get(_RECORDED_OUTSIDE_KEY)
        chunks = entry_chunks(extra_options, q.shape[0], extra_options.get(ENTRIES_KEY)) if recording else []
        rows = [row for _, chunk in chunks for row in chunk]
        if not rows:
            return layer_output(self.wrapped, q, k, v, extra_options)
        inner_options = {**extra_options, _RECORDED_OUTSIDE_KEY: True}
        height, width = map_size(*extra_options["original_shape"][2:], self.downsample)
        if not store.guidance_pass and isinstance(self.wrapped, ReportsAttention):
            out, reported = self.wrapped.output_and_probabilities(q, k, v, inner_options)
            if reported is None:
                reported = attention_probabilities(q[rows], k[rows], extra_options["n_heads"])
            store.add(self.downsample, reported, height, width)
            return out
        probabilities = attention_probabilities(q[rows], k[rows], extra_options["n_heads"])
        store.add(self.downsample, probabilities, height, width)
        if store.complete:
            raise ForwardComplete  # every map the loss needs is in; the model's remaining blocks cannot change it
        if store.guidance_pass and self.wrapped is None and len(rows) == q.shape[0]:
            return attend(probabilities, v)  # one attention computation for the output and the gradient
        return layer_output(self.wrapped, q, k, v, inner_options)


def options_with_recorder(model_options: dict, sites: list[AttentionSite]) -> dict:
    """Copy-on-write ``model_options`` with a :class:`RecorderPatch` on every transformer block of ``sites``."""
    for site in sites:
        model_options = with_attn2_patches(model_options, site.keys(),
                                           lambda wrapped, site=site: RecorderPatch(site.downsample, wrapped),
                                           RecorderPatch)
    return model_options


def options_with_store(model_options: dict, store: AttentionStore, entries: frozenset | None = None) -> dict:
    """Copy-on-write ``model_options`` whose ``transformer_options`` carry ``store`` (the caller's dicts are kept)
    and the uuids of the positive conditioning ``entries`` to record (None: every positive entry)."""
    transformer_options = {**model_options.get("transformer_options", {}), STORE_KEY: store, ENTRIES_KEY: entries}
    return {**model_options, "transformer_options": transformer_options}


@contextmanager
def recording(store: AttentionStore) -> Iterator[AttentionStore]:
    store.recording = True
    try:
        yield store
    finally:
        store.recording = False
