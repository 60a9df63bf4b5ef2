"""The one module that touches ComfyUI internals: layer discovery, the attention recorder patch, runs and tokens.

Everything here works on the current ComfyUI and on the early-2024 one; where they differ, the difference is
handled here and named.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import comfy.samplers
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, Upsample

from .attention import attend, attention_probabilities, split_heads
from .update import PassResult, guide_latent, latent_gradient, make_autograd_ready
from .layers import GUIDANCE_LEVEL, AttentionSite, map_size, sites_at_level
from .regulation import RegulationConfig, RegulationDiagnostics, initial_weights, regulate, supports_map
from .spec import GuidanceSpec
from .store import AttentionStore
from .tokens import EMBEDDING_PIECE, PromptTokens, SubjectTokens

logger = logging.getLogger("attention_guidance")

SUPPORTED_FAMILIES = "SD1.x, SD2.x and SDXL (UNet models with text cross-attention, fine-tunes and merges included)"
STORE_KEY = "attention_guidance_store"


class UnsupportedModelError(ValueError):
    pass


def attention_sites(model: Any) -> list[AttentionSite]:
    """Every SpatialTransformer of the model's UNet with its block key, depth and down-sampling factor.

    ``model`` is a ModelPatcher (MODEL), the BaseModel inside it, or the diffusion model itself.
    """
    base_model = getattr(model, "model", model)
    unet = getattr(base_model, "diffusion_model", base_model)
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


class _ForwardComplete(Exception):
    """Raised by the recorder once a guidance pass has every map it needs; the UNet's remaining blocks are skipped."""


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
        if store.complete:
            raise _ForwardComplete  # every map the loss needs is in; the UNet's remaining blocks cannot change it
        if store.guidance_pass and self.wrapped is None and len(rows) == q.shape[0]:
            return attend(probabilities, v)  # one attention computation for the output and the gradient
        return self._output(q, k, v, extra_options)

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


# --- Sampling runs: step detection, recording and guided latent updates -------------------------------------------

# Samplers whose corrector evaluates the model at the *next* schedule sigma after the step's callback: the first
# call at that sigma is the corrector's temporary tensor, the second one starts the next step.
_CORRECTOR_CALLS_AT_NEXT_SIGMA = {"sample_heun": 1, "sample_heunpp2": 1}
# Samplers that choose their own sigmas: no step of the schedule can be matched, so guidance cannot run.
_OWN_SCHEDULE_SAMPLERS = {"sample_dpm_fast", "sample_dpm_adaptive"}
# The 2024 host adds the transformer residual in place (``x += n``), which breaks autograd without a guard.
_NEEDS_SAVED_TENSOR_GUARD = "x += n" in inspect.getsource(comfy_attention.BasicTransformerBlock)


@dataclass
class StepMaps:
    """One sampling step's aggregated conditional maps, ``[B, h, w, T]`` at latent/4, detached.

    From the guidance pass on guided steps (what the loss saw), from the CFG pass's positive half otherwise.
    """

    step: int
    sigma: float
    maps: torch.Tensor
    guided: bool = False


class GuidanceUnavailableError(RuntimeError):
    pass


def _positive_conds(model_k: Any, extra_args: dict) -> list:
    guider = model_k.inner_model
    positive = guider.conds["positive"] if hasattr(guider, "conds") else extra_args["cond"]  # current / 2024 host
    # ControlNet models are loaded as inference tensors and cannot take part in a backward pass: the guidance
    # pass reads attention without them (the sampling passes still use them).
    return [{key: value for key, value in cond.items() if key != "control"} for cond in positive]


def _conditional_forward(base_model: Any, positive: list, x: torch.Tensor, sigma: torch.Tensor,
                         model_options: dict) -> None:
    timestep = sigma.expand(x.shape[0])
    try:
        if hasattr(comfy.samplers, "calc_cond_batch"):
            comfy.samplers.calc_cond_batch(base_model, [positive], x, timestep, model_options)
        else:  # 2024 host
            comfy.samplers.calc_cond_uncond_batch(base_model, positive, None, x, timestep, model_options)
    except _ForwardComplete:
        pass


