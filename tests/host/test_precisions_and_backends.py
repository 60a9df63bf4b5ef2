"""Guidance in the configurations users run but the other tests do not: half-precision UNet weights (fp16, bf16,
and the host's manual-cast path that stores them in half precision and computes in fp32), each of the host's
attention backends, and the host's low-VRAM and no-VRAM loading paths, on the tiny SD1.x model on CPU.

Each case samples 2 steps with Attend-and-Excite guiding the first, and is held to the fp32 default run (the tiny
model's own weights, the host's default attention, full loading): the guidance pass runs, its gradient is finite
and non-zero, the gradient (so the latent's update, which is the gradient times the same step size) points the
same way within the tolerance stated per case, the sampled latent matches within its tolerance, and nothing stays
patched afterwards (model options, attention functions, weights, loading state)."""
import hashlib
from dataclasses import dataclass

import comfy.ldm.modules.attention as host_attention
import comfy.model_management
import pytest
import torch

from devkit.comfy_host import ag
from devkit.sampling import sample_custom
from devkit.tiny_models import tiny_model

bridge = ag("guidance.comfy_bridge")
compat = ag("guidance.comfy_bridge.compat")
schedule_module = ag("guidance.engine.schedule")
update = ag("guidance.engine.update")
attend_excite = ag("guidance.methods.attend_excite")
tokens_module = ag("guidance.subjects.tokens")

PROMPT = "a cat and a frog"
# A random tiny model averages unrelated heads into nearly uniform maps; a larger step than the paper's 20 makes
# the update stand well above rounding. No refinement: one guidance pass per guided step.
SCHEDULE = schedule_module.GuidanceSchedule(scale_factor=2000.0, refinement_points=())


@dataclass
class GuidedRun:
    gradients: list[torch.Tensor]  # of each guidance pass, [B, C, h, w]
    latent: torch.Tensor


def guided_run(model, clip) -> GuidedRun:
    tokens = tokens_module.map_subjects(PROMPT, bridge.prompt_tokens(clip, PROMPT), "cat, frog")
    spec = attend_excite.attend_and_excite(tokens, SCHEDULE)
    gradients = []

    class Gradients(update.GuidanceObserver):
        def pass_finished(self, context, guidance_pass):
            gradients.append(guidance_pass.grad.clone())

    sampler = bridge.guided_sampler("euler", spec, [], observer=Gradients())
    return GuidedRun(gradients, sample_custom(model, clip, sampler, steps=2, seed=5))


def fingerprint(model) -> str:
    """A digest of the model's options and of every weight's values (not their storage)."""
    digest = hashlib.sha1(repr(model.model_options).encode())
    for name, tensor in model.model.diffusion_model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def reference(tiny):
    """The fp32 run everything is held to."""
    checkpoint = tiny("sd1")
    return guided_run(checkpoint.model, checkpoint.clip)


def assert_like_fp32(run: GuidedRun, reference: GuidedRun, gradient_tolerance: float, latent_tolerance: float):
    """Gradients finite, non-zero, and within ``gradient_tolerance`` of fp32 (relative L2 distance), which also
    bounds the angle between the latent updates; the sampled latent within ``latent_tolerance`` (relative L2)."""
    assert len(run.gradients) == len(reference.gradients) == 1  # one guided step, no refinement
    for gradient, expected in zip(run.gradients, reference.gradients):
        assert torch.isfinite(gradient).all() and gradient.abs().max() > 0
        distance = ((gradient - expected).norm() / expected.norm()).item()
        assert distance < gradient_tolerance, distance
    assert torch.isfinite(run.latent).all()
    distance = ((run.latent - reference.latent).norm() / reference.latent.norm()).item()
    assert distance < latent_tolerance, distance


# Measured on CPU (x86-64, torch 2.14.1; current / 2024 host), relative L2 distance to fp32 of the guidance
# gradient and of the sampled latent: fp16 0.027 / 0.013 and 0.010 / 0.009; bf16 0.022 / 0.024 and 0.066 / 0.065;
# manual cast from fp16 0.0013 and 0.0009; from bf16 0.011 and 0.007 (both hosts). The tolerances leave two to
# four times that (bf16's 8-bit mantissa drifts most); the stored weights are rounded to the half-precision type
# in every case, so even fp32 compute differs from the fp32 model.
PRECISIONS = [
    pytest.param(torch.float16, None, 0.06, 0.03, id="fp16"),
    pytest.param(torch.bfloat16, None, 0.15, 0.15, id="bf16"),
    pytest.param(torch.float16, torch.float32, 0.005, 0.005, id="fp16 weights, fp32 compute (manual cast)"),
    pytest.param(torch.bfloat16, torch.float32, 0.03, 0.03, id="bf16 weights, fp32 compute (manual cast)"),
]


@pytest.mark.parametrize("dtype,compute_dtype,gradient_tolerance,latent_tolerance", PRECISIONS)
def test_half_precision_weights_guide_as_fp32(tiny, reference, dtype, compute_dtype, gradient_tolerance,
                                              latent_tolerance):
    model = tiny_model("sd1", dtype, compute_dtype)
    assert model.model.get_dtype() == dtype and model.model.manual_cast_dtype == compute_dtype
    before = fingerprint(model)
    run = guided_run(model, tiny("sd1").clip)
    assert_like_fp32(run, reference, gradient_tolerance, latent_tolerance)
    assert fingerprint(model) == before
    assert model.model.diffusion_model.input_blocks[1][0].in_layers[2].weight.dtype == dtype  # still stored so


