"""Attention Regulation on diffusion transformers: in the chosen joint blocks, the positive prompt's image rows get
the regulation's bias on the subject columns of the joint attention's logits, passed to the host's attention as its
additive mask through a block-scoped override (docs/methods.md, "Attention Regulation on diffusion transformers").
No gradient flows through the model; the bias is searched on the image rows' text logits, as on a UNet's
cross-attention.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ...capture.attention import split_heads
from ...capture.joint import JointLayout
from ...regulation import initial_weights, regulate, supports_map
from ...regulation.run import RegulationEvent, RegulationRun, RegulationSpec
from ..patches import entry_chunks
from ..recorder import STORE_KEY
from .attention import OVERRIDE_KEY

REGULATION_RUN_KEY = "attention_regulation_run"  # the run the SAMPLER_SAMPLE wrapper puts in transformer options
REGULATION_GRID_KEY = "attention_regulation_grid"  # the run's image token grid (h, w), set beside it
REGULATED_ENTRIES_KEY = "attention_regulation_entries"  # uuids of the positive entries edited (None: all)


def image_token_grid(latent: torch.Tensor) -> tuple[int, int]:
    """The token grid of a patch-2 transformer for a latent ``[B, C, H, W]`` (the host pads odd sizes)."""
    return math.ceil(latent.shape[-2] / 2), math.ceil(latent.shape[-1] / 2)


class RegulationBlockPatch:
    """``patches_replace["dit"][("double_block", index)]`` that regulates one joint block while a regulation run is
    on (sampling passes; a latent guidance's own guidance passes read the unedited attention). A patch another pack
    installed in the slot (``wrapped``) still runs the block. Holds no run state; never copied."""

    def __init__(self, index: int, spec: RegulationSpec, text_offset: int,
                 observer: Callable[[RegulationEvent], None] | None = None, wrapped: Callable | None = None) -> None:
        self.index = index
        self.spec = spec
        self.text_offset = text_offset
        self.observer = observer
        self.wrapped = wrapped

    def __deepcopy__(self, memo: dict) -> RegulationBlockPatch:
        return self

    def __call__(self, args: dict, extra: dict) -> dict:
        options = args["transformer_options"]
        run, grid, store = options.get(REGULATION_RUN_KEY), options.get(REGULATION_GRID_KEY), options.get(STORE_KEY)
        original = extra["original_block"]
        if run is None or grid is None or (store is not None and store.guidance_pass):
            return self.wrapped(args, extra) if self.wrapped else original(args)
        text_tokens, image_tokens = args["txt"].shape[1], args["img"].shape[1]
        layout = JointLayout(self.text_offset, text_tokens - self.text_offset, text_tokens, grid,
                             text_tokens + image_tokens)
        override = BlockRegulation(self, layout, run, options, options.get(OVERRIDE_KEY))
        block_args = {**args, "transformer_options": {**options, OVERRIDE_KEY: override}}
        return self.wrapped(block_args, extra) if self.wrapped else original(block_args)


class BlockRegulation:
    """The block-scoped override of one regulated block call: edits its joint attention (the call of
    ``layout.length`` tokens), passes every other call through."""

    def __init__(self, patch: RegulationBlockPatch, layout: JointLayout, run: RegulationRun, options: dict,
                 chained: Callable | None) -> None:
        self.patch, self.layout, self.run, self.options, self.chained = patch, layout, run, options, chained

    def __call__(self, func: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        q, k = args[0], args[1]
        heads = args[3] if len(args) > 3 else kwargs["heads"]
        length = q.shape[2] if kwargs.get("skip_reshape") else q.shape[1]
        if length == self.layout.length:
            bias = self._bias(q, k, heads, kwargs)
            if bias is not None:
                kwargs = {**kwargs, "mask": bias if kwargs.get("mask") is None else _additive(kwargs["mask"]) + bias}
        if self.chained is not None:
            return self.chained(func, *args, **kwargs)
        return func(*args, **kwargs)

    def _bias(self, q: torch.Tensor, k: torch.Tensor, heads: int, kwargs: dict) -> torch.Tensor | None:
        """``[B, H, L, L]`` additive mask: the regulation's bias on the positive rows' image queries x subject
        columns (every copy of a repeated context), zero elsewhere; None when this call is not edited."""
        spec, run, layout = self.patch.spec, self.run, self.layout
        sigma = float(self.options["sigmas"].max())
        call = {"cond_or_uncond": self.options.get("cond_or_uncond", [0]), "uuids": self.options.get("uuids")}
        chunks = entry_chunks(call, q.shape[0], self.options.get(REGULATED_ENTRIES_KEY))
        if not run.edits(sigma) or not chunks:
            return None
        step = run.step_of(sigma)
        height, width = layout.grid
        if not supports_map(height, width):
            run.warn_once(f"Attention Regulation edits nothing: the transformer's image token grid is {height}x"
                          f"{width} at this image size and needs at least 16x16 (images of 256x256 px or more)")
            return None
        if layout.text_count % spec.token_count:
            raise ValueError(f"Attention Regulation: the subject tokens come from a prompt of {spec.token_count} "
                             f"tokens, but the positive conditioning has {layout.text_count}; connect the tokens "
                             "output of the text encoder that encodes the positive prompt")
        if not kwargs.get("skip_reshape"):  # MMDiT: [B, L, H·D]
            q, k = split_heads(q, heads), split_heads(k, heads)
        mask = torch.zeros(q.shape[0], heads, layout.length, layout.length, dtype=q.dtype, device=q.device)
        copies = layout.text_count // spec.token_count
        columns = torch.tensor([layout.text_start + copy * spec.token_count + target
                                for copy in range(copies) for target in spec.targets], device=q.device)
        image = slice(layout.image_start, layout.image_start + layout.image_count)
        uuids = self.options.get("uuids")
        for position, (index, rows) in enumerate(chunks):
            key = (("double_block", self.patch.index), uuids[index] if uuids else position, height, width)
            applied = self._search(q[rows], k[rows], step, key, position).repeat(1, 1, 1, copies)  # [n, H, N, S·c]
            for offset, row in enumerate(rows):
                mask[row, :, image][..., columns] = applied[offset].to(mask.dtype)
        return mask

    def _search(self, q: torch.Tensor, k: torch.Tensor, step: int, key: tuple, position: int) -> torch.Tensor:
        """One positive chunk's bias search on its image rows' text logits (the first context copy)."""
        spec, run, layout = self.patch.spec, self.run, self.layout
        images, heads, _, dim = q.shape
        height, width = layout.grid
        image = slice(layout.image_start, layout.image_start + layout.image_count)
        text = slice(layout.text_start, layout.text_start + spec.token_count)
        logits = q[:, :, image].float() @ k[:, :, text].float().transpose(-1, -2) * dim ** -0.5
        initial = torch.cat([initial_weights(run.generator(step, key[0], position, image_index), 1, heads, height,
                                             width, len(spec.targets)) for image_index in range(images)])
        partner = run.partner(key, step)
        result = regulate(logits, height, width, spec.targets, step, partner, initial, spec.eos_position, spec.config)
        run.remember(key, step, partner, result.state)
        if self.patch.observer is not None:
            self.patch.observer(RegulationEvent(key[0], position, step, height, width, spec.targets,
                                                logits.softmax(dim=-1), result.probabilities, result.state,
                                                result.diagnostics))
        return result.diagnostics.applied_bias.reshape(images, heads, height * width, len(spec.targets))


def with_regulated_blocks(model_options: dict, blocks: tuple[int, ...], spec: RegulationSpec, text_offset: int,
                          observer: Callable[[RegulationEvent], None] | None) -> dict:
    """Copy-on-write ``model_options`` with a :class:`RegulationBlockPatch` in the replace slot of each block (an
    earlier regulation's replaced, keeping what it wrapped; another pack's wrapped)."""
    transformer_options = dict(model_options.get("transformer_options", {}))
    patches_replace = dict(transformer_options.get("patches_replace", {}))
    dit = dict(patches_replace.get("dit", {}))
    for index in blocks:
        wrapped = dit.get(("double_block", index))
        if isinstance(wrapped, RegulationBlockPatch):
            wrapped = wrapped.wrapped
        dit[("double_block", index)] = RegulationBlockPatch(index, spec, text_offset, observer, wrapped)
    patches_replace["dit"] = dit
    transformer_options["patches_replace"] = patches_replace
    return {**model_options, "transformer_options": transformer_options}


def _additive(mask: torch.Tensor) -> torch.Tensor:
    """A boolean "keep" mask as an additive one."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, -math.inf)
    return mask
