"""Recording without guidance, Visualize Attention and Save Attention Maps on a real host."""
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

import nodes
from devkit import workflow as wf
from devkit.comfy_host import ag
from devkit.sampling import encode

record_module = ag("guidance.inspection.history")
NodeInputError = ag("nodes.common").NodeInputError
NODES = nodes.NODE_CLASS_MAPPINGS
PROMPT, SUBJECTS = "a cat and a frog", "cat, frog"


def ksampler_inputs(checkpoint, sampler="euler", scheduler="normal", steps=4, batch=1, width=256, height=256):
    with torch.inference_mode():
        positive, tokens = NODES["AG_TextEncodeWithTokens"]().encode(checkpoint.clip, PROMPT, SUBJECTS)["result"]
        latent = nodes.EmptyLatentImage().generate(width, height, batch)[0]
        inputs = dict(seed=3, steps=steps, cfg=7.0, sampler_name=sampler, scheduler=scheduler, positive=positive,
                      negative=encode(checkpoint.clip, ""), latent_image=latent, denoise=1.0)
    return inputs, tokens


def record_run(checkpoint, **kwargs):
    inputs, tokens = ksampler_inputs(checkpoint, **kwargs)
    guidance = NODES["AG_RecordAttention"]().build(tokens)[0]
    with torch.inference_mode():
        latent, record = NODES["AG_GuidedKSampler"]().sample(checkpoint.model, **inputs, guidance=guidance)
    return latent, record


@pytest.mark.parametrize("sampler,scheduler", [("euler", "normal"), ("dpmpp_2m", "karras"), ("euler_ancestral",
                                                                                               "normal")])
def test_recording_only_is_bit_identical_to_the_stock_ksampler_and_records(tiny, sampler, scheduler):
    checkpoint = tiny("sd1")
    inputs, _ = ksampler_inputs(checkpoint, sampler, scheduler)
    with torch.inference_mode():
        stock = nodes.KSampler().sample(checkpoint.model, **inputs)[0]["samples"]
    latent, record = record_run(checkpoint, sampler=sampler, scheduler=scheduler)
    assert torch.equal(latent["samples"], stock)
    assert record.labels == ("cat", "frog") and record.steps == (0, 1, 2, 3) and not any(record.guided)
    assert record.maps.shape == (4, 1, 2, 8, 8)
    assert torch.isfinite(record.maps).all() and (record.maps > 0).all()


def test_visualize_a_batch_of_wide_images_with_overlay_and_preview(tiny, tmp_path):
    checkpoint = tiny("sd1")
    latent, record = record_run(checkpoint, steps=3, batch=2, width=320, height=192)
    assert record.maps.shape == (3, 2, 2, 6, 10)
    with torch.inference_mode():
        images = nodes.VAEDecode().decode(checkpoint.vae, latent)[0]
    visualize = NODES["AG_VisualizeAttention"]()
    with wf.OutputDirectories(tmp_path):
        grid = visualize.draw(record, "all", 1, "", "grid", "viridis", "per map", 0.5, 160, images)
        per_step = visualize.draw(record, "list", 1, "2, 0", "one image per step", "jet", "global", 0.5, 160)
    figures = grid["result"][0]
    assert figures.shape[0] == 2 and figures.shape[1] > 2 * 96 and figures.shape[2] > 3 * 160  # 160×96 tiles
    assert not torch.equal(figures[0], figures[1])
    assert per_step["result"][0].shape[0] == 2 * 2  # two images × two steps
    previews = grid["ui"]["images"]
    assert len(previews) == 2 and all(preview["type"] == "temp" for preview in previews)
    with Image.open(tmp_path / "temp" / previews[0]["subfolder"] / previews[0]["filename"]) as shown:
        assert shown.size == (figures.shape[2], figures.shape[1])


def test_visualize_names_the_input_to_fix(tiny):
    checkpoint = tiny("sd1")
    _, record = record_run(checkpoint, steps=2)
    visualize = NODES["AG_VisualizeAttention"]()
    with pytest.raises(NodeInputError, match=r"Visualize Attention: input 'step_list': steps \[7\] were not recorded"):
        visualize.draw(record, "list", 1, "7", "grid", "viridis", "per map", 0.5, 64)
    with pytest.raises(NodeInputError, match="input 'image': the image batch has 3 images, the attention 1"):
        visualize.draw(record, "all", 1, "", "grid", "viridis", "per map", 0.5, 64, torch.zeros(3, 64, 64, 3))


def test_save_attention_writes_the_maps_and_their_labels(tiny, tmp_path):
    checkpoint = tiny("sd1")
    _, record = record_run(checkpoint, steps=2)
    with wf.OutputDirectories(tmp_path):
        first = NODES["AG_SaveAttention"]().save(record, "maps/run")
        second = NODES["AG_SaveAttention"]().save(record, "maps/run")
    assert first["ui"]["text"] == ["maps/run_00001_.safetensors"]
    assert second["ui"]["text"] == ["maps/run_00002_.safetensors"]  # never overwrites
    path = tmp_path / "output" / first["ui"]["text"][0]
    with safe_open(str(path), "pt") as opened:
        metadata = opened.metadata()
    assert metadata["labels"] == '["cat", "frog"]' and metadata["steps"] == "[0, 1]"
    loaded = record_module.history_from_tensors(load_file(str(path)), metadata)
    assert torch.equal(loaded.maps, record.maps.float()) and loaded.sigmas == record.sigmas
