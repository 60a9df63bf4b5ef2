"""Attention Regulation in a batch: every image gets the edit it gets when sampled alone, the second one included
(the stock KSampler samples image k alone with the latent's ``batch_index`` [k], with the same noise)."""
import pytest
import torch

import nodes
from devkit.comfy_host import ag
from devkit.sampling import IS_CURRENT_HOST, encode

bridge = ag("guidance.comfy_bridge")
regulation = ag("guidance.regulation")
regulation_run = ag("guidance.regulation.run")
tokens_module = ag("guidance.subjects.tokens")

PROMPT = "a cat and a frog"


def regulated_ksample(checkpoint, batch_index: list[int], events: list) -> torch.Tensor:
    """The stock KSampler at 512 px (16x16 maps at latent/4: edited) on a regulated tiny SDXL, one step edited."""
    tokens = tokens_module.map_subjects(PROMPT, bridge.prompt_tokens(checkpoint.clip, PROMPT), "cat, frog")
    spec = regulation_run.RegulationSpec.from_tokens(tokens, regulation.RegulationConfig(edit_steps=1, iterations=5))
    model = bridge.with_regulation(checkpoint.model, spec, events.append)
    with torch.inference_mode():
        latent = {"samples": torch.zeros(len(batch_index), 4, 64, 64), "batch_index": batch_index}
        positive, negative = encode(checkpoint.clip, PROMPT), encode(checkpoint.clip, "")
        (out,) = nodes.KSampler().sample(model, 3, 1, 7.0, "euler", "normal", positive, negative, latent)
    return out["samples"]


@pytest.mark.skipif(not IS_CURRENT_HOST, reason="the 2024 host has no per-run hook that sees the images' noise: "
                                                "there an image's random start follows its place in the batch "
                                                "(README, Attention Regulation)")
def test_each_image_of_a_batch_is_edited_as_when_sampled_alone(tiny):
    checkpoint = tiny("sdxl")
    pair_events = []
    pair = regulated_ksample(checkpoint, [0, 1], pair_events)
    for image in range(2):
        alone_events = []
        alone = regulated_ksample(checkpoint, [image], alone_events)
        assert len(alone_events) == len(pair_events) == 10
        for in_pair, by_itself in zip(pair_events, alone_events):
            assert in_pair.layer == by_itself.layer
            torch.testing.assert_close(in_pair.after[image:image + 1], by_itself.after, rtol=0, atol=1e-4)
        # Batched and single convolutions round differently: same images to a small fraction of their scale.
        torch.testing.assert_close(pair[image:image + 1], alone, rtol=0, atol=1e-3 * alone.abs().max().item())
    assert not torch.allclose(pair_events[0].after[0], pair_events[0].after[1], atol=1e-3)