class SamplingRun:
    """State of one sampling run: step counter, store, record. Created by the sampler function, never shared."""

    def __init__(self, model_k: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict, spec: GuidanceSpec | None,
                 record: list[StepMaps] | None, base_name: str, early_stop: bool) -> None:
        self.model_k = model_k
        self.sigmas = sigmas.tolist()
        self.steps = len(self.sigmas) - 1
        self.spec = spec
        self.record = record
        self.step = 0
        self.step_open = True
        self._skip_at_next_sigma = 0
        self._corrector_calls = _CORRECTOR_CALLS_AT_NEXT_SIGMA.get(base_name, 0)
        self.guided_steps = 0
        base_model = model_k.inner_model.inner_model
        sites = guidance_sites(base_model)
        token_count = positive_token_count(model_k, extra_args)
        options = options_with_recorder(extra_args.get("model_options", {}), sites)
        self.record_store = AttentionStore(token_count)
        self.sampling_options = options_with_store(options, self.record_store)
        if spec is not None and spec.active:
            self._base_model = base_model
            self._positive = _positive_conds(model_k, extra_args)
            layer_calls = sum(site.depth for site in sites)
            self._guidance_store = AttentionStore(token_count, guidance_pass=True,
                                                  expected_rows=x.shape[0] * layer_calls if early_stop else None)
            self._guidance_options = options_with_store(options, self._guidance_store)

    def end_of_step(self) -> None:
        self.step += 1
        self.step_open = True
        self._skip_at_next_sigma = self._corrector_calls

    def is_step_start(self, sigma: float) -> bool:
        if not self.step_open or self.step >= self.steps or sigma != self.sigmas[self.step]:
            return False
        if self._skip_at_next_sigma:
            self._skip_at_next_sigma -= 1
            return False
        self.step_open = False
        return True

    def evaluate(self, sigma: torch.Tensor) -> Callable[[torch.Tensor], PassResult]:
        spec = self.spec

        def forward_and_loss(x: torch.Tensor) -> tuple[list[Any], torch.Tensor, torch.Tensor]:
            store = self._guidance_store
            store.clear()
            with recording(store):
                _conditional_forward(self._base_model, self._positive, x, sigma, self._guidance_options)
            maps = store.aggregate(GUIDANCE_LEVEL)
            results = [term.evaluate(maps, self.step, self.steps) for term in spec.terms]
            return results, spec.total_loss(results), maps

        def evaluate(x: torch.Tensor) -> PassResult:
            make_autograd_ready(self._base_model.diffusion_model)
            return latent_gradient(x, forward_and_loss, _NEEDS_SAVED_TENSOR_GUARD)

        return evaluate


class _StepDenoiser:
    """The sampler's denoiser, seen through a run: guides the latent (in place) at the start of guided steps and
    records each step's maps. Midpoint and corrector evaluations pass straight through."""

    def __init__(self, inner: Any, run: SamplingRun) -> None:
        self.inner_model = inner.inner_model
        self._inner = inner
        self._run = run

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        run = self._run
        sigma_value = float(sigma.flatten()[0])
        if not run.is_step_start(sigma_value):
            return self._inner(x, sigma, **kwargs)
        step = run.step
        if run.spec is not None and run.spec.guides(step, run.steps):
            guided, first, report = guide_latent(x, sigma_value, step, run.steps, run.spec,
                                                 run.evaluate(sigma.flatten()[:1]),
                                                 comfy.model_management.throw_exception_if_processing_interrupted)
            with torch.inference_mode():
                x.copy_(guided)
            run.guided_steps += 1
            logger.debug("attention guidance: step %d loss %s, %d refinement steps", step,
                         [round(v, 4) for v in report.losses[0].tolist()], report.refinement_steps)
            if run.record is not None:
                run.record.append(StepMaps(step, sigma_value, first.maps, guided=True))
            return self._inner(x, sigma, **kwargs)
        if run.record is None:
            return self._inner(x, sigma, **kwargs)
        store = run.record_store
        store.clear()
        with recording(store):
            out = self._inner(x, sigma, **kwargs)
        run.record.append(StepMaps(step, sigma_value, store.aggregate(GUIDANCE_LEVEL).detach()))
        store.clear()
        return out


