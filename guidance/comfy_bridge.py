"""The one module that touches ComfyUI internals: layer discovery, the attention recorder patch, runs and tokens.

Everything here works on the current ComfyUI and on the early-2024 one; where they differ, the difference is
handled here and named.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.samplers
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, Upsample

from .attention import attend, attention_probabilities
from .layers import GUIDANCE_LEVEL, AttentionSite, map_size, sites_at_level
from .store import AttentionStore
from .tokens import EMBEDDING_PIECE, PromptTokens

logger = logging.getLogger("attention_guidance")

SUPPORTED_FAMILIES = "SD1.x, SD2.x and SDXL (UNet models with text cross-attention, fine-tunes and merges included)"
STORE_KEY = "attention_guidance_store"


class UnsupportedModelError(ValueError):
    pass


def attention_sites(model: Any) -> list[AttentionSite]:
    """Every SpatialTransformer of the model's UNet with its block key, depth and down-sampling factor."""
    unet = model.model.diffusion_model
    if not all(hasattr(unet, name) for name in ("input_blocks", "middle_block", "output_blocks")):
        raise UnsupportedModelError(
            f"{type(unet).__name__} is not a UNet with cross-attention blocks; attention guidance supports "
            f"{SUPPORTED_FAMILIES}. Transformer-only models (SD3, Flux and other DiT/MMDiT) are not supported."
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
            f"this UNet has no cross-attention layer at latent/{level}; attention guidance supports {SUPPORTED_FAMILIES}"
        )
    return sites


def conditional_rows(cond_or_uncond: list[int], batch: int) -> list[int]:
    """Rows of a batched call that belong to the positive prompt (ComfyUI orders CFG batches uncond first)."""
    chunk = batch // len(cond_or_uncond)
    return [index * chunk + row for index, kind in enumerate(cond_or_uncond) if kind == 0 for row in range(chunk)]


def host_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
    """The host's own optimized attention, as an unpatched layer would run it."""
    if "attn_precision" in extra_options:  # current host: SD2.x asks for fp32 attention
        return comfy_attention.optimized_attention(
            q, k, v, extra_options["n_heads"], attn_precision=extra_options["attn_precision"]
        )
    return comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"])


