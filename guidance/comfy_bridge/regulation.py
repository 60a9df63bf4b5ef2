"""Attention Regulation (methods.md §5.5) as an attn2 patch: the conditional branch's cross-attention logits get an
optimised bias inside the model, so every sampler node runs it. Patches hold no run state; a RegulationRun in
transformer_options does.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..attention import attend, split_heads
from ..layers import AttentionSite, map_size
from ..regulation import RegulationConfig, RegulationDiagnostics, initial_weights, regulate, supports_map
from ..tokens import SubjectTokens
from .sites import guidance_sites, host_attention

logger = logging.getLogger("attention_guidance")

REGULATION_RUN_KEY = "attention_regulation_run"
REGULATION_WRAPPER_KEY = "attention_guidance_regulation"
_SIGMA_TOLERANCE = 1e-4  # relative: sigmas closer than this are one schedule point
_END_OF_TEXT = "<|endoftext|>"


def regulation_sites(model: Any) -> list[AttentionSite]:
    """The layers Attention Regulation edits: the latent/4 cross-attention layers outside the middle block.

    The authors edit diffusers' ``down_blocks.2`` and ``up_blocks.1`` of SD2 (the 16×16 blocks at 512 px): ``input 7,
    8`` and ``output 3, 4, 5`` in SD1.x/SD2.x, ``input 7, 8`` and ``output 0, 1, 2`` (every block index) in SDXL.
    """
    return [site for site in guidance_sites(model) if site.block[0] != "middle"]


@dataclass(frozen=True)
class RegulationSpec:
    """What the regulation patch edits: every subject token position, the first ``<|endoftext|>`` position (used in
    reference mode), the prompt's token count and the settings (``config.edit_steps`` first steps are edited)."""

    targets: tuple[int, ...]
    eos_position: int | None
    token_count: int
    config: RegulationConfig

    @classmethod
    def from_tokens(cls, tokens: SubjectTokens, config: RegulationConfig) -> RegulationSpec:
        targets = tuple(sorted({position for positions in tokens.subject_positions for position in positions}))
        if not targets:
            raise ValueError("the tokens name no subject; list the subjects in the text encoder's subjects input")
        eos_position = next((i for i, piece in enumerate(tokens.pieces) if piece == _END_OF_TEXT), None)
        if config.mode == "reference" and eos_position is None:
            raise ValueError("reference mode restores the <|endoftext|> column, but this prompt has no such token")
        return cls(targets, eos_position, tokens.token_count, config)


@dataclass(frozen=True)
class RegulationEvent:
    """One edited layer call, for diagnostics: ``before`` and ``after`` are the conditional rows' probabilities
    ``[images, heads, h·w, T]`` without and with the edit (fp32); ``state`` ``[images, heads, h, w, S]`` is the
    raw best bias the next step blends with, ``diagnostics`` what the search did (its ``ema_partner`` is the bias
    this step blended with)."""

    layer: tuple[str, int, int]
    branch: int
    step: int
    height: int
    width: int
    targets: tuple[int, ...]
    before: torch.Tensor
    after: torch.Tensor
    state: torch.Tensor
    diagnostics: RegulationDiagnostics


@dataclass(frozen=True)
class _LayerMemory:
    step: int
    partner: torch.Tensor | None  # what this step blended with (None: the random initial pattern)
    state: torch.Tensor  # this step's raw best bias: the next step's partner