def guided_sampler_function(base_function: Callable, spec: GuidanceSpec | None, record: list[StepMaps] | None,
                            early_stop: bool = True) -> Callable:
    """A k-diffusion sampler function that runs ``base_function`` with guidance and/or recording.

    Guidance (``spec``) updates the sampler's own latent at the start of each guided step; ``record`` (a list the
    caller owns) receives every step's maps. With neither, the base function runs untouched.
    """
    name = getattr(base_function, "__name__", "")
    if spec is not None and spec.active and name in _OWN_SCHEDULE_SAMPLERS:
        raise GuidanceUnavailableError(
            f"the {name.removeprefix('sample_')} sampler chooses its own steps, so guidance cannot follow its "
            f"schedule; pick another sampler (euler, dpmpp_2m, ...)"
        )

    def sample(model_k: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
               callback: Callable | None = None, disable: bool | None = None, **options: Any) -> torch.Tensor:
        if (spec is None or not spec.active) and record is None:
            return base_function(model_k, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                                 **options)
        extra_args = dict(extra_args or {})
        run = SamplingRun(model_k, x, sigmas, extra_args, spec, record, name, early_stop)
        extra_args["model_options"] = run.sampling_options
        if record is not None:
            record.clear()

        def step_callback(info: dict) -> None:
            run.end_of_step()
            if callback is not None:
                callback(info)

        out = base_function(_StepDenoiser(model_k, run), x, sigmas, extra_args=extra_args, callback=step_callback,
                            disable=disable, **options)
        if spec is not None and spec.active and run.guided_steps == 0 and any(
                spec.guides(step, run.steps) for step in range(run.steps)):
            logger.warning("attention guidance: no sampling step matched the schedule (sampler %s); the image is "
                           "unguided", name)
        return out

    return sample


def guided_sampler(sampler_name: str, spec: GuidanceSpec | None, record: list[StepMaps] | None = None,
                   early_stop: bool = True) -> Any:
    """A SAMPLER (for SamplerCustom and friends) running ``sampler_name`` with guidance and/or recording."""
    base = comfy.samplers.sampler_object(sampler_name)
    if not hasattr(base, "sampler_function"):
        raise GuidanceUnavailableError(f"the {sampler_name} sampler of this ComfyUI version cannot be guided; "
                                       f"pick a k-diffusion sampler (euler, dpmpp_2m, ...)")
    function = guided_sampler_function(base.sampler_function, spec, record, early_stop)
    return comfy.samplers.KSAMPLER(function, extra_options=base.extra_options, inpaint_options=base.inpaint_options)


def recording_sampler(sampler_name: str, record: list[StepMaps]) -> Any:
    """A SAMPLER that records each step's maps into ``record`` without changing the image."""
    return guided_sampler(sampler_name, None, record)


# --- The three doors -------------------------------------------------------------------------------------------------

GUIDANCE_WRAPPER_KEY = "attention_guidance"


def with_guidance(model: Any, spec: GuidanceSpec) -> Any:
    """A clone of ``model`` with which any sampler node (the stock KSampler too) samples with guidance.

    A SAMPLER_SAMPLE wrapper swaps the guided sampler function in for the one the node chose, for that call only.
    ComfyUI versions before December 2024 have no such wrapper.
    """
    try:
        from comfy.patcher_extension import WrappersMP
    except ImportError as error:
        raise GuidanceUnavailableError(
            "this ComfyUI version has no sampler wrappers, so a guided MODEL cannot steer the stock KSampler. Use "
            "'Guided KSampler' (AG_GuidedKSampler) or 'Guided Sampler' (AG_GuidedSampler) with SamplerCustom instead, "
            "or update ComfyUI."
        ) from error

    def sample_with_guidance(executor: Any, *args: Any, **kwargs: Any) -> Any:
        sampler = executor.class_obj
        original = sampler.sampler_function
        sampler.sampler_function = guided_sampler_function(original, spec, None)
        try:
            return executor(*args, **kwargs)
        finally:
            sampler.sampler_function = original

    clone = model.clone()
    clone.remove_wrappers_with_key(WrappersMP.SAMPLER_SAMPLE, GUIDANCE_WRAPPER_KEY)
    clone.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, GUIDANCE_WRAPPER_KEY, sample_with_guidance)
    return clone


