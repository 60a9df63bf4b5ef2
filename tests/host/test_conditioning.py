"""Positive conditionings as graphs build them (several entries, areas, masks, concatenation) and subject tokens that
do not belong to the sampled prompt: one row per image, the subject prompt's entry, or an error naming the input."""
import re

import pytest
import torch

import nodes
from devkit import tiny_models
from devkit.comfy_host import ag
from devkit.sampling import encode, guided_ksampler, ksampler_inputs, stock_ksampler

bridge = ag("guidance.comfy_bridge")
common = ag("nodes.common")
schedule_module = ag("guidance.engine.schedule")
attend_excite_method = ag("guidance.methods.attend_excite")
NODES = nodes.NODE_CLASS_MAPPINGS

PROMPT, SUBJECTS = "a cat and a frog", "cat, frog"
OTHER = "a watercolor landscape with hills"
QUICK = schedule_module.GuidanceSchedule(max_refinement_steps=2)


def subject_prompt(checkpoint, prompt=PROMPT, subjects=SUBJECTS):
    """CLIP Text Encode (with subjects): the conditioning and its AG_TOKENS."""
    with torch.inference_mode():
        return NODES["AG_TextEncodeWithTokens"]().encode(checkpoint.clip, prompt, subjects)["result"]


def ae(tokens):
    return attend_excite_method.attend_and_excite(tokens, QUICK)


def record_only(tokens):
    return NODES["AG_RecordAttention"]().build(tokens)[0]


def with_positive(checkpoint, positive, batch=1):
    inputs = ksampler_inputs(checkpoint, PROMPT, batch=batch)
    return {**inputs, "positive": positive}


def combined(*conditionings):
    with torch.inference_mode():
        out = conditionings[0]
        for other in conditionings[1:]:
            out = nodes.ConditioningCombine().combine(out, other)[0]
        return out


def test_tokens_of_another_prompt_of_the_same_length_are_refused_naming_the_tokens_input(tiny):
    checkpoint = tiny("sd1")
    cat, _ = subject_prompt(checkpoint)
    _, dog_tokens = subject_prompt(checkpoint, "a dog and a frog", "dog, frog")
    for spec in (ae(dog_tokens), record_only(dog_tokens)):
        with pytest.raises(common.NodeInputError, match=re.escape("Guided KSampler: input 'guidance'")) as raised:
            guided_ksampler(checkpoint.model, with_positive(checkpoint, cat), spec)
        message = str(raised.value)
        assert "'a dog and a frog'" in message and "from token position 2 on" in message and "tokens input" in message


def test_tokens_of_a_longer_prompt_are_refused_with_a_short_message(tiny):
    checkpoint = tiny("sd1")
    cat, _ = subject_prompt(checkpoint)
    long_prompt = "a cat and a frog, " + ", ".join(["a green meadow"] * 25)
    _, long_tokens = subject_prompt(checkpoint, long_prompt)
    assert long_tokens.token_count == 154
    with pytest.raises(common.NodeInputError, match="entry 1: it has 77 tokens, the tokens' prompt 154") as raised:
        guided_ksampler(checkpoint.model, with_positive(checkpoint, cat), ae(long_tokens))
    assert len(str(raised.value)) < 500


@pytest.mark.parametrize("batch", [1, 2])
def test_combined_positive_guides_each_image_with_the_subject_prompts_rows(tiny, batch):
    """ConditioningCombine(subject prompt, another prompt): the guidance pass reads the subject entry alone, one row
    per image, through all its latent/4 layers: its first maps are those of the subject prompt sampled alone."""
    checkpoint = tiny("sd1")
    cat, tokens = subject_prompt(checkpoint)
    other, _ = subject_prompt(checkpoint, OTHER, "hills")
    alone_latent, alone = guided_ksampler(checkpoint.model, with_positive(checkpoint, cat, batch), ae(tokens))
    out, record = guided_ksampler(checkpoint.model, with_positive(checkpoint, combined(cat, other), batch), ae(tokens))
    assert record.maps.shape == (4, batch, 2, 8, 8) and record.guided == (True, True, False, False)
    torch.testing.assert_close(record.maps[0], alone.maps[0], rtol=0, atol=1e-6)
    assert torch.isfinite(out).all() and not torch.allclose(out, alone_latent)  # the other entry still samples


def test_record_attention_on_a_combined_positive_gives_one_map_set_per_image_and_the_stock_image(tiny):
    checkpoint = tiny("sd1")
    cat, tokens = subject_prompt(checkpoint)
    other, _ = subject_prompt(checkpoint, OTHER, "hills")
    inputs = with_positive(checkpoint, combined(other, cat, other), batch=2)  # the subject entry in the middle
    out, record = guided_ksampler(checkpoint.model, inputs, record_only(tokens))
    assert torch.equal(out, stock_ksampler(checkpoint.model, inputs))
    assert record.maps.shape == (4, 2, 2, 8, 8)
    _, alone = guided_ksampler(checkpoint.model, with_positive(checkpoint, cat, batch=2), record_only(tokens))
    torch.testing.assert_close(record.maps[0], alone.maps[0], rtol=0, atol=1e-5)  # the subject entry's rows


