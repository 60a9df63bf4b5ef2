"""A-STAR and subject layouts on a real host: the nodes, the off switch, segregation, layouts, retention's memory."""
import re

import comfy.samplers
import pytest
import torch

import nodes
from devkit.comfy_host import ag
from devkit.sampling import (
    IS_CURRENT_HOST,
    guided_ksampler,
    ksampler_inputs,
    recording_sampler,
    sample_custom,
    stock_ksampler,
)

bridge = ag("guidance.comfy_bridge")
schedule_module = ag("guidance.engine.schedule")
spec_module = ag("guidance.engine.spec")
tokens_module = ag("guidance.subjects.tokens")
methods = ag("guidance.methods.astar")
losses = ag("guidance.losses.astar")
common = ag("nodes.common")
NODES = nodes.NODE_CLASS_MAPPINGS

PROMPT, SUBJECTS = "a cat and a frog", "cat, frog"
QUADRANTS = "0,0,0.5,0.5; 0.5,0.5,0.5,0.5"  # cat top left, frog bottom right


def tokens_for(checkpoint):
    return tokens_module.map_subjects(PROMPT, bridge.prompt_tokens(checkpoint.clip, PROMPT), SUBJECTS)


def box_layout(tokens, boxes=QUADRANTS, size=256):
    return NODES["AG_BoxLayout"]().build(tokens, boxes, size, size)


def mask_layout(tokens, *masks):
    return NODES["AG_SubjectLayout"]().build(tokens, **{f"mask_{i}": mask for i, mask in enumerate(masks, start=1)})[0]


def astar_node(tokens, step_size=20.0, guided_percent=50.0, weight=1.0, layout=None, binarisation="half_max"):
    return NODES["AG_AStar"]().build(tokens, step_size, guided_percent, binarisation, "ae", weight, layout)["result"][0]


def guided_run(checkpoint, spec, steps=6, seed=5):
    record = []
    sample_custom(checkpoint.model, checkpoint.clip, bridge.guided_sampler("euler", spec, record), steps=steps,
                  seed=seed)
    return record


def plain_run(checkpoint, steps=6, seed=5):
    record = []
    sample_custom(checkpoint.model, checkpoint.clip, recording_sampler("euler", record), steps=steps, seed=seed)
    return record


def test_nodes_are_registered_with_tooltips():
    names = {"AG_AStar": "A-STAR (segregation + retention)", "AG_SubjectLayout": "Subject Layout (masks)",
             "AG_BoxLayout": "Subject Layout (boxes)"}
    for node_id, name in names.items():
        node = NODES[node_id]
        assert nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id] == name and node.DESCRIPTION
        declared = node.INPUT_TYPES()
        inputs = {**declared["required"], **declared.get("optional", {})}
        assert all(options[1]["tooltip"] for options in inputs.values()), node_id
    astar_inputs = NODES["AG_AStar"].INPUT_TYPES()
    assert list(astar_inputs["required"]) == ["tokens", "step_size", "guided_percent", "binarisation",
                                              "preprocessing", "weight"]
    assert list(astar_inputs["optional"]) == ["layout", "dit_blocks"] and NODES["AG_AStar"].RETURN_TYPES == ("AG_GUIDANCE",)
    assert [astar_inputs["required"][name][1]["default"] for name in ("step_size", "guided_percent",
                                                                      "binarisation", "preprocessing", "weight")] \
        == [20.0, 50.0, "half_max", "ae", 1.0]
    layout_inputs = NODES["AG_SubjectLayout"].INPUT_TYPES()
    assert list(layout_inputs["required"]) == ["tokens", "mask_1"]
    assert list(layout_inputs["optional"]) == [f"mask_{i}" for i in range(2, 7)]
    assert NODES["AG_BoxLayout"].RETURN_TYPES == ("AG_LAYOUT", "MASK")


def test_box_layout_node_outputs_one_mask_per_subject(tiny):
    layout, masks = box_layout(tokens_for(tiny("sd1")), "0.25,0,0.5,0.5; 0,0.5,1,0.5", size=64)
    assert masks.shape == (2, 64, 64) and masks[0].sum() == 32 * 32 and masks[1, 32:].all()
    assert torch.equal(layout.masks[0], masks) and layout.labels == ("cat", "frog")


