"""The attention recorder: an attn2 replace patch that writes conditional attention into a run's store."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..attention import attend, attention_probabilities
from ..layers import GUIDANCE_LEVEL, AttentionSite, map_size
from ..store import AttentionStore
from .regulation import RegulationPatch
from .sites import conditional_rows, guidance_sites, host_attention

STORE_KEY = "attention_guidance_store"
_RECORDED_OUTSIDE_KEY = "attention_guidance_recorded"  # set for the patches a recorder wraps: record each call once


class _ForwardComplete(Exception):
    """Raised by the recorder once a guidance pass has every map it needs; the UNet's remaining blocks are skipped."""


class RecorderPatch:
    """attn2 replace patch that records conditional attention probabilities while the run's store is recording.

    It holds no run state (the store arrives through ``transformer_options``), so clones of a model can share it.
    A patch another pack installed on the same layer is kept in ``wrapped`` and still computes the layer output; a
    recorder nested inside it records nothing. Outside guidance passes, a wrapped :class:`RegulationPatch` that
    edits the call gives the attention to record: the edited one, which the model uses.
    """

    def __init__(self, downsample: int, wrapped: Callable | None = None) -> None:
        self.downsample = downsample
        self.wrapped = wrapped

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        store: AttentionStore | None = extra_options.get(STORE_KEY)
        recording = store is not None and store.recording and not extra_options.get(_RECORDED_OUTSIDE_KEY)
        rows = conditional_rows(extra_options["cond_or_uncond"], q.shape[0]) if recording else []
        if not rows:
            return self._output(q, k, v, extra_options)
        inner_options = {**extra_options, _RECORDED_OUTSIDE_KEY: True}
        height, width = map_size(*extra_options["original_shape"][2:], self.downsample)
        if not store.guidance_pass and isinstance(self.wrapped, RegulationPatch):
            out, edited = self.wrapped.output_and_edit(q, k, v, inner_options)
            if edited is None:
                edited = attention_probabilities(q[rows], k[rows], extra_options["n_heads"])
            store.add(self.downsample, edited, height, width)
            return out
        probabilities = attention_probabilities(q[rows], k[rows], extra_options["n_heads"])
        store.add(self.downsample, probabilities, height, width)
        if store.complete:
            raise _ForwardComplete  # every map the loss needs is in; the UNet's remaining blocks cannot change it
        if store.guidance_pass and self.wrapped is None and len(rows) == q.shape[0]:
            return attend(probabilities, v)  # one attention computation for the output and the gradient
        return self._output(q, k, v, inner_options)

    def _output(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        if self.wrapped is not None:
            return self.wrapped(q, k, v, extra_options)
        return host_attention(q, k, v, extra_options)


def options_with_recorder(model_options: dict, sites: list[AttentionSite]) -> dict:
    """Copy-on-write ``model_options`` with a :class:`RecorderPatch` on every transformer block of ``sites``.

    A patch already on a layer (another pack's) is wrapped; an existing recorder is replaced, not wrapped.
    """
    transformer_options = dict(model_options.get("transformer_options", {}))
    patches_replace = dict(transformer_options.get("patches_replace", {}))
    attn2 = dict(patches_replace.get("attn2", {}))
    for site in sites:
        for key in site.keys():
            wrapped = attn2.get(key, attn2.get(key[:2]))
            if isinstance(wrapped, RecorderPatch):
                wrapped = wrapped.wrapped
            attn2[key] = RecorderPatch(site.downsample, wrapped)
    patches_replace["attn2"] = attn2
    transformer_options["patches_replace"] = patches_replace
    return {**model_options, "transformer_options": transformer_options}


def with_recorder(model: Any, level: int = GUIDANCE_LEVEL) -> Any:
    """A clone of ``model`` whose cross-attention layers at latent/``level`` carry a :class:`RecorderPatch`."""
    sites = guidance_sites(model, level)
    clone = model.clone()
    clone.model_options = options_with_recorder(clone.model_options, sites)
    return clone


def options_with_store(model_options: dict, store: AttentionStore) -> dict:
    """Copy-on-write ``model_options`` whose ``transformer_options`` carry ``store`` (the caller's dicts are kept)."""
    transformer_options = {**model_options.get("transformer_options", {}), STORE_KEY: store}
    return {**model_options, "transformer_options": transformer_options}


def positive_token_count(denoiser: Any, extra_args: dict) -> int:
    """Token count of the positive prompt's context inside a running sampler."""
    guider = denoiser.inner_model
    if hasattr(guider, "conds"):  # current host: conds live on the CFGGuider
        positive = guider.conds["positive"]
    else:  # early-2024 host: conds travel in extra_args
        positive = extra_args["cond"]
    return positive[0]["model_conds"]["c_crossattn"].cond.shape[1]


@contextmanager
def recording(store: AttentionStore) -> Iterator[AttentionStore]:
    store.recording = True
    try:
        yield store
    finally:
        store.recording = False
