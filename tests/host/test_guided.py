"""The guided sampler on a real host: the off switch, the effect, batches, interrupts, families, doors."""
import comfy.model_management
import comfy.sample
import comfy.samplers
import pytest
import safetensors.torch
import torch

import nodes
from devkit.comfy_host import ag
from devkit.sampling import (
    IS_CURRENT_HOST,
    guided_ksampler,
    ksampler_inputs,
    recording_sampler,
    sample_custom,
    sigmas,
    stock_ksampler,
)
from devkit.tiny_models import CONTEXT_DIM, tiny_clip

bridge = ag("guidance.comfy_bridge")
schedule_module = ag("guidance.engine.schedule")
attend_excite_method = ag("guidance.methods.attend_excite")
tokens_module = ag("guidance.subjects.tokens")
attend_excite = ag("guidance.losses.attend_excite")
NODES = nodes.NODE_CLASS_MAPPINGS

PROMPT, SUBJECTS = "a cat and a frog", "cat, frog"
SAMPLERS = [("euler", "normal"), ("euler_ancestral", "normal"), ("dpmpp_2m", "karras"), ("ddim", "ddim_uniform"),
            ("heun", "normal")]
QUICK = schedule_module.GuidanceSchedule(max_refinement_steps=2)  # A&E's schedule with short refinement


def tokens_for(checkpoint, prompt=PROMPT, subjects=SUBJECTS):
    return tokens_module.map_subjects(prompt, bridge.prompt_tokens(checkpoint.clip, prompt), subjects)


def ae_spec(checkpoint, schedule=QUICK, **kwargs):
    return attend_excite_method.attend_and_excite(tokens_for(checkpoint), schedule, **kwargs)


def off_specs(checkpoint):
    return [ae_spec(checkpoint, schedule_module.GuidanceSchedule(guided_percent=0.0)),
            ae_spec(checkpoint, schedule_module.GuidanceSchedule(scale_factor=0.0))]


@pytest.mark.parametrize("sampler,scheduler", SAMPLERS)
def test_guidance_off_is_bit_identical_to_the_stock_ksampler(tiny, sampler, scheduler):
    checkpoint = tiny("sd1")
    inputs = ksampler_inputs(checkpoint, PROMPT, sampler, scheduler)
    stock = stock_ksampler(checkpoint.model, inputs)
    for spec in off_specs(checkpoint):
        assert torch.equal(guided_ksampler(checkpoint.model, inputs, spec)[0], stock)  # Guided KSampler
        custom_stock = sample_custom(checkpoint.model, checkpoint.clip, comfy.samplers.sampler_object(sampler),
                                     steps=4, scheduler=scheduler, seed=3)
        custom_off = sample_custom(checkpoint.model, checkpoint.clip,
                                   NODES["AG_GuidedSampler"]().build(sampler, spec)[0], steps=4, scheduler=scheduler,
                                   seed=3)
        assert torch.equal(custom_off, custom_stock)  # Guided Sampler in SamplerCustom's path
        if IS_CURRENT_HOST:  # Apply Attention Guidance + stock KSampler
            guided_model = NODES["AG_ApplyGuidance"]().apply(checkpoint.model, spec)[0]
            assert torch.equal(stock_ksampler(guided_model, inputs), stock)


@pytest.mark.skipif(IS_CURRENT_HOST, reason="the current host has sampler wrappers; tested above")
def test_apply_guidance_without_sampler_wrappers_names_the_other_nodes(tiny):
    checkpoint = tiny("sd1")
    with pytest.raises(ValueError, match="Guided KSampler.*Guided Sampler"):
        NODES["AG_ApplyGuidance"]().apply(checkpoint.model, ae_spec(checkpoint))