def test_areas_on_other_entries_are_sampled_and_an_area_on_the_subject_prompt_is_refused(tiny):
    checkpoint = tiny("sd1")
    cat, tokens = subject_prompt(checkpoint)
    other, _ = subject_prompt(checkpoint, OTHER, "hills")
    with torch.inference_mode():
        left = nodes.ConditioningSetArea().append(other, 128, 256, 0, 0, 1.0)[0]
        cat_left = nodes.ConditioningSetArea().append(cat, 128, 256, 0, 0, 1.0)[0]
    out, record = guided_ksampler(checkpoint.model, with_positive(checkpoint, combined(cat, left)), ae(tokens))
    assert torch.isfinite(out).all() and record.maps.shape == (4, 1, 2, 8, 8)
    with pytest.raises(common.NodeInputError, match="input 'positive': .*covers only an area of the image"):
        guided_ksampler(checkpoint.model, with_positive(checkpoint, combined(cat_left, other)), ae(tokens))


def test_a_masked_subject_prompt_is_read_over_the_whole_image(tiny):
    checkpoint = tiny("sd1")
    cat, tokens = subject_prompt(checkpoint)
    other, _ = subject_prompt(checkpoint, OTHER, "hills")
    mask = torch.zeros(1, 256, 256)
    mask[:, :, :128] = 1.0
    with torch.inference_mode():
        cat_masked = nodes.ConditioningSetMask().append(cat, mask, "default", 1.0)[0]
        other_masked = nodes.ConditioningSetMask().append(other, 1.0 - mask, "default", 1.0)[0]
    _, alone = guided_ksampler(checkpoint.model, with_positive(checkpoint, cat), ae(tokens))
    out, record = guided_ksampler(checkpoint.model, with_positive(checkpoint, combined(cat_masked, other_masked)),
                                  ae(tokens))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(record.maps[0], alone.maps[0], rtol=0, atol=1e-6)


def test_a_concatenation_after_the_subject_prompt_is_guided_and_one_before_it_is_refused(tiny):
    checkpoint = tiny("sd1")
    cat, tokens = subject_prompt(checkpoint)
    other = encode(checkpoint.clip, OTHER)
    with torch.inference_mode():
        after = nodes.ConditioningConcat().concat(cat, other)[0]
        before = nodes.ConditioningConcat().concat(other, cat)[0]
    out, record = guided_ksampler(checkpoint.model, with_positive(checkpoint, after), ae(tokens))
    assert torch.isfinite(out).all() and record.maps.shape == (4, 1, 2, 8, 8) and record.guided[0]
    with pytest.raises(common.NodeInputError, match="entry 1: it encodes another prompt .from token position 2 on"):
        guided_ksampler(checkpoint.model, with_positive(checkpoint, before), ae(tokens))


def test_gligen_boxes_on_the_subject_prompt_take_part_in_the_guidance_pass(tiny):
    """GLIGENTextBoxApply on the subject prompt: the guidance pass runs (and differentiates through) the GLIGEN
    fusers as the sampling passes do, so its step-0 maps are those Record Attention records with them."""
    checkpoint = tiny("sd1")
    cat, tokens = subject_prompt(checkpoint)
    with torch.inference_mode():
        boxed = nodes.GLIGENTextBoxApply().append(cat, checkpoint.clip, tiny_models.tiny_gligen(checkpoint.model),
                                                  "a frog", 128, 128, 128, 64)[0]
    inputs = with_positive(checkpoint, boxed)
    _, recorded = guided_ksampler(checkpoint.model, inputs, record_only(tokens))
    out, guided = guided_ksampler(checkpoint.model, inputs, ae(tokens))
    _, plain = guided_ksampler(checkpoint.model, with_positive(checkpoint, cat), record_only(tokens))
    assert guided.guided[:2] == (True, True) and torch.isfinite(out).all()
    torch.testing.assert_close(guided.maps[0], recorded.maps[0], rtol=0, atol=1e-5)
    assert (recorded.maps[0] - plain.maps[0]).abs().max() > 1e-3  # the boxes change the attention


def test_a_subject_prompt_outside_its_timestep_range_is_reported_on_the_positive_input(tiny):
    checkpoint = tiny("sd1")
    cat, tokens = subject_prompt(checkpoint)
    other, _ = subject_prompt(checkpoint, OTHER, "hills")
    with torch.inference_mode():
        late_cat = nodes.ConditioningSetTimestepRange().set_range(cat, 0.5, 1.0)[0]
    for spec in (ae(tokens), record_only(tokens)):
        with pytest.raises(common.NodeInputError, match="input 'positive': .*took no part in the model call"):
            guided_ksampler(checkpoint.model, with_positive(checkpoint, combined(late_cat, other)), spec)
