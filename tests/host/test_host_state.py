"""What a guided run leaves behind in the host: the shared model's weights, LoRA patches, the sampler object."""
import comfy.model_management
import comfy.sample
import comfy.samplers
import pytest
import torch

from devkit.comfy_host import ag
from devkit.sampling import IS_CURRENT_HOST, guided_ksampler, ksampler_inputs, sample_custom, stock_ksampler

bridge = ag("guidance.comfy_bridge")
compat = ag("guidance.comfy_bridge.compat")
doors = ag("guidance.comfy_bridge.doors")
schedule_module = ag("guidance.engine.schedule")
attend_excite_method = ag("guidance.methods.attend_excite")
tokens_module = ag("guidance.subjects.tokens")

PROMPT, SUBJECTS = "a cat and a frog", "cat, frog"


def ae_spec(checkpoint, schedule=None):
    tokens = tokens_module.map_subjects(PROMPT, bridge.prompt_tokens(checkpoint.clip, PROMPT), SUBJECTS)
    return attend_excite_method.attend_and_excite(tokens, schedule or schedule_module.GuidanceSchedule(
        refinement_points=(), scale_factor=200.0))


def weights(model):
    return {name: tensor.detach().clone() for name, tensor in model.model.state_dict().items()}


def test_a_lora_patched_model_samples_guided_and_unpatches_to_its_weights(tiny):
    checkpoint = tiny("sd1")
    inputs = ksampler_inputs(checkpoint, PROMPT)
    plain_before = stock_ksampler(checkpoint.model, inputs)
    before = weights(checkpoint.model)
    generator = torch.Generator().manual_seed(0)
    lora = checkpoint.model.clone()
    keys = [name for name in before if name.endswith("attn2.to_k.weight")]
    patched = lora.add_patches({key: (0.1 * torch.randn(before[key].shape, generator=generator),) for key in keys})
    assert len(patched) == len(keys) > 0

    lora_plain = stock_ksampler(lora, inputs)
    lora_guided, _ = guided_ksampler(lora, inputs, ae_spec(checkpoint))
    assert not torch.equal(lora_plain, plain_before)  # the patch took effect
    assert (lora_guided - lora_plain).abs().max() > 1e-3  # and guidance ran on the patched model

    comfy.model_management.unload_all_models()
    after = weights(checkpoint.model)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert torch.equal(stock_ksampler(checkpoint.model, inputs), plain_before)


@pytest.mark.skipif(not IS_CURRENT_HOST, reason="Apply Guidance needs sampler wrappers (ComfyUI from Dec. 2024)")
def test_the_samplers_own_function_is_back_after_an_interrupted_guided_run(tiny):
    checkpoint = tiny("sd1")
    sampler = comfy.samplers.sampler_object("euler")  # a SAMPLER object that a graph reuses between runs
    function = sampler.sampler_function
    spec = ae_spec(checkpoint, schedule_module.GuidanceSchedule(
        refinement_points=(schedule_module.RefinementPoint(0.0, 1.0),), max_refinement_steps=5))
    guided = bridge.with_guidance(checkpoint.model, spec)
    comfy.model_management.interrupt_current_processing(True)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        sample_custom(guided, checkpoint.clip, sampler)
    assert sampler.sampler_function is function
    unguided = sample_custom(checkpoint.model, checkpoint.clip, comfy.samplers.sampler_object("euler"))
    assert torch.equal(sample_custom(checkpoint.model, checkpoint.clip, sampler), unguided)


def test_guidance_passes_leave_the_weights_values_as_they_were(tiny):
    checkpoint = tiny("sd2")
    before = weights(checkpoint.model)
    guided_ksampler(checkpoint.model, ksampler_inputs(checkpoint, PROMPT), ae_spec(checkpoint))
    after = weights(checkpoint.model)
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert not any(parameter.requires_grad for parameter in checkpoint.model.model.parameters())


def test_the_saved_tensor_guard_is_on_exactly_on_the_host_whose_blocks_add_in_place():
    assert compat.blocks_modify_saved_activations() is (not IS_CURRENT_HOST)  # the 2024 blocks do ``x += n``