class RegulationRun:
    """State of one sampling run: its step index and each edited layer's bias memory for the EMA across steps.

    Memory is keyed by layer ``(block, id, block_index)``, conditional branch and map size, never by call order
    (trap T23). A layer called again at the same step (heun's correction, split CFG batches) blends with the same
    partner as its first call and replaces that call's state.

    Step index of a call at noise level σ:
    * with the run's schedule (current host: ``sample_sigmas``): the step ``i`` with ``σ_i ≥ σ > σ_{i+1}``, so a
      sampler's evaluations between schedule points belong to the step they are taken in;
    * without it (2024 host): the number of distinct, decreasing σ seen before in this run. A σ above the last one
      starts a new run (every run starts at its highest noise), which also clears the memory. This counts exactly for
      samplers that evaluate the model at schedule points (euler, euler_ancestral, heun, dpmpp_2m, lms, ddim, uni_pc,
      lcm); samplers with midpoint evaluations (dpm_2, dpmpp_2s_ancestral, dpmpp_sde) count each midpoint as a step.
      A second pass that resumes below the first pass's last σ (KSamplerAdvanced start_at_step) continues its count.

    Initial weights come from a generator per (noise seed, step, layer, branch, image), never the global RNG (trap
    T17), so each image's edit is independent of its batch. The noise seed is known on the current host only.
    """

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self._memory: dict[tuple, _LayerMemory] = {}
        self._seen: list[float] = []
        self._warned: set[str] = set()
        self._last: tuple[torch.Tensor, int] | None = None
        self._schedule: tuple[torch.Tensor, list[float]] | None = None

    def __deepcopy__(self, memo: dict) -> RegulationRun:
        # The host deep-copies model options; every copy must reach this one run.
        return self

    def step(self, sigmas: torch.Tensor, schedule: torch.Tensor | None) -> int:
        """The step index of a model call at ``sigmas`` (``[B]``, the call's noise levels)."""
        if self._last is not None and self._last[0] is sigmas:  # the other layers of the same model call
            return self._last[1]
        sigma = float(sigmas.max())
        step = self._scheduled_step(sigma, schedule) if schedule is not None else self._counted_step(sigma)
        self._last = (sigmas, step)
        return step

    def _scheduled_step(self, sigma: float, schedule: torch.Tensor) -> int:
        if self._schedule is None or self._schedule[0] is not schedule:
            self._schedule = (schedule, schedule.tolist())
        at_or_above = sum(1 for point in self._schedule[1] if point >= sigma * (1 - _SIGMA_TOLERANCE))
        return max(at_or_above - 1, 0)

    def _counted_step(self, sigma: float) -> int:
        if self._seen and sigma > self._seen[-1] * (1 + _SIGMA_TOLERANCE):
            self._seen.clear()
            self._memory.clear()
            self._warned.clear()
        if not self._seen or sigma < self._seen[-1] * (1 - _SIGMA_TOLERANCE):
            self._seen.append(sigma)
        return len(self._seen) - 1

    def partner(self, key: tuple, step: int) -> torch.Tensor | None:
        """The bias to blend with at ``step``: the last earlier step's state, or None (the random initial pattern)."""
        memory = self._memory.get(key)
        if memory is None or memory.step > step:
            return None
        return memory.partner if memory.step == step else memory.state

    def remember(self, key: tuple, step: int, partner: torch.Tensor | None, state: torch.Tensor) -> None:
        self._memory[key] = _LayerMemory(step, partner, state)

    def generator(self, *parts: Any) -> torch.Generator:
        """A CPU generator seeded from the run's noise seed and ``parts`` (same draws on every device)."""
        digest = hashlib.blake2b(repr((self.seed, *parts)).encode(), digest_size=8).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest, "little"))

    def warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            logger.warning(message)


def _conditional_chunks(cond_or_uncond: list[int], batch: int) -> list[tuple[int, list[int]]]:
    """``(chunk index, rows)`` of each positive-prompt chunk of a batched call."""
    size = batch // len(cond_or_uncond)
    return [
        (index, list(range(index * size, (index + 1) * size)))
        for index, kind in enumerate(cond_or_uncond)
        if kind == 0
    ]