def weakest_subject_maxima(record, tokens):
    """Per recorded step: A&E's smoothed maximum of the weakest subject, ``[steps]``."""
    return torch.stack([attend_excite.attend_excite_loss(step.maps, tokens.subject_positions).maxima.min(-1).values[0]
                        for step in record])


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_attend_and_excite_raises_the_weakest_subjects_attention(tiny, family):
    checkpoint = tiny(family)
    tokens = tokens_for(checkpoint)
    plain_record, guided_record = [], []
    sample_custom(checkpoint.model, checkpoint.clip, recording_sampler("euler", plain_record), steps=6, seed=5)
    # A random tiny model averages 40 unrelated head maps into nearly uniform attention, which moves little per
    # unit of latent change; a larger step than the paper's 20 makes the effect stand far above numerical noise.
    spec = ae_spec(checkpoint, schedule_module.GuidanceSchedule(scale_factor=2000.0, refinement_points=()))
    out = sample_custom(checkpoint.model, checkpoint.clip, bridge.guided_sampler("euler", spec, guided_record),
                        steps=6, seed=5)
    assert [step.guided for step in guided_record] == [True, True, True, False, False, False]
    torch.testing.assert_close(guided_record[0].maps, plain_record[0].maps, atol=1e-5, rtol=0)  # same start
    plain, guided = weakest_subject_maxima(plain_record, tokens), weakest_subject_maxima(guided_record, tokens)
    gain = guided[1:4] - plain[1:4]
    assert (gain > 0).all() and gain.mean() > 0.001, (plain, guided)
    assert torch.isfinite(out).all()


def test_guided_ksampler_records_every_step_per_subject(tiny):
    checkpoint = tiny("sd1")
    _, record = guided_ksampler(checkpoint.model, ksampler_inputs(checkpoint, PROMPT, steps=4), ae_spec(checkpoint))
    assert record.labels == ("cat", "frog") and record.steps == (0, 1, 2, 3)
    assert record.guided == (True, True, False, False)
    assert record.maps.shape == (4, 1, 2, 8, 8)
    assert list(record.sigmas) == sorted(record.sigmas, reverse=True)


def test_a_batch_equals_its_images_sampled_alone(tiny):
    checkpoint = tiny("sd1")
    spec = ae_spec(checkpoint)
    batch_inputs = ksampler_inputs(checkpoint, PROMPT, batch=2)
    batch_inputs["latent_image"] = {**batch_inputs["latent_image"], "batch_index": [0, 1]}
    together, _ = guided_ksampler(checkpoint.model, batch_inputs, spec)
    for index in range(2):
        single = ksampler_inputs(checkpoint, PROMPT)
        single["latent_image"] = {**single["latent_image"], "batch_index": [index]}
        alone, _ = guided_ksampler(checkpoint.model, single, spec)
        # Batched and single convolutions round differently, and guidance steps (x ~200 at high sigma) amplify it.
        torch.testing.assert_close(together[index:index + 1], alone, atol=5e-3, rtol=1e-4)
        assert (together[index:index + 1] - alone).abs().mean() < 1e-5 * alone.abs().mean()
    assert not torch.allclose(together[0], together[1])


def test_interrupt_during_refinement_leaves_a_clean_model(tiny):
    checkpoint = tiny("sd1")
    options_before = repr(checkpoint.model.model_options)
    inputs = ksampler_inputs(checkpoint, PROMPT)
    spec = ae_spec(checkpoint, schedule_module.GuidanceSchedule(refinement_points=(
        schedule_module.RefinementPoint(0.0, 1.0),), max_refinement_steps=5))  # a target no map can reach
    comfy.model_management.interrupt_current_processing(True)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        guided_ksampler(checkpoint.model, inputs, spec)
    assert repr(checkpoint.model.model_options) == options_before
    first, _ = guided_ksampler(checkpoint.model, inputs, spec)
    second, _ = guided_ksampler(checkpoint.model, inputs, spec)
    assert torch.equal(first, second)


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_other_families_run_guided(tiny, family):
    checkpoint = tiny(family)
    out, record = guided_ksampler(checkpoint.model, ksampler_inputs(checkpoint, PROMPT), ae_spec(checkpoint))
    assert torch.isfinite(out).all() and record.guided == (True, True, False, False)


def test_img2img_runs_guided(tiny):
    checkpoint = tiny("sd1")
    inputs = ksampler_inputs(checkpoint, PROMPT, steps=5)
    inputs["latent_image"] = {"samples": torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))}
    inputs["denoise"] = 0.6
    out, record = guided_ksampler(checkpoint.model, inputs, ae_spec(checkpoint))
    assert record.steps == (0, 1, 2, 3, 4) and record.guided == (True, True, True, False, False)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("sampler", ["heun", "dpm_2", "dpmpp_2s_ancestral"])
def test_multi_evaluation_samplers_are_guided_once_per_step_at_its_start(tiny, sampler):
    checkpoint = tiny("sd1")
    record = []
    sample_custom(checkpoint.model, checkpoint.clip, bridge.guided_sampler(sampler, ae_spec(checkpoint), record),
                  steps=4)
    assert [(step.step, step.guided) for step in record] == [(0, True), (1, True), (2, False), (3, False)]
    schedule = sigmas(checkpoint.model, "normal", 4).tolist()
    assert [step.sigma for step in record] == pytest.approx(schedule[:4])