@pytest.mark.parametrize("sampler,scheduler", [("euler", "normal"), ("dpmpp_2m", "karras")])
def test_guidance_off_is_bit_identical_to_the_stock_ksampler(tiny, sampler, scheduler):
    checkpoint = tiny("sd1")
    tokens = tokens_for(checkpoint)
    layout = box_layout(tokens)[0]
    inputs = ksampler_inputs(checkpoint, PROMPT, sampler, scheduler)
    stock = stock_ksampler(checkpoint.model, inputs)
    custom_stock = sample_custom(checkpoint.model, checkpoint.clip, comfy.samplers.sampler_object(sampler), steps=4,
                                 scheduler=scheduler, seed=3)
    for spec in (astar_node(tokens, guided_percent=0.0, layout=layout), astar_node(tokens, step_size=0.0),
                 astar_node(tokens, weight=0.0, layout=layout)):
        assert torch.equal(guided_ksampler(checkpoint.model, inputs, spec)[0], stock)
        guided_sampler = NODES["AG_GuidedSampler"]().build(sampler, spec)[0]
        custom_off = sample_custom(checkpoint.model, checkpoint.clip, guided_sampler, steps=4, scheduler=scheduler,
                                   seed=3)
        assert torch.equal(custom_off, custom_stock)
        if IS_CURRENT_HOST:
            assert torch.equal(stock_ksampler(NODES["AG_ApplyGuidance"]().apply(checkpoint.model, spec)[0], inputs),
                               stock)


def overlaps(record, tokens):
    """Per recorded step: A-STAR's segregation (Eq. 2) of the subjects' preprocessed maps, ``[steps]``."""
    return torch.stack([losses.segregation_loss(losses.concept_maps(step.maps, tokens.subject_positions))[0]
                        for step in record])


def test_segregation_lowers_the_overlap_of_the_subject_maps(tiny):
    checkpoint = tiny("sd1")
    tokens = tokens_for(checkpoint)
    plain = plain_run(checkpoint)
    # Tiny random models average many unrelated heads into nearly uniform maps, so a larger step than the paper's 20
    # is needed for an effect far above numerical noise (as in the Attend-and-Excite test).
    guided = guided_run(checkpoint, astar_node(tokens, step_size=2000.0))
    assert [step.guided for step in guided] == [True, True, True, False, False, False]
    torch.testing.assert_close(guided[0].maps, plain[0].maps, atol=1e-5, rtol=0)  # same start
    before, after = overlaps(plain, tokens)[1:4], overlaps(guided, tokens)[1:4]
    assert (after < before - 0.05).all(), (before, after)


def box_shares(record, tokens, cells):
    """Per step and subject, the share of the subject's preprocessed attention mass inside its box: ``[steps, S]``."""
    return torch.stack([(maps * cells).sum((-2, -1)) / maps.sum((-2, -1)) for maps in
                        (losses.concept_maps(step.maps, tokens.subject_positions)[0] for step in record)])


def test_a_box_layout_raises_each_subjects_share_inside_its_box(tiny):
    checkpoint = tiny("sd1")
    tokens = tokens_for(checkpoint)
    layout, masks = box_layout(tokens)
    cells = ag("guidance.subjects.layout").masks_to_grid(masks, (8, 8))
    plain = plain_run(checkpoint)
    guided = guided_run(checkpoint, astar_node(tokens, step_size=3000.0, layout=layout))
    before, after = box_shares(plain, tokens, cells)[1:4], box_shares(guided, tokens, cells)[1:4]
    assert (after > before + 0.005).all(), (before, after)  # every subject, every later guided step


def test_an_all_ones_layout_gives_exactly_the_result_of_no_layout(tiny):
    checkpoint = tiny("sd1")
    tokens = tokens_for(checkpoint)
    inputs = ksampler_inputs(checkpoint, PROMPT)
    everywhere = torch.ones(1, 384, 512)  # a MASK, as Solid Mask makes it
    plain_astar = guided_ksampler(checkpoint.model, inputs, astar_node(tokens))[0]
    anywhere = astar_node(tokens, layout=mask_layout(tokens, everywhere, everywhere))
    assert torch.equal(guided_ksampler(checkpoint.model, inputs, anywhere)[0], plain_astar)
    boxed = guided_ksampler(checkpoint.model, inputs, astar_node(tokens, layout=box_layout(tokens)[0]))[0]
    assert (boxed - plain_astar).abs().max() > 1e-3  # a real layout does change the image