class RegulationPatch:
    """attn2 replace patch that edits the conditional rows' logits during the first ``edit_steps`` steps.

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
        return self.output_and_edit(q, k, v, extra_options)[0]

    def output_and_edit(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The layer output and, for an edited call, the conditional rows' edited probabilities ``[rows, heads,
        h·w, T]`` (fp32, rows in batch order), which a recorder wrapping this patch records as the layer's."""
        run: RegulationRun | None = extra_options.get(REGULATION_RUN_KEY)
        if run is None:
            return self._output(q, k, v, extra_options), None
        step = run.step(extra_options["sigmas"], extra_options.get("sample_sigmas"))
        chunks = _conditional_chunks(extra_options["cond_or_uncond"], q.shape[0])
        if step >= self.spec.config.edit_steps or not chunks:
            return self._output(q, k, v, extra_options), None
        height, width = map_size(*extra_options["original_shape"][2:], self.downsample)
        if not supports_map(height, width):
            run.warn_once(
                f"Attention Regulation edits nothing: its layers' attention maps are {height}x{width} at this image "
                "size and need at least 16x16 (images of about 512x512 px or more for SD1.x/SD2.x)"
            )
            return self._output(q, k, v, extra_options), None
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
        q_heads, k_heads = split_heads(q.float(), heads), split_heads(k.float(), heads)
        logits = q_heads @ k_heads.transpose(-1, -2) * q_heads.shape[-1] ** -0.5
        images, targets, layer = q.shape[0], self.spec.targets, key[0]
        initial = torch.cat([
            initial_weights(run.generator(step, layer, position, image), 1, heads, height, width, len(targets))
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
            raise ValueError(
                f"Attention Regulation: the subject tokens come from a prompt of {count} tokens, but the positive "
                f"conditioning has {tokens}; connect the tokens output of the text encoder that encodes the positive "
                "prompt"
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
        plain = host_attention(q[others], k[others], v[others], extra_options)
        out = plain.new_empty((q.shape[0], *plain.shape[1:]))
        out = out.index_copy(0, torch.tensor(others, device=q.device), plain)
        return out.index_copy(0, index, conditional.to(plain.dtype))

    def _output(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        if self.wrapped is not None:
            return self.wrapped(q, k, v, extra_options)
        return host_attention(q, k, v, extra_options)


def _start_regulation_run(executor: Any, noise: torch.Tensor, latent_image: torch.Tensor, sampler: Any,
                          sigmas: torch.Tensor, denoise_mask: torch.Tensor | None = None,
                          callback: Callable | None = None, disable_pbar: bool = False,
                          seed: int | None = None) -> torch.Tensor:
    """OUTER_SAMPLE wrapper (current host): a fresh :class:`RegulationRun` for each sampling run, dropped after it."""
    options = executor.class_obj.model_options["transformer_options"]  # this run's copy (CFGGuider.sample)
    options[REGULATION_RUN_KEY] = RegulationRun(seed)
    try:
        return executor(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)
    finally:
        options.pop(REGULATION_RUN_KEY, None)


def with_regulation(model: Any, spec: RegulationSpec,
                    observer: Callable[[RegulationEvent], None] | None = None) -> Any:
    """A clone of ``model`` that runs Attention Regulation in every sampling run; ``edit_steps == 0`` gives a plain
    clone. Applying it to a regulated model replaces the earlier regulation; other packs' attn2 patches are kept.

    Per-run state: the current host creates a :class:`RegulationRun` per run in an OUTER_SAMPLE wrapper (with the
    noise seed) and reads the step from ``sample_sigmas``. The 2024 host has neither, so the clone carries one run
    that counts noise levels and restarts when the noise level rises (see :class:`RegulationRun`).
    """
    sites = regulation_sites(model)
    clone = model.clone()
    if spec.config.edit_steps == 0:
        return clone
    existing = clone.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for site in sites:
        for key in site.keys():
            wrapped = existing.get(key, existing.get(key[:2]))
            if isinstance(wrapped, RegulationPatch):
                wrapped = wrapped.wrapped
            clone.set_model_attn2_replace(RegulationPatch(site.downsample, spec, observer, wrapped), *key)
    if hasattr(clone, "add_wrapper_with_key"):  # current host
        import comfy.patcher_extension

        outer_sample = comfy.patcher_extension.WrappersMP.OUTER_SAMPLE
        clone.remove_wrappers_with_key(outer_sample, REGULATION_WRAPPER_KEY)
        clone.add_wrapper_with_key(outer_sample, REGULATION_WRAPPER_KEY, _start_regulation_run)
    else:  # early-2024 host: no wrappers, no sample_sigmas
        clone.model_options["transformer_options"][REGULATION_RUN_KEY] = RegulationRun(seed=None)
    return clone