class RecorderPatch:
    """attn2 replace patch that records conditional attention probabilities while the run's store is recording.

    It holds no run state (the store arrives through ``transformer_options``), so clones of a model can share it.
    A patch another pack installed on the same layer is kept in ``wrapped`` and still computes the layer output.
    """

    def __init__(self, downsample: int, wrapped: Callable | None = None) -> None:
        self.downsample = downsample
        self.wrapped = wrapped

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        store: AttentionStore | None = extra_options.get(STORE_KEY)
        rows = conditional_rows(extra_options["cond_or_uncond"], q.shape[0]) if store and store.recording else []
        if not rows:
            return self._output(q, k, v, extra_options)
        height, width = map_size(*extra_options["original_shape"][2:], self.downsample)
        probabilities = attention_probabilities(q[rows], k[rows], extra_options["n_heads"])
        store.add(self.downsample, probabilities, height, width)
        if self.wrapped is None and len(rows) == q.shape[0]:
            return attend(probabilities, v)
        return self._output(q, k, v, extra_options)

    def _output(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        if self.wrapped is not None:
            return self.wrapped(q, k, v, extra_options)
        return host_attention(q, k, v, extra_options)


def with_recorder(model: Any, level: int = GUIDANCE_LEVEL) -> Any:
    """A clone of ``model`` whose cross-attention layers at latent/``level`` carry a :class:`RecorderPatch`.

    Installing on a model that already has the recorder gives the same patches as installing once.
    """
    sites = guidance_sites(model, level)
    clone = model.clone()
    existing = clone.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for site in sites:
        for key in site.keys():
            wrapped = existing.get(key, existing.get(key[:2]))
            if isinstance(wrapped, RecorderPatch):
                wrapped = wrapped.wrapped
            clone.set_model_attn2_replace(RecorderPatch(site.downsample, wrapped), key[0], key[1], key[2])
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


@dataclass
class StepMaps:
    """Aggregated conditional maps of one sampling step: ``maps`` is ``[B, h, w, T]``, detached."""

    step: int
    sigma: float
    maps: torch.Tensor


class _RecordingDenoiser:
    """Wraps the sampler's denoiser so that the first model call of every step records its maps."""

    def __init__(self, inner: Any, store: AttentionStore, sigmas: torch.Tensor, record: list[StepMaps]) -> None:
        self.inner_model = inner.inner_model
        self._inner = inner
        self._store = store
        self._sigmas = sigmas.tolist()
        self._record = record

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        step = len(self._record)
        if step >= len(self._sigmas) - 1 or float(sigma.flatten()[0]) != self._sigmas[step]:
            return self._inner(x, sigma, **kwargs)  # a midpoint evaluation inside a step
        self._store.clear()
        with recording(self._store):
            out = self._inner(x, sigma, **kwargs)
        self._record.append(StepMaps(step, self._sigmas[step], self._store.aggregate(GUIDANCE_LEVEL).detach()))
        self._store.clear()
        return out


@contextmanager
def recording(store: AttentionStore) -> Iterator[AttentionStore]:
    store.recording = True
    try:
        yield store
    finally:
        store.recording = False


def recording_sampler(sampler_name: str, record: list[StepMaps]) -> Any:
    """A SAMPLER running ``sampler_name`` that appends each step's maps to ``record``.

    The model must carry the recorder (:func:`with_recorder`). Each run creates its own store.
    """
    base = comfy.samplers.sampler_object(sampler_name)

    def sample(model_k: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
               callback: Callable | None = None, disable: bool | None = None, **options: Any) -> torch.Tensor:
        extra_args = dict(extra_args or {})
        store = AttentionStore(positive_token_count(model_k, extra_args))
        extra_args["model_options"] = options_with_store(extra_args.get("model_options", {}), store)
        record.clear()
        denoiser = _RecordingDenoiser(model_k, store, sigmas, record)
        return base.sampler_function(denoiser, x, sigmas, extra_args=extra_args, callback=callback,
                                     disable=disable, **options)

    return comfy.samplers.KSAMPLER(sample, extra_options=base.extra_options, inpaint_options=base.inpaint_options)


def prompt_tokens(clip: Any, text: str) -> PromptTokens:
    """The pieces the CLIP model encodes for ``text``, over all 77-token chunks.

    SD1.x and SDXL read the ``l`` encoder (SDXL's ``g`` encoder must agree on every position), SD2.x its ``h`` one.
    """
    tokenized = clip.tokenize(text)
    key = "l" if "l" in tokenized else next(iter(tokenized))
    encoder_tokenizer = getattr(clip.tokenizer, f"clip_{key}")
    ids = [token for chunk in tokenized[key] for token, *_ in chunk]
    for other, chunks in tokenized.items():
        other_ids = [token for chunk in chunks for token, *_ in chunk]
        if other != key and [isinstance(t, int) for t in other_ids] != [isinstance(t, int) for t in ids]:
            raise ValueError(f"the {other} and {key} text encoders disagree on token positions for this prompt")
    vocabulary = encoder_tokenizer.inv_vocab
    pieces = tuple(vocabulary[token] if isinstance(token, int) else EMBEDDING_PIECE for token in ids)
    return PromptTokens(pieces, _loaded_embeddings(encoder_tokenizer, text))


def _loaded_embeddings(encoder_tokenizer: Any, text: str) -> tuple[str, ...]:
    """Names of the ``embedding:name`` words the tokenizer turns into vectors (missing ones it drops)."""
    identifier = getattr(encoder_tokenizer, "embedding_identifier", "embedding:")
    names = re.findall(re.escape(identifier) + r"([^\s,()\[\]]+)", text)
    if not names or getattr(encoder_tokenizer, "embedding_directory", None) is None:
        return ()
    return tuple(name for name in names if encoder_tokenizer._try_get_embedding(name)[0] is not None)
