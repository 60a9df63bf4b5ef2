"""The attention recorder on a real host: exact outputs, layer selection, composition with other patches."""
import json

import pytest
import torch

import comfy.samplers
from testkit import REFERENCE_DIR
from testkit.comfy_host import ag
from testkit.sampling import sample_custom

bridge = ag("guidance.comfy_bridge")
store_module = ag("guidance.store")

# Real block layouts (comfyui-host.md §4): the latent/4 cross-attention layers of each family.
EXPECTED_SITES = {
    "sd1": [("input", 7), ("input", 8), ("output", 3), ("output", 4), ("output", 5)],
    "sd2": [("input", 7), ("input", 8), ("output", 3), ("output", 4), ("output", 5)],
    "sdxl": [("input", 7), ("input", 8), ("middle", 0), ("output", 0), ("output", 1), ("output", 2)],
}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_sites_are_the_latent_over_4_layers(tiny, family):
    sites = bridge.guidance_sites(tiny(family).model)
    assert [site.block for site in sites] == EXPECTED_SITES[family]
    assert all(site.depth == (2 if family == "sdxl" else 1) for site in sites)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("width,height", [(256, 256), (512, 320)])
def test_recorded_maps_have_the_layer_size_and_sum_to_one(tiny, family, width, height):
    checkpoint = tiny(family)
    record = []
    sample_custom(bridge.with_recorder(checkpoint.model), checkpoint.clip, bridge.recording_sampler("euler", record),
                  width=width, height=height)
    assert [step.step for step in record] == [0, 1]
    expected = (-(-height // 32), -(-width // 32))  # latent/4 of the latent (image / 8)
    for step in record:
        assert step.maps.shape == (1, *expected, 77)
        torch.testing.assert_close(step.maps.sum(-1), torch.ones(1, *expected), atol=1e-5, rtol=0)


def test_patched_output_equals_unpatched(tiny):
    checkpoint = tiny("sd1")
    plain = sample_custom(checkpoint.model, checkpoint.clip, comfy.samplers.sampler_object("euler"))
    record = []
    patched = sample_custom(bridge.with_recorder(checkpoint.model), checkpoint.clip,
                            bridge.recording_sampler("euler", record))
    assert record, "the recorder did not record"
    assert (patched - plain).abs().max().item() <= 1e-5
