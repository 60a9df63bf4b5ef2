"""Attention Regulation as an attn2 patch: the conditional branch's cross-attention logits get an optimised bias
inside the model, so every sampler node runs it (docs/methods.md, Attention Regulation). Patches hold no run state;
a :class:`~..regulation.run.RegulationRun` in the sampling run's transformer options does.
"""
from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any

import torch

from ..capture.attention import attend, attention_logits
from ..capture.blocks import resolve_blocks
from ..capture.sites import AttentionSite, map_size
from ..engine.steps import StepClock
from ..regulation import initial_weights, regulate, supports_map
from ..regulation.run import RegulationEvent, RegulationRun, RegulationSpec
from .compat import HAS_MODEL_WRAPPERS, NoiseLevelRuns, WrappersMP, entry_uuid, show_on_node
from .conditioning import TOKENS_HINT, PromptMismatchError, subject_entries
from .dit.families import dit_family, is_transformer
from .dit.regulation import (
    REGULATED_ENTRIES_KEY,
    REGULATION_GRID_KEY,
    REGULATION_RUN_KEY,
    image_token_grid,
    with_regulated_blocks,
)
from .patches import entry_chunks, layer_output, with_attn2_patches
from .sampling import step_clock
from .sites import SUPPORTED_FAMILIES, UnsupportedModelError, guidance_sites

REGULATION_WRAPPER_KEY = "attention_guidance_regulation"


def regulation_sites(model: Any) -> list[AttentionSite]:
    """The layers Attention Regulation edits: the latent/4 cross-attention layers outside the middle block.

    The authors edit diffusers' ``down_blocks.2`` and ``up_blocks.1`` of SD2 (the 16×16 blocks at 512 px): ``input 7,
    8`` and ``output 3, 4, 5`` in SD1.x/SD2.x, ``input 7, 8`` and ``output 0, 1, 2`` (every block index) in SDXL.
    """
    return [site for site in guidance_sites(model) if site.block[0] != "middle"]


def _current_run(extra_options: dict) -> RegulationRun | None:
    runs = extra_options.get(REGULATION_RUN_KEY)
    if isinstance(runs, NoiseLevelRuns):  # 2024 host
        return runs.run_at(float(extra_options["sigmas"].max()))
    return runs


