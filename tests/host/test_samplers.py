"""Every sampler of the host: a guided step reaches the sampler's own latent, or the sampler is refused by name.

Each sampler runs the first two steps of a 6-step schedule (128 px, tiny SD1.x) twice with the same seed: recorded
without guidance, and with Attend-and-Excite guiding step 0 alone. The weakest subject's attention at step 1 shows
whether the update of step 0 reached the latent the sampler goes on from.
"""
import comfy.sample
import comfy.samplers
import pytest
import torch

import nodes
from devkit.comfy_host import ag
from devkit.sampling import IS_CURRENT_HOST, encode, ksampler_inputs, sigmas, stock_ksampler

bridge = ag("guidance.comfy_bridge")
schedule_module = ag("guidance.engine.schedule")
attend_excite_method = ag("guidance.methods.attend_excite")
attend_excite = ag("guidance.losses.attend_excite")
tokens_module = ag("guidance.subjects.tokens")

PROMPT = "a cat and a frog"
SAMPLERS = comfy.samplers.KSampler.SAMPLERS
# Refused: dpm_fast / dpm_adaptive choose their own steps; uni_pc(_bh2) pass the model a rescaled copy of their
# latent; sa_solver(_pece) correct each step from the latent before the model call.
REFUSED = {"dpm_fast", "dpm_adaptive", "uni_pc", "uni_pc_bh2", "sa_solver", "sa_solver_pece"}
STEP_ZERO_ONLY = schedule_module.GuidanceSchedule(guided_percent=50.0, refinement_points=(), scale_factor=5000.0)
# A random tiny model spreads attention almost uniformly (the weakest subject's smoothed maximum is about 0.02); a
# step larger than the paper's 20 lifts it far above rounding. Measured gains at step 1 (0.3.64 host): 0.009 to
# 0.015 for the guided samplers, 0.001 for uni_pc, whose update never reaches its own latent.
MIN_GAIN = 0.005


def first_two_steps(model, clip, sampler, seed=5, size=128):
    """SamplerCustom's path over the first two noise levels of a 6-step normal schedule."""
    with torch.inference_mode():
        positive, negative = encode(clip, PROMPT), encode(clip, "")
        latent = nodes.EmptyLatentImage().generate(size, size, 1)[0]["samples"]
        noise = comfy.sample.prepare_noise(latent, seed)
        return comfy.sample.sample_custom(model, noise, 7.0, sampler, sigmas(model, "normal", 6)[:3], positive,
                                          negative, latent, seed=seed)


def weakest_subject_maxima(record, tokens):
    return torch.stack([attend_excite.attend_excite_loss(step.maps, tokens.subject_positions).maxima.min(-1).values[0]
                        for step in record])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_guided_step_reaches_the_samplers_latent_or_the_sampler_is_refused(tiny, sampler):
    checkpoint = tiny("sd1")
    tokens = tokens_module.map_subjects(PROMPT, bridge.prompt_tokens(checkpoint.clip, PROMPT), "cat, frog")
    spec = attend_excite_method.attend_and_excite(tokens, STEP_ZERO_ONLY)
    if sampler in REFUSED:
        with pytest.raises(bridge.GuidanceUnavailableError, match=f"the {sampler} sampler .*pick another sampler"):
            bridge.guided_sampler(sampler, spec)
        return
    plain, guided = [], []
    first_two_steps(checkpoint.model, checkpoint.clip, bridge.guided_sampler(sampler, None, plain))
    first_two_steps(checkpoint.model, checkpoint.clip, bridge.guided_sampler(sampler, spec, guided))
    assert [(step.step, step.guided) for step in guided] == [(0, True), (1, False)]
    torch.testing.assert_close(guided[0].maps, plain[0].maps, atol=1e-5, rtol=0)  # the same start
    gain = weakest_subject_maxima(guided, tokens)[1] - weakest_subject_maxima(plain, tokens)[1]
    assert gain > MIN_GAIN, f"{sampler}: weakest subject's attention at step 1 rose by {float(gain):.5f}"


@pytest.mark.skipif(not IS_CURRENT_HOST, reason="the 2024 host has no sampler wrappers for Apply Guidance")
@pytest.mark.parametrize("sampler", ["dpm_fast", "dpm_adaptive", "uni_pc"])
def test_the_stock_ksampler_with_a_guided_model_refuses_them_too(tiny, sampler):
    """The host wraps dpm_fast and dpm_adaptive in functions of other names (dpm_fast_function, ...)."""
    checkpoint = tiny("sd1")
    tokens = tokens_module.map_subjects(PROMPT, bridge.prompt_tokens(checkpoint.clip, PROMPT), "cat, frog")
    guided_model = bridge.with_guidance(checkpoint.model, attend_excite_method.attend_and_excite(tokens, STEP_ZERO_ONLY))
    with pytest.raises(bridge.GuidanceUnavailableError, match=f"the {sampler} sampler"):
        stock_ksampler(guided_model, ksampler_inputs(checkpoint, PROMPT, sampler, steps=2, size=64))


def test_a_split_run_guides_each_pass_by_its_own_steps(tiny):
    """A second pass (KSamplerAdvanced from step 2, a refiner stage, SplitSigmas) sees only its own noise levels:
    A&E's 50 % guides the first of its two steps, as for a fresh 2-step run (README, "Split runs")."""
    checkpoint = tiny("sd1")
    tokens = tokens_module.map_subjects(PROMPT, bridge.prompt_tokens(checkpoint.clip, PROMPT), "cat, frog")
    spec = attend_excite_method.attend_and_excite(tokens, schedule_module.GuidanceSchedule(max_refinement_steps=2))
    schedule = sigmas(checkpoint.model, "normal", 4)
    record = []
    with torch.inference_mode():
        positive, negative = encode(checkpoint.clip, PROMPT), encode(checkpoint.clip, "")
        latent = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(2)) * float(schedule[2])
        comfy.sample.sample_custom(checkpoint.model, torch.zeros_like(latent), 7.0,
                                   bridge.guided_sampler("euler", spec, record), schedule[2:], positive, negative,
                                   latent, seed=2)
    assert [(step.step, step.guided) for step in record] == [(0, True), (1, False)]
    assert [step.sigma for step in record] == schedule[2:4].tolist()