def test_stopping_the_guidance_forward_early_skips_the_last_blocks_and_changes_nothing(tiny):
    checkpoint = tiny("sd1")
    spec = ae_spec(checkpoint, schedule_module.GuidanceSchedule(refinement_points=()))
    final_layer_calls = []
    hook = checkpoint.model.model.diffusion_model.out.register_forward_hook(lambda *_: final_layer_calls.append(1))
    try:
        early = sample_custom(checkpoint.model, checkpoint.clip, bridge.guided_sampler("euler", spec, early_stop=True))
        early_calls = len(final_layer_calls)
        full = sample_custom(checkpoint.model, checkpoint.clip, bridge.guided_sampler("euler", spec, early_stop=False))
    finally:
        hook.remove()
    assert early_calls == 2  # the two sampling passes only: the guided step's pass stopped at output block 5
    assert len(final_layer_calls) - early_calls == 3  # two sampling passes + one complete guidance pass
    torch.testing.assert_close(early, full, atol=1e-5, rtol=0)


def test_a_sampler_with_churn_is_left_unguided_with_a_warning(tiny, caplog):
    checkpoint = tiny("sd1")
    churn = {"s_churn": 1.0}  # euler then evaluates the model at a raised noise level, never at the schedule's own

    def churned(function):
        return comfy.samplers.KSAMPLER(function, extra_options=churn)

    guided = churned(bridge.guided_sampler("euler", ae_spec(checkpoint)).sampler_function)
    with caplog.at_level("WARNING", logger="attention_guidance"):
        torch.manual_seed(3)  # the churn noise comes from the global generator
        out = sample_custom(checkpoint.model, checkpoint.clip, guided, steps=4)
    torch.manual_seed(3)
    plain = sample_custom(checkpoint.model, checkpoint.clip,
                          churned(comfy.samplers.sampler_object("euler").sampler_function), steps=4)
    assert torch.equal(out, plain)
    assert sum("no sampling step matched the schedule" in record.message for record in caplog.records) == 1


def test_weighted_prompts_over_75_tokens_sample_guided(tiny):
    checkpoint = tiny("sd1")
    prompt = "a photo of a (cat:1.3) and a frog, " + ", ".join(["highly detailed"] * 30) + ", a red hat"
    tokens = tokens_module.map_subjects(prompt, bridge.prompt_tokens(checkpoint.clip, prompt), "cat, red hat")
    assert tokens.token_count == 154 and tokens.subject_positions[1][0] > 77  # the hat lies in the second chunk
    spec = attend_excite_method.attend_and_excite(tokens, QUICK)
    record = []
    out = sample_custom(checkpoint.model, checkpoint.clip, bridge.guided_sampler("euler", spec, record), steps=4,
                        prompt=prompt)
    plain = sample_custom(checkpoint.model, checkpoint.clip, comfy.samplers.sampler_object("euler"), steps=4,
                          prompt=prompt)
    assert [step.guided for step in record] == [True, True, False, False]
    assert record[0].maps.shape[-1] == 154 and torch.isfinite(out).all() and not torch.equal(out, plain)


def test_a_prompt_with_an_embedding_samples_guided(tiny, tmp_path):
    checkpoint = tiny("sd1")
    safetensors.torch.save_file({"emb_params": torch.randn(2, CONTEXT_DIM)}, str(tmp_path / "tinycat.safetensors"))
    with torch.inference_mode():  # as ComfyUI loads models
        clip = tiny_clip("sd1", tmp_path, embedding_directory=str(tmp_path))
    prompt = "a photo of embedding:tinycat and a frog"
    tokens = tokens_module.map_subjects(prompt, bridge.prompt_tokens(clip, prompt), "embedding:tinycat, frog")
    assert tokens.subject_positions == ((4, 5), (8,))  # the embedding's two vectors are one subject
    record = []
    spec = attend_excite_method.attend_and_excite(tokens, QUICK)
    out = sample_custom(checkpoint.model, clip, bridge.guided_sampler("euler", spec, record), steps=4, prompt=prompt)
    plain = sample_custom(checkpoint.model, clip, comfy.samplers.sampler_object("euler"), steps=4, prompt=prompt)
    assert [step.guided for step in record] == [True, True, False, False]
    assert torch.isfinite(out).all() and not torch.equal(out, plain)
