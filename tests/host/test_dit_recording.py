"""Recording a diffusion transformer's image-to-text attention through the host's own hooks (joint-block replace
patches and a block-scoped attention override chained to another pack's): the maps equal a direct softmax(QKᵀ) over
the text keys, the sampled image is unchanged, MMDiT-X's image-only attention and single blocks are not read."""
import math

import comfy.samplers
import pytest
import torch
import torch.nn.functional as F

from devkit import comfy_host
from devkit.attention_spy import call_queries_and_keys
from devkit.comfy_host import ag
from devkit.sampling import recording_sampler, sample_custom

pytestmark = pytest.mark.skipif(not comfy_host.has_dit(), reason=comfy_host.NO_DIT_REASON)

FAMILIES = ("flux", "chroma", "sd3", "sd35_medium")
PROMPT = "a red cube and a blue sphere"
SIZE = 128  # latent 16x16, token grid 8x8, maps 4x4


class AttentionSpy:
    """Another pack's attention override: notes every call's q and k ([B, H, L, D]), whether the pack's block
    override chained it, and returns the host's attention unchanged."""

    def __init__(self) -> None:
        self.calls = []

    def __call__(self, func, *args, **kwargs):
        q, k = call_queries_and_keys(args, kwargs)
        options = kwargs["transformer_options"]
        from_pack_block = type(options.get("optimized_attention_override")).__name__ == "BlockAttention"
        self.calls.append((q.detach().clone(), k.detach().clone(), list(options["cond_or_uncond"]), from_pack_block))
        return func(*args, **kwargs)


def spied(model, spy):
    clone = model.clone()
    clone.model_options["transformer_options"]["optimized_attention_override"] = spy
    return clone


def direct_maps(calls, token_count: int, grid: tuple[int, int]) -> torch.Tensor:
    """The positive rows' softmax over the text keys of every joint call, mean over heads and calls, pooled 2x2:
    ``[B, h/2, w/2, T]`` in fp64."""
    image = grid[0] * grid[1]
    means = []
    for q, k, cond_or_uncond, _ in calls:
        size = q.shape[0] // len(cond_or_uncond)
        rows = [index * size + r for index, kind in enumerate(cond_or_uncond) if kind == 0 for r in range(size)]
        q_image = q[rows][:, :, token_count:token_count + image].double()
        logits = q_image @ k[rows][:, :, :token_count].double().transpose(-1, -2) / math.sqrt(q.shape[-1])
        means.append(torch.softmax(logits, dim=-1).mean(dim=1))
    mean = torch.stack(means).mean(dim=0)  # [B, N, T]
    spatial = mean.transpose(1, 2).reshape(mean.shape[0], token_count, *grid)
    pooled = F.avg_pool2d(spatial, 2, ceil_mode=True)
    return pooled.permute(0, 2, 3, 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_recorded_maps_equal_a_direct_softmax_over_the_text_keys(tiny_dit, family):
    checkpoint = tiny_dit(family)
    plain_spy, recording_spy, history = AttentionSpy(), AttentionSpy(), []
    plain = sample_custom(spied(checkpoint.model, plain_spy), checkpoint.clip, comfy.samplers.sampler_object("euler"),
                          steps=1, prompt=PROMPT, width=SIZE, height=SIZE, cfg=3.0)
    recorded = sample_custom(spied(checkpoint.model, recording_spy), checkpoint.clip,
                             recording_sampler("euler", history), steps=1, prompt=PROMPT, width=SIZE, height=SIZE,
                             cfg=3.0)
    assert torch.equal(recorded, plain)  # recording changes nothing, another pack's override still runs
    assert len(recording_spy.calls) == len(plain_spy.calls)
    token_count = history[0].maps.shape[-1]
    joint = [call for call in recording_spy.calls if call[3] and call[0].shape[2] == token_count + 64]
    assert len(joint) == 2  # one joint call in each of the two joint blocks
    if family == "sd35_medium":  # MMDiT-X's image-only attention in block 0 goes through the override, unread
        assert any(call[3] and call[0].shape[2] == 64 for call in recording_spy.calls)
    if family in ("flux", "chroma"):  # as many single-block calls (text and image too, not read) as double-block
        assert sum(not call[3] for call in recording_spy.calls) == sum(call[3] for call in recording_spy.calls)
    assert history[0].maps.shape == (1, 4, 4, token_count)
    torch.testing.assert_close(history[0].maps.double(), direct_maps(joint, token_count, (8, 8)), atol=1e-5, rtol=0)
    torch.testing.assert_close(history[0].maps.sum(-1), torch.ones(1, 4, 4), atol=1e-5, rtol=0)


def test_block_range_reads_only_the_chosen_blocks(tiny_dit):
    checkpoint = tiny_dit("flux")
    spec_module, text = ag("guidance.engine.spec"), ag("guidance.comfy_bridge.text")
    tokens = text.subject_tokens(checkpoint.clip, PROMPT, "cube, sphere")
    spy, history = AttentionSpy(), []
    sampler = ag("guidance.comfy_bridge.sampling").guided_sampler(
        "euler", spec_module.GuidanceSpec(tokens, (), (), dit_blocks=(1,)), history)
    sample_custom(spied(checkpoint.model, spy), checkpoint.clip, sampler, steps=1, prompt=PROMPT, width=SIZE,
                  height=SIZE, cfg=1.0)
    pack_calls = [call for call in spy.calls if call[3]]
    assert len(pack_calls) == 1  # only block 1 carries the pack's override
    torch.testing.assert_close(history[0].maps.double(), direct_maps(pack_calls, 256, (8, 8)), atol=1e-5, rtol=0)


def test_tokens_of_another_family_are_refused(tiny_dit, tiny):
    text, sampling = ag("guidance.comfy_bridge.text"), ag("guidance.comfy_bridge.sampling")
    capture = ag("guidance.comfy_bridge.dit.capture")
    spec_module = ag("guidance.engine.spec")
    sd_tokens = text.subject_tokens(tiny("sd1").clip, PROMPT, "cube")
    sampler = sampling.guided_sampler("euler", spec_module.GuidanceSpec(sd_tokens, (), ()), [])
    with pytest.raises(capture.TokenLayoutError, match="the subject tokens come from a CLIP text encoder, but this "
                                                       "FLUX.1 model reads T5 tokens"):
        sample_custom(tiny_dit("flux").model, tiny_dit("flux").clip, sampler, steps=1, width=SIZE, height=SIZE)
