"""Every latent-guidance method on FLUX, Chroma, SD3 and SD3.5 medium through the pack's nodes and doors: one
guidance step lowers the method's loss, guidance off is bit-identical to the stock samplers, bad inputs are named."""
import dataclasses
import re

import comfy.samplers
import pytest
import torch

import nodes
from devkit import comfy_host
from devkit.comfy_host import ag
from devkit.sampling import ksampler_inputs, sample_custom, stock_ksampler

pytestmark = pytest.mark.skipif(not comfy_host.has_dit(), reason=comfy_host.NO_DIT_REASON)

NODES = nodes.NODE_CLASS_MAPPINGS
PROMPT, SUBJECTS = "a red cube and a blue sphere", "red cube, blue sphere"
FAMILIES = ("flux", "chroma", "sd3", "sd35_medium")
common = ag("nodes.common")


def tokens_for(checkpoint, subjects=SUBJECTS):
    return ag("guidance.comfy_bridge.text").subject_tokens(checkpoint.clip, PROMPT, subjects)


def node_defaults(node) -> dict:
    """The defaults of a node's required inputs other than ``tokens`` (a list's default, else its first entry)."""
    required = node.INPUT_TYPES()["required"]
    return {name: spec[1].get("default", spec[0][0] if isinstance(spec[0], list) else None)
            for name, spec in required.items() if name != "tokens"}


METHOD_NODES = {"attend_excite": "AG_AttendAndExcite", "divide_bind": "AG_DivideAndBind", "astar": "AG_AStar",
                "focus": "AG_Focus"}


def method_spec(method: str, tokens, **overrides):
    """A method node's guidance with its defaults (``overrides`` replace inputs)."""
    node = NODES[METHOD_NODES[method]]
    built = node().build(tokens=tokens, **{**node_defaults(node), **overrides})
    return (built["result"] if isinstance(built, dict) else built)[0]  # nodes that warn return their ui too


class _AlwaysRefine:
    """Wraps a term so that the engine refines once: a pass, one update, a pass at the updated latent."""

    def __init__(self, term):
        self.term, self.weight, self.levels = term, term.weight, term.levels
        self.joint_attention = getattr(term, "joint_attention", False)

    def evaluate(self, inputs):
        return self.term.evaluate(inputs)

    def unmet(self, result, threshold):
        return torch.ones_like(result.loss, dtype=torch.bool)


def one_update(spec):
    schedule_module = ag("guidance.engine.schedule")
    point = schedule_module.RefinementPoint(0.0, 1.0, max_steps=1)
    schedules = tuple(dataclasses.replace(schedule, refinement_points=(point,), guided_percent=50.0)
                      for schedule in spec.schedules)
    return dataclasses.replace(spec, terms=tuple(_AlwaysRefine(term) for term in spec.terms), schedules=schedules)


class PassLosses(ag("guidance.engine.update").GuidanceObserver):
    def __init__(self):
        self.losses = []

    def pass_finished(self, context, result):
        if context.step == 0:
            self.losses.append(float(result.loss[0]))


def run_guided(checkpoint, spec, observer=None, steps=2, cfg=1.0):
    with torch.inference_mode():
        positive = nodes.CLIPTextEncode().encode(checkpoint.clip, PROMPT)[0]
        negative = nodes.CLIPTextEncode().encode(checkpoint.clip, "")[0]
        latent = nodes.EmptyLatentImage().generate(128, 128, 1)[0]
    return ag("guidance.comfy_bridge.doors").guided_ksample(checkpoint.model, 5, steps, cfg, "euler", "simple",
                                                            positive, negative, latent, 1.0, spec, observer)


@pytest.mark.parametrize("method", ["attend_excite", "divide_bind", "astar", "focus"])
@pytest.mark.parametrize("family", FAMILIES)
def test_one_guidance_step_lowers_the_loss(tiny_dit, family, method):
    """The update's sign, per family: x <- x - alpha dL/dx in flow models' own space. The methods' default step
    sizes, except FOCUS's SOC weight, whose first step on this 2-step schedule is about 500x its step size (A&E's
    constant weighting instead)."""
    checkpoint = tiny_dit(family)
    overrides = {"weighting": "constant"} if method == "focus" else {}
    observer = PassLosses()
    run_guided(checkpoint, one_update(method_spec(method, tokens_for(checkpoint), **overrides)), observer)
    before, after = observer.losses
    assert after < before


