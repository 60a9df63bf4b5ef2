"""The attention recorder on a real host: exact outputs, layer selection, composition with other patches."""
import comfy.samplers
import pytest
import torch

from devkit.comfy_host import ag
from devkit.sampling import recording_sampler, sample_custom, with_recorder

bridge = ag("guidance.comfy_bridge")
store_module = ag("guidance.capture.store")
recorder_module = ag("guidance.comfy_bridge.recorder")
compat = ag("guidance.comfy_bridge.compat")

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
    sample_custom(with_recorder(checkpoint.model), checkpoint.clip, recording_sampler("euler", record),
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
    patched = sample_custom(with_recorder(checkpoint.model), checkpoint.clip,
                            recording_sampler("euler", record))
    assert record, "the recorder did not record"
    assert (patched - plain).abs().max().item() <= 1e-5


def replace_patches(model) -> dict:
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})


def test_another_packs_patch_still_runs_and_is_wrapped(tiny):
    checkpoint = tiny("sd1")
    calls = []

    def halve_attention(q, k, v, extra_options):  # stands in for an IPAdapter-style attn2 replace patch
        calls.append(extra_options["block"])
        return compat.host_attention(q, k, v, extra_options) * 0.5

    foreign = checkpoint.model.clone()
    foreign.set_model_attn2_replace(halve_attention, "input", 7)
    expected = sample_custom(foreign, checkpoint.clip, comfy.samplers.sampler_object("euler"))
    calls.clear()

    record = []
    recorded = sample_custom(with_recorder(foreign), checkpoint.clip, recording_sampler("euler", record))
    assert calls, "the other pack's patch no longer runs"
    assert (recorded - expected).abs().max().item() <= 1e-5
    assert len(record) == 2


def test_installing_twice_equals_installing_once(tiny):
    model = tiny("sdxl").model
    once, twice = with_recorder(model), with_recorder(with_recorder(model))
    assert replace_patches(once).keys() == replace_patches(twice).keys()
    assert len(replace_patches(once)) == 6 * 2  # six latent/4 sites, two transformer blocks each
    assert all(patch.wrapped is None for patch in replace_patches(twice).values())


def test_input_model_is_not_mutated_and_each_run_starts_clean(tiny):
    checkpoint = tiny("sd1")
    options_before = repr(checkpoint.model.model_options)
    recorder = with_recorder(checkpoint.model)
    assert repr(checkpoint.model.model_options) == options_before
    assert replace_patches(recorder) and not replace_patches(checkpoint.model)

    record = []
    sampler = recording_sampler("euler", record)
    first = sample_custom(recorder, checkpoint.clip, sampler, steps=3)
    first_maps = [step.maps for step in record]
    second = sample_custom(recorder, checkpoint.clip, sampler, steps=3)
    assert [step.step for step in record] == [0, 1, 2]
    assert torch.equal(first, second)
    assert all(torch.equal(a, b.maps) for a, b in zip(first_maps, record))
    assert recorder_module.STORE_KEY not in recorder.model_options["transformer_options"]


def test_batches_record_every_image(tiny):
    checkpoint = tiny("sd1")
    record = []
    sample_custom(with_recorder(checkpoint.model), checkpoint.clip, recording_sampler("euler", record),
                  batch=2)
    assert record[0].maps.shape == (2, 8, 8, 77)
    assert not torch.equal(record[0].maps[0], record[0].maps[1])  # different noise, different maps


def test_unsupported_family_names_the_supported_ones():
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.Stable_Cascade_C({
        "stable_cascade_stage": "c", "c_hidden": [32, 32], "nhead": [2, 2], "blocks": [[1, 1], [1, 1]],
        "block_repeat": [[1, 1], [1, 1]], "c_cond": 32, "c_r": 32,
    })
    with torch.inference_mode():
        model = comfy.model_patcher.ModelPatcher(comfy.model_base.StableCascade_C(config), torch.device("cpu"),
                                                 torch.device("cpu"))
    with pytest.raises(bridge.UnsupportedModelError, match="supports SD1.x, SD2.x and SDXL"):
        with_recorder(model)


def test_pack_registers_its_nodes():
    import nodes as host_nodes

    pack_nodes = ag("nodes")
    assert {"AG_TextEncodeWithTokens", "AG_TokenPicker"} <= set(pack_nodes.NODE_CLASS_MAPPINGS)
    for node_id, cls in pack_nodes.NODE_CLASS_MAPPINGS.items():
        assert host_nodes.NODE_CLASS_MAPPINGS[node_id] is cls
        assert host_nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id] == cls.DISPLAY_NAME