class RegulationPatch:
    """attn2 replace patch that edits the conditional rows' logits during the run's edit window (the first
    ``edit_percent`` % of the steps).

    For each positive-prompt chunk it computes ``Q Kᵀ / √d`` in fp32, lets :func:`regulate` search the bias on the
    target columns, and returns ``softmax(edited) @ V``; other rows, other steps and maps smaller than 16×16 get the
    host's attention. A patch another pack installed on the layer (``wrapped``) still computes the output; the edit
    then adds its change to standard attention, ``(P_edited − P) @ V``, to that output. The run state arrives through
    ``transformer_options`` (:class:`RegulationRun`); without one the layer is left as it is. ``observer``, a plain
    function, receives a :class:`RegulationEvent` for every edited call.
    """

    def __init__(self, downsample: int, spec: RegulationSpec, observer: Callable[[RegulationEvent], None] | None = None,
                 wrapped: Callable | None = None) -> None:
        self.downsample = downsample
        self.spec = spec
        self.observer = observer
        self.wrapped = wrapped

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        return self.output_and_probabilities(q, k, v, extra_options)[0]

    def output_and_probabilities(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict
                                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The layer output and, for an edited call, the conditional rows' edited probabilities ``[rows, heads,
        h·w, T]`` (fp32, rows in batch order), which a recorder wrapping this patch records as the layer's
        (:class:`~.patches.ReportsAttention`)."""
        run = _current_run(extra_options)
        if run is None:
            return layer_output(self.wrapped, q, k, v, extra_options), None
        sigma = float(extra_options["sigmas"].max())
        chunks = entry_chunks(extra_options, q.shape[0], extra_options.get(REGULATED_ENTRIES_KEY))
        if not run.edits(sigma) or not chunks:
            return layer_output(self.wrapped, q, k, v, extra_options), None
        step = run.step_of(sigma)
        height, width = map_size(*extra_options["original_shape"][2:], self.downsample)
        if not supports_map(height, width):
            run.warn_once(
                f"Attention Regulation edits nothing: its layers' attention maps are {height}x{width} at this image "
                "size and need at least 16x16 (images of about 512x512 px or more for SD1.x/SD2.x)"
            )
            return layer_output(self.wrapped, q, k, v, extra_options), None
        layer = (*extra_options["block"], extra_options["block_index"])
        uuids = extra_options.get("uuids")  # current host: tells several positive conds apart
        rows = [row for _, chunk_rows in chunks for row in chunk_rows]
        outputs, probabilities = zip(*(
            self._edit(q[chunk_rows], k[chunk_rows], v[chunk_rows], extra_options["n_heads"], run, step,
                       (layer, uuids[index] if uuids else position, height, width), position, height, width)
            for position, (index, chunk_rows) in enumerate(chunks)
        ))
        return self._combine(q, k, v, extra_options, rows, list(outputs)), torch.cat(probabilities)

    def _edit(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, run: RegulationRun, step: int,
              key: tuple, position: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One chunk's rows ``[images, h·w, heads·d]``: ``P_edited @ V``, or ``(P_edited − P) @ V`` when another
        pack's patch computes the output (fp32); and ``P_edited`` ``[images, heads, h·w, T]``."""
        k, v = self._prompt_context(k), self._prompt_context(v)
        logits = attention_logits(q, k, heads)
        images, targets, layer = q.shape[0], self.spec.targets, key[0]
        initial = torch.cat([
            initial_weights(run.generator(step, layer, position, run.image_key(image)), 1, heads, height, width,
                            len(targets))
            for image in range(images)
        ])
        partner = run.partner(key, step)
        result = regulate(logits, height, width, targets, step, partner, initial, self.spec.eos_position,
                          self.spec.config)
        run.remember(key, step, partner, result.state)
        before = logits.softmax(dim=-1) if self.observer is not None or self.wrapped is not None else None
        if self.observer is not None:
            self.observer(RegulationEvent(layer, position, step, height, width, targets, before, result.probabilities,
                                          result.state, result.diagnostics))
        if self.wrapped is not None:
            return attend(result.probabilities - before, v.float()), result.probabilities
        return attend(result.probabilities, v.float()), result.probabilities

    def _prompt_context(self, context: torch.Tensor) -> torch.Tensor:
        """The positive prompt's ``[images, T, ·]`` keys or values; a context the host repeated to match a longer
        negative prompt (``CONDCrossAttn.concat``) is cut back to one copy, which leaves the attention output equal."""
        tokens, count = context.shape[1], self.spec.token_count
        if tokens == count:
            return context
        first = context[:, :count]
        if tokens % count or not torch.allclose(first.repeat(1, tokens // count, 1), context, rtol=1e-3, atol=1e-3):
            raise PromptMismatchError(
                f"Attention Regulation: the subject tokens come from a prompt of {count} tokens, but the positive "
                f"conditioning has {tokens}; {TOKENS_HINT}"
            )
        return first

    def _combine(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict, rows: list[int],
                 edited: list[torch.Tensor]) -> torch.Tensor:
        """The layer output: the edited conditional ``rows`` with the other rows as the layer computes them."""
        index = torch.tensor(rows, device=q.device)
        if self.wrapped is not None:
            out = self.wrapped(q, k, v, extra_options)
            return out.index_copy(0, index, (out[rows].float() + torch.cat(edited)).to(out.dtype))
        conditional = torch.cat(edited).to(q.dtype)
        others = sorted(set(range(q.shape[0])) - set(rows))
        if not others:
            return conditional
        plain = layer_output(None, q[others], k[others], v[others], extra_options)
        out = plain.new_empty((q.shape[0], *plain.shape[1:]))
        out = out.index_copy(0, torch.tensor(others, device=q.device), plain)
        return out.index_copy(0, index, conditional.to(plain.dtype))


class _ClockedGuider:
    """The guider a sampler calls, seen through a run's step clock: every sampler model call ticks it."""

    def __init__(self, guider: Any, clock: StepClock) -> None:
        self._guider = guider
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._guider, name)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._clock.starts_step(float(sigma.flatten()[0]))
        return self._guider(x, sigma, *args, **kwargs)


def _regulated_entries(positive: list[dict], spec: RegulationSpec) -> frozenset | None:
    """The uuids of the positive entries encoded from the spec's prompt (None: every entry, when there is one).

    Raises :class:`~.conditioning.PromptMismatchError` when no entry was encoded from it."""
    if spec.tokens is None:
        return None
    try:
        entries = subject_entries(positive, spec.tokens)
    except PromptMismatchError as error:
        raise PromptMismatchError(f"Attention Regulation: {error}") from error
    return None if len(positive) == 1 else frozenset(entry_uuid(entry) for entry in entries)


def _image_keys(noise: torch.Tensor | None) -> tuple[str, ...]:
    """A digest of each image's initial noise: it names the image whatever its place in the batch (the host draws
    the same noise for an image sampled alone with its ``batch_index``)."""
    if noise is None:
        return ()
    rows = noise.detach().float().cpu().flatten(1)
    return tuple(hashlib.blake2b(row.numpy().tobytes(), digest_size=8).hexdigest() for row in rows)


def _regulate_sampling_run(spec: RegulationSpec, node_id: str | None, executor: Any, guider: Any,
                           sigmas: torch.Tensor, extra_args: dict, callback: Callable | None, *args: Any,
                           **kwargs: Any) -> torch.Tensor:
    """SAMPLER_SAMPLE wrapper: a fresh :class:`RegulationRun` for each sampling run, dropped after it, whose steps
    follow the sampler's model calls and step reports (:class:`~..engine.steps.StepClock`, as latent guidance), and
    which edits the positive entries encoded from the spec's prompt; its warnings are shown on the Attention
    Regulation node ``node_id``."""
    clock = step_clock(sigmas, getattr(executor.class_obj, "sampler_function", None))
    options = extra_args["model_options"]["transformer_options"]  # this run's copy
    noise = args[0] if args else kwargs.get("noise")  # KSAMPLER.sample(..., callback, noise, latent_image, ...)

    def step_finished(*report: Any) -> None:
        clock.finish_step()
        if callback is not None:
            callback(*report)

    edited_steps = spec.config.edited_steps(clock.steps)
    options[REGULATED_ENTRIES_KEY] = _regulated_entries(guider.conds["positive"], spec)
    options[REGULATION_RUN_KEY] = RegulationRun(extra_args.get("seed"), lambda sigma: clock.step,
                                                lambda sigma: clock.step < edited_steps, _image_keys(noise),
                                                lambda message: show_on_node(node_id, f"Warning: {message}"))
    options[REGULATION_GRID_KEY] = image_token_grid(noise)  # transformers need the latent's grid
    try:
        return executor(_ClockedGuider(guider, clock), sigmas, extra_args, step_finished, *args, **kwargs)
    finally:
        options.pop(REGULATION_RUN_KEY, None)
        options.pop(REGULATED_ENTRIES_KEY, None)
        options.pop(REGULATION_GRID_KEY, None)


def with_regulation(model: Any, spec: RegulationSpec, observer: Callable[[RegulationEvent], None] | None = None,
                    node_id: str | None = None, dit_blocks: tuple[int, ...] | None = None) -> Any:
    """A clone of ``model`` that runs Attention Regulation in every sampling run; an empty edit window gives a plain
    clone. Applying it to a regulated model replaces the earlier regulation; other packs' attn2 patches are kept.
    On FLUX, Chroma and SD3 it regulates the joint blocks ``dit_blocks`` (None: every one) in default mode.

    A run's state is made per sampling run by a SAMPLER_SAMPLE wrapper (with the noise seed and each image's
    noise); the 2024 host has no such hook, so there the clone carries :class:`~.compat.NoiseLevelRuns`. Warnings
    of a run are shown on the node ``node_id`` (the Attention Regulation node) where the host can.
    """
    diffusion_model = model.model.diffusion_model
    family = dit_family(diffusion_model)
    if family is None and is_transformer(diffusion_model):
        raise UnsupportedModelError(
            f"this model is a {type(diffusion_model).__name__} transformer, which Attention Regulation does not "
            f"read; it supports {SUPPORTED_FAMILIES}. Use one of those models.")
    sites = regulation_sites(model) if family is None else []
    if family is not None:
        if spec.config.mode != "default":
            raise ValueError("on FLUX, Chroma and SD3 Attention Regulation runs in default mode only: reference mode "
                             "reproduces the authors' UNet arithmetic (restored start and end tokens), which a "
                             "joint attention has no place for")
        blocks = resolve_blocks(dit_blocks, family.blocks)
    clone = model.clone()
    if not spec.config.edits:
        return clone
    for site in sites:
        clone.model_options = with_attn2_patches(
            clone.model_options, site.keys(),
            lambda wrapped, site=site: RegulationPatch(site.downsample, spec, observer, wrapped), RegulationPatch)
    if family is not None:
        clone.model_options = with_regulated_blocks(clone.model_options, blocks, spec, family.text_offset, observer)
    if HAS_MODEL_WRAPPERS:
        clone.remove_wrappers_with_key(WrappersMP.SAMPLER_SAMPLE, REGULATION_WRAPPER_KEY)
        clone.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, REGULATION_WRAPPER_KEY,
                                   functools.partial(_regulate_sampling_run, spec, node_id))
    else:
        clone.model_options["transformer_options"][REGULATION_RUN_KEY] = NoiseLevelRuns(model, spec.config)
    return clone