OFF = {"step_size": 0.0}, {"guided_percent": 0.0}


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_guidance_off_is_bit_identical_to_the_stock_samplers_through_every_door(tiny_dit, family):
    checkpoint = tiny_dit(family)
    inputs = ksampler_inputs(checkpoint, PROMPT, "euler", "simple", steps=3, size=128)
    stock = stock_ksampler(checkpoint.model, inputs)
    custom_stock = sample_custom(checkpoint.model, checkpoint.clip, comfy.samplers.sampler_object("euler"), steps=3,
                                 prompt=PROMPT, width=128, height=128, scheduler="simple", seed=3)
    for method, off in [("attend_excite", OFF[0]), ("focus", OFF[1])]:
        spec = method_spec(method, tokens_for(checkpoint), **off)
        with torch.inference_mode():
            latent, record = NODES["AG_GuidedKSampler"]().sample(checkpoint.model, **inputs, guidance=spec)
        assert torch.equal(latent["samples"], stock)  # Guided KSampler, recording every step
        assert record.maps.shape == (3, 1, 2, 4, 4)
        custom = sample_custom(checkpoint.model, checkpoint.clip, NODES["AG_GuidedSampler"]().build("euler", spec)[0],
                               steps=3, prompt=PROMPT, width=128, height=128, scheduler="simple", seed=3)
        assert torch.equal(custom, custom_stock)  # Guided Sampler in SamplerCustom's path
        guided_model = NODES["AG_ApplyGuidance"]().apply(checkpoint.model, spec)[0]
        assert torch.equal(stock_ksampler(guided_model, inputs), stock)  # Apply Attention Guidance + KSampler


def test_unsupported_transformer_is_refused_by_the_nodes_naming_the_model_input(tiny_dit):
    from devkit.tiny_dit import tiny_dit_checkpoint

    aura = tiny_dit_checkpoint("auraflow")
    spec = method_spec("attend_excite", tokens_for(tiny_dit("chroma")))
    inputs = ksampler_inputs(aura, PROMPT, "euler", "simple", steps=2, size=64)
    message = r"input 'model': this model is a MMDiT transformer, which attention guidance does not read; it " \
              r"supports SD1\.x.*FLUX\.1 \(dev, schnell\) and Chroma, SD3 and SD3\.5 \(large, medium\)"
    with pytest.raises(common.NodeInputError, match="Guided KSampler: " + message):
        NODES["AG_GuidedKSampler"]().sample(aura.model, **inputs, guidance=spec)
    with pytest.raises(common.NodeInputError, match="Apply Attention Guidance: " + message):
        NODES["AG_ApplyGuidance"]().apply(aura.model, spec)


def test_sd_tokens_on_flux_name_the_guidance_input_and_the_fix(tiny_dit, tiny):
    spec = method_spec("attend_excite", ag("guidance.comfy_bridge.text").subject_tokens(tiny("sd1").clip, PROMPT,
                                                                                        "cube, sphere"))
    inputs = ksampler_inputs(tiny_dit("flux"), PROMPT, "euler", "simple", steps=2, size=64)
    with pytest.raises(common.NodeInputError, match=re.escape(
            "Guided KSampler: input 'guidance': the subject tokens come from a CLIP text encoder, but this FLUX.1 "
            "model reads T5 tokens. Encode the prompt with CLIP Text Encode (with subjects)")):
        NODES["AG_GuidedKSampler"]().sample(tiny_dit("flux").model, **inputs, guidance=spec)


def test_blocks_beyond_the_model_and_soc_on_a_unet_are_refused(tiny_dit, tiny):
    flux_spec = method_spec("attend_excite", tokens_for(tiny_dit("flux")), dit_blocks="0-4")
    inputs = ksampler_inputs(tiny_dit("flux"), PROMPT, "euler", "simple", steps=2, size=64)
    with pytest.raises(common.NodeInputError, match=re.escape(
            "Guided KSampler: input 'guidance': blocks [2, 3, 4] do not exist: this model has 2 joint blocks (0-1)")):
        NODES["AG_GuidedKSampler"]().sample(tiny_dit("flux").model, **inputs, guidance=flux_spec)
    with pytest.raises(common.NodeInputError, match="Attend-and-Excite: input 'dit_blocks': 'x' is not a block"):
        method_spec("attend_excite", tokens_for(tiny_dit("flux")), dit_blocks="x")
    sd_tokens = ag("guidance.comfy_bridge.text").subject_tokens(tiny("sd1").clip, PROMPT, "cube, sphere")
    soc = method_spec("focus", sd_tokens, weighting="soc")
    with pytest.raises(common.NodeInputError, match="Apply Attention Guidance: input 'guidance': the SOC step size "
                                                    "follows a flow model's noise levels"):
        NODES["AG_ApplyGuidance"]().apply(tiny("sd1").model, soc)


def test_divide_and_bind_binding_reads_the_token_grid_on_flux(tiny_dit):
    """D&B's binding reads finer attribute maps (latent/1 and latent/2 on UNets); on a transformer the finest is the
    token grid, latent/2, which the guidance pass then records beside latent/4."""
    checkpoint = tiny_dit("flux")
    spec = method_spec("divide_bind", tokens_for(checkpoint), mode="tv_bind")
    assert spec.levels == (1, 2)
    seen = []

    class Levels(PassLosses):
        def pass_finished(self, context, result):
            super().pass_finished(context, result)
            seen.append(result.results[0].jsd)

    observer = Levels()
    run_guided(checkpoint, one_update(spec), observer)
    before, after = observer.losses
    assert after < before and all(jsd.abs().max() > 0 for jsd in seen)
