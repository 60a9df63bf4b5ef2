"""Other packs and models in the same graph: another pack's attention override, a ControlNet on the positive."""
import pytest
import torch

import nodes
from devkit import tiny_models
from devkit.comfy_host import ag
from devkit.sampling import guided_ksampler, ksampler_inputs, stock_ksampler

compat = ag("guidance.comfy_bridge.compat")
schedule_module = ag("guidance.engine.schedule")
attend_excite_method = ag("guidance.methods.attend_excite")
NODES = nodes.NODE_CLASS_MAPPINGS

PROMPT, SUBJECTS = "a cat and a frog", "cat, frog"


def subject_prompt(checkpoint):
    with torch.inference_mode():
        return NODES["AG_TextEncodeWithTokens"]().encode(checkpoint.clip, PROMPT, SUBJECTS)["result"]


def record_only(tokens):
    return NODES["AG_RecordAttention"]().build(tokens)[0]


def with_attention_override(model, calls):
    """A clone whose attention another pack replaces through ``optimized_attention_override`` (as the sage-attention
    patch nodes do): it counts its calls and changes the result, so a layer it misses shows in the image."""
    def override(attention, *args, **kwargs):
        calls.append(1)
        return attention(*args, **kwargs) * 0.9

    clone = model.clone()
    transformer_options = {**clone.model_options.get("transformer_options", {}),
                           "optimized_attention_override": override}
    clone.model_options = {**clone.model_options, "transformer_options": transformer_options}
    return clone


@pytest.mark.skipif(not compat.HAS_ATTENTION_OVERRIDE, reason="this host's attention takes no transformer options, "
                                                              "so no pack can override it")
def test_another_packs_attention_override_applies_on_recorded_layers_and_off_stays_bit_identical(tiny):
    checkpoint = tiny("sd1")
    cat, tokens = subject_prompt(checkpoint)
    inputs = {**ksampler_inputs(checkpoint, PROMPT), "positive": cat}
    stock_calls, recorded_calls, off_calls = [], [], []
    stock = stock_ksampler(with_attention_override(checkpoint.model, stock_calls), inputs)
    assert stock_calls and not torch.equal(stock, stock_ksampler(checkpoint.model, inputs))  # the override matters
    recorded, record = guided_ksampler(with_attention_override(checkpoint.model, recorded_calls), inputs,
                                       record_only(tokens))
    off = attend_excite_method.attend_and_excite(tokens, schedule_module.GuidanceSchedule(guided_percent=0.0))
    unguided, _ = guided_ksampler(with_attention_override(checkpoint.model, off_calls), inputs, off)
    assert torch.equal(recorded, stock) and torch.equal(unguided, stock)
    assert len(recorded_calls) == len(off_calls) == len(stock_calls)  # every attention call, recorded ones too
    assert record.maps.shape == (4, 1, 2, 8, 8)


def test_a_controlnet_on_the_positive_takes_part_in_the_guidance_pass(tiny):
    """The guidance pass sees the attention the sampling passes see: its step-0 maps are those Record Attention
    records in the sampling pass (with the ControlNet), not those without it."""
    checkpoint = tiny("sd1")
    cat, tokens = subject_prompt(checkpoint)
    hint = torch.rand(1, 256, 256, 3, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        controlled = nodes.ControlNetApply().apply_controlnet(cat, tiny_models.tiny_controlnet(), hint, 1.0)[0]
    inputs = {**ksampler_inputs(checkpoint, PROMPT), "positive": controlled}
    _, recorded = guided_ksampler(checkpoint.model, inputs, record_only(tokens))
    spec = attend_excite_method.attend_and_excite(tokens, schedule_module.GuidanceSchedule(max_refinement_steps=2))
    out, guided = guided_ksampler(checkpoint.model, inputs, spec)
    _, uncontrolled = guided_ksampler(checkpoint.model, {**inputs, "positive": cat}, record_only(tokens))
    assert guided.guided[:2] == (True, True) and torch.isfinite(out).all()
    torch.testing.assert_close(guided.maps[0], recorded.maps[0], rtol=0, atol=1e-5)
    assert (recorded.maps[0] - uncontrolled.maps[0]).abs().max() > 1e-3  # the ControlNet changes the attention
