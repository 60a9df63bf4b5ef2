"""Attention Regulation on diffusion transformers: the searched bias reaches the joint attention as its mask, on the
positive prompt's image rows x subject columns of the chosen blocks, during the edited steps only."""
import math
import re

import comfy.samplers
import pytest
import torch

import nodes
from devkit import comfy_host
from devkit.attention_spy import call_queries_and_keys
from devkit.comfy_host import ag
from devkit.sampling import ksampler_inputs, sample_custom, stock_ksampler

pytestmark = pytest.mark.skipif(not comfy_host.has_dit(), reason=comfy_host.NO_DIT_REASON)

NODES = nodes.NODE_CLASS_MAPPINGS
PROMPT, SUBJECTS = "a red cube and a blue sphere", "cube, sphere"
common = ag("nodes.common")
SIZE = 256  # latent 32x32: a 16x16 token grid, the smallest the regulation's basis takes


class MaskSpy:
    """Another pack's attention override: notes each call's q, k and mask ([B, H, L, D] and [B, H, L, L])."""

    def __init__(self):
        self.calls = []

    def __call__(self, func, *args, **kwargs):
        q, k = call_queries_and_keys(args, kwargs)
        mask = kwargs.get("mask")
        options = kwargs["transformer_options"]
        self.calls.append((q.clone(), k.clone(), None if mask is None else mask.clone(),
                           list(options["cond_or_uncond"]), float(options["sigmas"].max())))
        return func(*args, **kwargs)


def regulated(model, tokens, observer=None, edit_steps=2, blocks=None, iterations=3):
    run_module = ag("guidance.regulation.run")
    config = ag("guidance.regulation").RegulationConfig(iterations=iterations, edit_steps=edit_steps)
    spec = run_module.RegulationSpec.from_tokens(tokens, config)
    return ag("guidance.comfy_bridge.regulation").with_regulation(model, spec, observer, dit_blocks=blocks)


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_bias_reaches_the_joint_attention_where_the_search_put_it(tiny_dit, family):
    checkpoint = tiny_dit(family)
    tokens = ag("guidance.comfy_bridge.text").subject_tokens(checkpoint.clip, PROMPT, SUBJECTS)
    events, spy = [], MaskSpy()
    model = regulated(checkpoint.model, tokens, events.append, blocks=(1,))
    model.model_options["transformer_options"]["optimized_attention_override"] = spy
    plain = sample_custom(checkpoint.model, checkpoint.clip, comfy.samplers.sampler_object("euler"), steps=3,
                          prompt=PROMPT, width=SIZE, height=SIZE, cfg=2.0)
    edited = sample_custom(model, checkpoint.clip, comfy.samplers.sampler_object("euler"), steps=3, prompt=PROMPT,
                           width=SIZE, height=SIZE, cfg=2.0)
    assert not torch.equal(edited, plain)
    token_count = tokens.token_count
    masked = [call for call in spy.calls if call[2] is not None]
    assert len(events) == len(masked) == 2  # block 1, steps 0 and 1 (edit_steps 2) of 3, the positive rows
    targets = [p for positions in tokens.subject_positions for p in positions]
    grid = 16 * 16
    for (q, k, mask, cond_or_uncond, _), event in zip(masked, events):
        rows = [index for index, kind in enumerate(cond_or_uncond) if kind == 0]
        image = slice(token_count, token_count + grid)
        columns = torch.zeros(mask.shape[-1], dtype=torch.bool)
        columns[targets] = True
        assert mask[[r for r in range(mask.shape[0]) if r not in rows]].abs().max() == 0  # negative rows untouched
        assert mask[rows][:, :, :token_count].abs().max() == 0  # text queries untouched
        assert mask[rows][:, :, image][..., ~columns].abs().max() == 0  # only the subject columns
        assert mask[rows][:, :, image][..., columns].abs().max() > 0
        # the mask reproduces the probabilities the search settled on (softmax over the text keys)
        logits = q[rows][:, :, image].double() @ k[rows][:, :, :token_count].double().transpose(-1, -2)
        logits = logits / math.sqrt(q.shape[-1]) + mask[rows][:, :, image, :token_count].double()
        torch.testing.assert_close(torch.softmax(logits, dim=-1), event.after.double(), atol=1e-5, rtol=0)
    assert {event.step for event in events} == {0, 1}


def test_no_edit_steps_is_the_stock_model_and_reference_mode_is_refused(tiny_dit):
    checkpoint = tiny_dit("flux")
    tokens = ag("guidance.comfy_bridge.text").subject_tokens(checkpoint.clip, PROMPT, SUBJECTS)
    inputs = ksampler_inputs(checkpoint, PROMPT, "euler", "simple", steps=2, size=SIZE)
    off = NODES["AG_AttentionRegulationV2"]().apply(checkpoint.model, tokens, 0, 20, "default")[0]
    assert torch.equal(stock_ksampler(off, inputs), stock_ksampler(checkpoint.model, inputs))
    with pytest.raises(common.NodeInputError, match=re.escape("Attention Regulation: input 'mode': on FLUX, Chroma and "
                                                              "SD3 Attention Regulation runs in default mode only")):
        NODES["AG_AttentionRegulationV2"]().apply(checkpoint.model, tokens, 25, 20, "reference")
    with pytest.raises(common.NodeInputError, match="Attention Regulation: input 'dit_blocks': blocks \\[5\\] do not "
                                                    "exist"):
        NODES["AG_AttentionRegulationV2"]().apply(checkpoint.model, tokens, 25, 20, "default", "5")


def test_other_transformers_are_refused_naming_the_model_input(tiny_dit):
    from devkit.tiny_dit import tiny_dit_checkpoint

    aura = tiny_dit_checkpoint("auraflow")
    tokens = ag("guidance.comfy_bridge.text").subject_tokens(tiny_dit("chroma").clip, PROMPT, SUBJECTS)
    with pytest.raises(common.NodeInputError, match="Attention Regulation: input 'model': this model is a MMDiT "
                                                    "transformer, which Attention Regulation does not read"):
        NODES["AG_AttentionRegulationV2"]().apply(aura.model, tokens, 25, 20, "default")