class Spy:
    """A term that records what the engine hands it and what the A-STAR term makes of it."""

    def __init__(self, term):
        self.term, self.weight, self.levels, self.calls = term, term.weight, term.levels, []

    def evaluate(self, inputs):
        result = self.term.evaluate(inputs)
        self.calls.append((inputs.step, inputs.previous, result))
        return result

    def unmet(self, result, threshold):
        return self.term.unmet(result, threshold)


def test_retention_uses_the_maps_of_the_previous_guided_step(tiny):
    checkpoint = tiny("sd1")
    tokens = tokens_for(checkpoint)
    spy = Spy(methods.AStarTerm(tokens.subject_positions, losses.AStarConfig(binarisation="mean")))
    record = guided_run(checkpoint, spec_module.GuidanceSpec(tokens, (spy,), (schedule_module.GuidanceSchedule(
        scale_factor=200.0, refinement_points=()),)))
    assert [step for step, _, _ in spy.calls] == [0, 1, 2]  # one pass per guided step, no refinement
    first_previous, first = spy.calls[0][1:]
    assert first_previous is None and not first.retained.any() and not first.retention.any()
    for index in (1, 2):
        _, previous, result = spy.calls[index]
        assert record[index - 1].guided and torch.equal(previous, record[index - 1].maps)
        assert not torch.equal(record[index].maps, record[index - 1].maps)
        concepts = losses.concept_maps(record[index - 1].maps, tokens.subject_positions)
        assert result.retained.all() and torch.equal(result.targets, losses.binarize(concepts, "mean"))
        assert (result.retention > 0.5).all()


def error(build):
    with pytest.raises(common.NodeInputError) as caught:
        build()
    return str(caught.value)


def test_bad_layouts_are_refused_with_what_to_fix(tiny):
    checkpoint = tiny("sd1")
    tokens = tokens_for(checkpoint)
    half = torch.zeros(1, 128, 64)
    half[:, :64] = 1
    empty = torch.zeros(1, 64, 64)
    assert re.fullmatch(r"Subject Layout \(masks\): input 'mask_2': the mask of 'frog' \(subject 2, image 1\) is "
                        r"empty; paint the area .*", error(lambda: mask_layout(tokens, half, empty)))
    assert "input 'mask_2': 1 masks for 2 subjects (cat, frog); connect exactly one mask per subject" in error(
        lambda: mask_layout(tokens, half))
    assert "input 'mask_3': 3 masks for 2 subjects" in error(lambda: mask_layout(tokens, half, half, half))
    assert "input 'mask_2': not connected while a later mask is; connect the masks in subject order" in error(
        lambda: NODES["AG_SubjectLayout"]().build(tokens, mask_1=half, mask_3=half))
    assert "input 'mask_2': mask 2 is a batch of 2 masks while another has 3" in error(
        lambda: mask_layout(tokens, half.expand(3, -1, -1), half.expand(2, -1, -1)))

    assert "Subject Layout (boxes): input 'boxes': box 2 ('0.6,0.5,0.5,0.5') leaves the image: x + w = 1.1 is above 1" in error(
        lambda: box_layout(tokens, "0,0,0.5,0.5; 0.6,0.5,0.5,0.5"))
    assert "input 'boxes': 1 boxes for 2 subjects (cat, frog); give one box per subject" in error(
        lambda: box_layout(tokens, "0,0,0.5,0.5"))

    other = tokens_module.map_subjects("a cat and a dog", bridge.prompt_tokens(checkpoint.clip, "a cat and a dog"),
                                       "cat, dog")
    assert "A-STAR (segregation + retention): input 'layout': the layout is for the subjects (cat, frog) but the " \
           "tokens name (cat, dog)" in error(lambda: astar_node(other, layout=box_layout(tokens)[0]))


def test_a_layout_batch_that_fits_no_latent_batch_fails_at_sampling(tiny):
    checkpoint = tiny("sd1")
    tokens = tokens_for(checkpoint)
    three = torch.zeros(3, 64, 64)
    three[:, 32:] = 1
    spec = astar_node(tokens, layout=mask_layout(tokens, three, three))
    with pytest.raises(ValueError, match="the layout has 3 masks per subject but the latent batch has 2 images; "
                                         "give one mask per subject, or one per image"):
        guided_ksampler(checkpoint.model, ksampler_inputs(checkpoint, PROMPT, batch=2), spec)
    latent, _ = guided_ksampler(checkpoint.model, ksampler_inputs(checkpoint, PROMPT, batch=3), spec)
    assert latent.shape[0] == 3 and torch.isfinite(latent).all()