# Little free memory makes the split and sub-quadratic backends work in chunks, as on a small GPU.
BACKENDS = [
    pytest.param("attention_pytorch", None, id="pytorch"),
    pytest.param("attention_split", 4 * 2 ** 20, id="split, in chunks"),
    pytest.param("attention_sub_quad", 4 * 2 ** 20, id="sub-quadratic, in chunks"),
]


def with_backend(monkeypatch, backend: str, free_memory: int | None, calls: list):
    """The host's ``backend`` in place of the attention function it chose at import (counting its calls), and, with
    ``free_memory``, that little free memory reported to it."""
    chosen = getattr(host_attention, backend)

    def counted(*args, **kwargs):
        calls.append(1)
        return chosen(*args, **kwargs)

    monkeypatch.setattr(host_attention, "optimized_attention", counted)
    monkeypatch.setattr(host_attention, "optimized_attention_masked", counted)
    if free_memory is not None:
        monkeypatch.setattr(comfy.model_management, "get_free_memory",
                            lambda *args, **kwargs: (free_memory, free_memory) if len(args) > 1 or kwargs
                            else free_memory)


@pytest.mark.parametrize("backend,free_memory", BACKENDS)
def test_each_attention_backend_guides_as_the_default(tiny, reference, monkeypatch, backend, free_memory):
    """ComfyUI picks its attention function at import from its arguments and looks it up at every call: the test
    installs each in its place for one run (the host's own functions, their own chunking). The sub-quadratic one
    cannot be differentiated in key chunks; guidance passes use the host's PyTorch attention in its place."""
    if backend == "attention_sub_quad" and not compat.HAS_ATTENTION_OVERRIDE:
        pytest.skip("the 2024 host has no attention override for guidance passes to avoid it: its error is tested "
                    "below")
    checkpoint = tiny("sd1")
    calls = []
    before = fingerprint(checkpoint.model)
    defaults = (host_attention.optimized_attention, host_attention.optimized_attention_masked)
    with monkeypatch.context() as patch:
        with_backend(patch, backend, free_memory, calls)
        run = guided_run(checkpoint.model, checkpoint.clip)
    assert calls, f"{backend} was never called"
    # Different summation orders only: gradients and latents agree to float32 rounding amplified by the step.
    assert_like_fp32(run, reference, 1e-4, 1e-4)
    assert (host_attention.optimized_attention, host_attention.optimized_attention_masked) == defaults
    assert fingerprint(checkpoint.model) == before


@pytest.mark.skipif(compat.HAS_ATTENTION_OVERRIDE, reason="the current host guides with it (tested above)")
def test_chunked_sub_quadratic_attention_on_the_2024_host_says_how_to_start_comfyui(tiny, monkeypatch):
    checkpoint = tiny("sd1")
    with monkeypatch.context() as patch:
        with_backend(patch, "attention_sub_quad", 4 * 2 ** 20, [])
        with pytest.raises(RuntimeError, match="attention guidance: this ComfyUI's sub-quadratic attention cannot be "
                                               "differentiated .* --use-pytorch-cross-attention"):
            guided_run(checkpoint.model, checkpoint.clip)


def cast_modules(model) -> int:
    return sum(bool(getattr(module, "comfy_cast_weights", False)) for module in model.model.modules())


@pytest.mark.parametrize("budget", ["half", "none"], ids=["low VRAM (half the weights loaded)",
                                                         "no VRAM (every weight cast at use)"])
def test_low_and_no_vram_loading_guide_as_full_loading(tiny, reference, monkeypatch, budget):
    """On CPU the host always loads fully; the test asks its loader for the budget it gives on a small GPU
    (``LoadedModel.model_load``'s ``lowvram_model_memory``: part of the model, or 0.1 byte as with --novram), so
    the host's partial loading puts the other modules in cast-at-use mode, as it does there."""
    checkpoint = tiny("sd1")
    model = checkpoint.model.clone()
    size = comfy.model_management.module_size(model.model)
    memory = size / 2 if budget == "half" else 0.1
    load = comfy.model_management.LoadedModel.model_load
    seen = []

    def loaded_within_budget(self, lowvram_model_memory=0, *args, **kwargs):
        return load(self, memory, *args, **kwargs)

    def record_casting(apply_model, options):
        seen.append(cast_modules(model))
        return apply_model(options["input"], options["timestep"], **options["c"])

    model.set_model_unet_function_wrapper(record_casting)
    before = fingerprint(checkpoint.model)
    comfy.model_management.unload_all_models()
    try:
        with monkeypatch.context() as patch:
            patch.setattr(comfy.model_management.LoadedModel, "model_load", loaded_within_budget)
            run = guided_run(model, checkpoint.clip)
    finally:
        comfy.model_management.unload_all_models()
    total = sum(hasattr(module, "comfy_cast_weights") for module in model.model.modules())
    assert seen and all(0 < count for count in seen)  # every model call ran with weights cast at use
    assert all(count < total for count in seen) if budget == "half" else all(count == total for count in seen)
    assert_like_fp32(run, reference, 1e-4, 1e-4)  # the same weights, cast to the same dtype
    assert cast_modules(model) == 0 and cast_modules(checkpoint.model) == 0  # unloading restored every module
    assert fingerprint(checkpoint.model) == before