def ksampler_sigmas(model: Any, steps: int, sampler_name: str, scheduler: str, denoise: float) -> torch.Tensor:
    """The schedule the stock KSampler uses for these settings (its own computation, on either host)."""
    target = model if hasattr(comfy.samplers, "CFGGuider") else model.model  # the 2024 KSampler takes the BaseModel
    return comfy.samplers.KSampler(target, steps=steps, device=model.load_device, sampler=sampler_name,
                                   scheduler=scheduler, denoise=denoise, model_options=model.model_options).sigmas


def guided_ksample(model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                   positive: list, negative: list, latent: dict, denoise: float, spec: GuidanceSpec
                   ) -> tuple[dict, list[StepMaps]]:
    """The stock KSampler's sampling (same noise, schedule, preview and progress) with the guided sampler."""
    import comfy.sample
    import comfy.utils
    import latent_preview

    latent_image = latent["samples"]
    if hasattr(comfy.sample, "fix_empty_latent_channels"):
        latent_image = comfy.sample.fix_empty_latent_channels(model, latent_image)
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    sigmas = ksampler_sigmas(model, steps, sampler_name, scheduler, denoise)
    record: list[StepMaps] = []
    sampler = guided_sampler(sampler_name, spec, record)
    callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1)
    samples = comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent_image,
                                         noise_mask=latent.get("noise_mask"), callback=callback,
                                         disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    return {**latent, "samples": samples}, record


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


# ======================================================================================================================
# Attention Regulation (methods.md §5.5): the conditional branch's cross-attention logits get an optimised bias inside
# the model, so every sampler node runs it. Patches hold no run state; a RegulationRun in transformer_options does.
# ======================================================================================================================

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
        run: RegulationRun | None = extra_options.get(REGULATION_RUN_KEY)
        if run is None:
            return self._output(q, k, v, extra_options)
        step = run.step(extra_options["sigmas"], extra_options.get("sample_sigmas"))
        chunks = _conditional_chunks(extra_options["cond_or_uncond"], q.shape[0])
        if step >= self.spec.config.edit_steps or not chunks:
            return self._output(q, k, v, extra_options)
        height, width = map_size(*extra_options["original_shape"][2:], self.downsample)
        if not supports_map(height, width):
            run.warn_once(
                f"Attention Regulation edits nothing: its layers' attention maps are {height}x{width} at this image "
                "size and need at least 16x16 (images of about 512x512 px or more for SD1.x/SD2.x)"
            )
            return self._output(q, k, v, extra_options)
        layer = (*extra_options["block"], extra_options["block_index"])
        uuids = extra_options.get("uuids")  # current host: tells several positive conds apart
        rows = [row for _, chunk_rows in chunks for row in chunk_rows]
        edited = [
            self._edit(q[chunk_rows], k[chunk_rows], v[chunk_rows], extra_options["n_heads"], run, step,
                       (layer, uuids[index] if uuids else position, height, width), position, height, width)
            for position, (index, chunk_rows) in enumerate(chunks)
        ]
        return self._combine(q, k, v, extra_options, rows, edited)

    def _edit(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, run: RegulationRun, step: int,
              key: tuple, position: int, height: int, width: int) -> torch.Tensor:
        """One chunk's rows ``[images, h·w, heads·d]``: ``P_edited @ V``, or ``(P_edited − P) @ V`` when another
        pack's patch computes the output (fp32)."""
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
            return attend(result.probabilities - before, v.float())
        return attend(result.probabilities, v.float())

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
