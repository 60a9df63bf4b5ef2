"""Every shipped workflow, converted to the API prompt, validated and executed by the host's own execution engine.

Execution swaps each ``CheckpointLoaderSimple`` for the test-only ``AG_TestTinyCheckpoint`` (tiny random-weight
models) and shrinks the graph so that it runs in seconds on CPU: EmptyLatentImage to at most 256 px on its longest
side and every ``steps`` input to at most 4. Validation of the unshrunk prompt checks the values as shipped.
"""
import copy
import inspect
import json
import re
from pathlib import Path

import execution
import pytest
from PIL import Image

import nodes
from devkit import REPO_ROOT, comfy_host
from devkit import workflow as wf
from devkit.comfy_host import ag

WORKFLOW_DIRS = (REPO_ROOT / "workflows", REPO_ROOT / "example_workflows")
SHIPPED = sorted(path for folder in WORKFLOW_DIRS if folder.is_dir() for path in folder.glob("*.json"))
STOCK = Path(__file__).parent / "data" / "stock_txt2img.json"  # the frontend's default graph, stock nodes only
CURRENT_HOST = "partial_execution_list" in inspect.signature(execution.validate_prompt).parameters


def _params():
    shipped = [pytest.param(path, id=f"{path.parent.name}/{path.name}") for path in SHIPPED]
    if not shipped:
        shipped = [pytest.param(None, id="shipped", marks=pytest.mark.skip(reason="no workflows in workflows/ yet"))]
    return [pytest.param(STOCK, id="stock_txt2img"), *shipped]


def output_node_ids(prompt):
    return {node_id for node_id, node in prompt.items()
            if getattr(nodes.NODE_CLASS_MAPPINGS[node["class_type"]], "OUTPUT_NODE", False)}


def saved_images(result, root, node_ids=None):
    """Paths of the image files the UI outputs name (SaveImage: output folder; PreviewImage: temp folder), of all
    output nodes or of those in ``node_ids``."""
    paths = []
    for node_id, ui in result.outputs.items():
        for image in ui.get("images", []) if node_ids is None or node_id in node_ids else ():
            paths.append(root / image["type"] / image["subfolder"] / image["filename"])
    return paths


def without_meta(prompt):
    return {node_id: {key: value for key, value in node.items() if key != "_meta"} for node_id, node in prompt.items()}


def ui_node(workflow, node_id):
    return next(entry for entry in workflow["nodes"] if entry["id"] == node_id)


def add_link(workflow, origin, origin_slot, target, target_slot, link_type):
    link_id = max(link[0] for link in workflow["links"]) + 1
    workflow["links"].append([link_id, origin, origin_slot, target, target_slot, link_type])
    return link_id


@pytest.mark.parametrize("path", _params())
def test_workflow_validates_and_executes(path, tmp_path):
    workflow = wf.load(path)
    if wf.dit_workflow(workflow) and not comfy_host.has_dit():
        pytest.skip(comfy_host.NO_DIT_REASON)
    prompt = wf.with_tiny_checkpoints(wf.to_prompt(workflow, name=path.name))
    expected_outputs = output_node_ids(prompt)
    assert expected_outputs, f"{path.name} has no output node (SaveImage, PreviewImage, ...)"

    as_shipped = wf.validate(prompt)
    assert as_shipped.ok and not as_shipped.node_errors, as_shipped.messages()
    assert set(as_shipped.outputs) == expected_outputs

    small = wf.shrunk(prompt)
    assert wf.validate(small).ok
    with wf.OutputDirectories(tmp_path):
        result = wf.execute(small, sorted(expected_outputs), workflow)
    assert result.success and result.error() is None, result.error()
    events = [event for event, _ in result.status_messages]
    assert events[0] == "execution_start" and not {"execution_error", "execution_interrupted"} & set(events)
    assert events[-1] == "execution_success" or not CURRENT_HOST, events  # the 2024 host sends no success message
    executed = {data["node"] for event, data in result.server_messages if event == "executed"}
    assert expected_outputs <= executed
    assert expected_outputs <= {node_id for node_id, ui in result.outputs.items() if ui}
    assert saved_images(result, tmp_path), "no output node saved or previewed an image"
    stock_savers = {node_id for node_id, node in small.items() if node["class_type"] in ("SaveImage", "PreviewImage")}
    for image_path in saved_images(result, tmp_path, stock_savers):  # decoded images (attention grids are larger)
        with Image.open(image_path) as image:
            assert 64 <= min(image.size) and max(image.size) <= wf.MAX_TEST_SIZE, image.size  # shrunk, as decoded
            if image_path.is_relative_to(tmp_path / "output"):  # saved, not previewed: carries the workflow
                assert json.loads(image.info["workflow"]) == workflow  # the frontend's extra data reached the host


REGULATION_WORKFLOW = REPO_ROOT / "workflows" / "attention_regulation_sd15.json"


def regulation_node_id(prompt):
    return next(node_id for node_id, node in prompt.items() if node["class_type"].startswith("AG_AttentionRegulation"))


def test_the_attention_regulation_workflow_edits_at_its_own_size(tmp_path):
    """At 512 px (the shipped size) the SD1.x layers it edits have 16x16 maps: the image differs from the same graph
    with the edit off. (The shrunk run of every workflow above samples 256 px, where it edits nothing.)"""
    workflow = wf.load(REGULATION_WORKFLOW)
    prompt = wf.shrunk(wf.with_tiny_checkpoints(wf.to_prompt(workflow)), max_size=512)
    assert prompt[regulation_node_id(prompt)]["inputs"]["edit_percent"] > 0
    off = copy.deepcopy(prompt)
    off[regulation_node_id(off)]["inputs"]["edit_percent"] = 0.0
    images = []
    for name, variant in (("on", prompt), ("off", off)):
        with wf.OutputDirectories(tmp_path / name):
            result = wf.execute(variant, sorted(output_node_ids(variant)), workflow)
        assert result.success, result.error()
        [path] = saved_images(result, tmp_path / name)
        with Image.open(path) as image:
            assert image.size == (512, 512)
            images.append(image.tobytes())
    assert images[0] != images[1]


def test_a_workflow_saved_with_the_first_attention_regulation_node_still_runs(tmp_path):
    """Its node id and [edit_steps, iterations, mode] widgets (a step count) load into the deprecated node."""
    workflow = wf.load(REGULATION_WORKFLOW)
    node = next(entry for entry in workflow["nodes"] if entry["type"] == "AG_AttentionRegulationV2")
    node["type"], node["widgets_values"] = "AG_AttentionRegulation", [25, 20, "default"]
    prompt = wf.with_tiny_checkpoints(wf.to_prompt(workflow))
    assert prompt[regulation_node_id(prompt)]["inputs"] | {"model": None, "tokens": None} == {
        "edit_steps": 25, "iterations": 20, "mode": "default", "model": None, "tokens": None}
    assert wf.validate(prompt).ok
    with wf.OutputDirectories(tmp_path):
        result = wf.execute(wf.shrunk(prompt), sorted(output_node_ids(prompt)), workflow)
    assert result.success, result.error()


def test_execution_error_is_reported(tmp_path):
    """A node that raises during execution (a subject missing from the prompt) fails the run, naming the node."""
    workflow = wf.load(STOCK)
    encoder = ui_node(workflow, 6)
    encoder["type"] = "AG_TextEncodeWithTokens"
    encoder["widgets_values"] = ["a photo of a cat and a frog", "dog"]
    prompt = wf.shrunk(wf.with_tiny_checkpoints(wf.to_prompt(workflow)))
    assert wf.validate(prompt).ok
    with wf.OutputDirectories(tmp_path):
        result = wf.execute(prompt, ["9"], workflow)
    assert not result.success
    assert re.match(r"execution_error in node 6 \(AG_TextEncodeWithTokens\): .*input 'subjects'", result.error())
    assert not any((tmp_path / "output").iterdir())


# --- conversion -------------------------------------------------------------------------------------------------

STOCK_PROMPT = {
    "3": {"class_type": "KSampler", "inputs": {
        "seed": 42, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal", "denoise": 1,
        "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat and a frog", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}


def test_stock_workflow_converts_like_the_frontend():
    prompt = wf.to_prompt(wf.load(STOCK))
    assert without_meta(prompt) == STOCK_PROMPT  # the seed's control value ("fixed") is not an input
    assert prompt["3"]["_meta"] == {"title": "KSampler"}


def test_frontend_only_nodes_and_converted_widgets():
    """A Note, a Reroute on the VAE link, a PrimitiveNode driving KSampler's seed (a widget converted to an input)
    and a muted PreviewImage: the prompt is the stock one with the primitive's seed."""
    workflow = wf.load(STOCK)
    workflow["nodes"].append({"id": 20, "type": "Note", "mode": 0, "widgets_values": ["read me"]})
    vae_link = next(link for link in workflow["links"] if link[5] == "VAE")
    vae_link[1:3] = [21, 0]
    reroute_in = add_link(workflow, 4, 2, 21, 0, "VAE")
    workflow["nodes"].append({"id": 21, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*",
                                                                                   "link": reroute_in}]})
    seed_link = add_link(workflow, 22, 0, 3, 4, "INT")
    workflow["nodes"].append({"id": 22, "type": "PrimitiveNode", "mode": 0, "widgets_values": [7, "fixed"],
                              "outputs": [{"name": "INT", "type": "INT", "links": [seed_link]}]})
    ui_node(workflow, 3)["inputs"].append({"name": "seed", "type": "INT", "link": seed_link,
                                        "widget": {"name": "seed"}})
    preview_link = add_link(workflow, 8, 0, 23, 0, "IMAGE")
    workflow["nodes"].append({"id": 23, "type": "PreviewImage", "mode": 2,
                              "inputs": [{"name": "images", "type": "IMAGE", "link": preview_link}]})

    expected = copy.deepcopy(STOCK_PROMPT)
    expected["3"]["inputs"]["seed"] = 7
    assert without_meta(wf.to_prompt(workflow)) == expected


def test_input_from_a_muted_node_is_dropped_and_fails_validation():
    workflow = wf.load(STOCK)
    ui_node(workflow, 5)["mode"] = 2  # EmptyLatentImage muted: KSampler loses latent_image, as the frontend sends it
    prompt = wf.with_tiny_checkpoints(wf.to_prompt(workflow))
    assert "5" not in prompt and "latent_image" not in prompt["3"]["inputs"]
    result = wf.validate(prompt)
    assert not result.ok
    assert [error["type"] for error in result.node_errors["3"]["errors"]] == ["required_input_missing"]
    assert any("Required input is missing: latent_image" in message for message in result.messages())


def test_widget_values_out_of_step_are_rejected():
    workflow = wf.load(STOCK)
    ui_node(workflow, 3)["widgets_values"] = [42, 20, 8, "euler", "normal", 1]  # saved without the control value
    with pytest.raises(wf.WorkflowError, match=r"node 3 \(KSampler\): expected the control_after_generate value "
                                               r"of 'seed'.*found 20"):
        wf.to_prompt(workflow)
    ui_node(workflow, 3)["widgets_values"] = [42, "fixed", 20, 8, "euler", "normal", 1, "extra"]
    with pytest.raises(wf.WorkflowError, match=r"node 3 \(KSampler\): widgets_values has 8 values, this host's "
                                               r"inputs account for 7"):
        wf.to_prompt(workflow)


def test_legacy_boolean_seed_control_is_accepted():
    workflow = wf.load(STOCK)
    ui_node(workflow, 3)["widgets_values"][1] = True  # the 2023 default graph's form; the frontend reads "randomize"
    assert without_meta(wf.to_prompt(workflow)) == STOCK_PROMPT


class ForcedInputNode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"forceInput": True}), "count": ("INT", {"default": 1})}}


@pytest.mark.parametrize("saved", [[3], ["unused", 3]])  # forceInput: no widget value, or a hidden widget's value
def test_force_input_and_upload_widgets(saved):
    workflow = {"nodes": [
        {"id": 1, "type": "LoadImage", "mode": 0, "widgets_values": ["example.png", "image"]},
        {"id": 2, "type": "Forced", "mode": 0, "widgets_values": saved,
         "inputs": [{"name": "text", "type": "STRING", "link": 1}]},
        {"id": 3, "type": "Forced", "mode": 0, "widgets_values": [3, 4, 5]},
    ], "links": [[1, 1, 0, 2, 0, "STRING"]]}
    registry = {"LoadImage": nodes.LoadImage, "Forced": ForcedInputNode}
    with pytest.raises(wf.WorkflowError, match=r"node 3 \(Forced\): widgets_values has 3 values, this host's "
                                               r"inputs account for 1"):
        wf.to_prompt(workflow, registry)
    workflow["nodes"].pop()
    assert without_meta(wf.to_prompt(workflow, registry)) == {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},  # the "upload" button is not an input
        "2": {"class_type": "Forced", "inputs": {"count": 3, "text": ["1", 0]}},
    }


def test_unsupported_graphs_are_rejected():
    workflow = wf.load(STOCK)
    ui_node(workflow, 8)["mode"] = 4
    with pytest.raises(wf.WorkflowError, match=r"node 8 \(VAEDecode\): bypassed nodes are not supported"):
        wf.to_prompt(workflow)
    workflow = wf.load(STOCK)
    workflow["definitions"] = {"subgraphs": [{"id": "x"}]}
    with pytest.raises(wf.WorkflowError, match="subgraphs are not supported"):
        wf.to_prompt(workflow)


@pytest.mark.parametrize("name, family", [
    ("v1-5-pruned-emaonly.safetensors", "sd1"), ("sd_xl_base_1.0.safetensors", "sdxl"),
    ("SDXL/juggernautXL.safetensors", "sdxl"), ("v2-1_768-ema-pruned.safetensors", "sd2"),
    ("sd21-768.ckpt", "sd2"), ("dreamshaper_8.safetensors", "sd1"), ("flux1-dev.safetensors", "flux"),
    ("FLUX/flux1-schnell-fp8.safetensors", "flux"), ("chroma-unlocked-v50.safetensors", "chroma"),
    ("sd3.5_large_fp8_scaled.safetensors", "sd3"), ("sd3.5_medium.safetensors", "sd35_medium"),
])
def test_checkpoint_family(name, family):
    assert wf.checkpoint_family(name) == family


def test_shrunk_caps_sizes_and_steps():
    prompt = copy.deepcopy(STOCK_PROMPT)
    prompt["5"]["inputs"].update(width=1024, height=768)
    small = wf.shrunk(prompt)
    assert small["5"]["inputs"] == {"width": 256, "height": 192, "batch_size": 1}
    assert small["3"]["inputs"]["steps"] == 4
    assert prompt["3"]["inputs"]["steps"] == 20  # the input is not modified
    assert wf.shrunk(small) == small
    boxes = {"1": {"class_type": "AG_BoxLayout", "inputs": {"boxes": "0,0,1,1", "width": 768, "height": 512}}}
    assert wf.shrunk(boxes)["1"]["inputs"] == {"boxes": "0,0,1,1", "width": 256, "height": 128}


def test_tiny_checkpoint_swap():
    prompt = wf.with_tiny_checkpoints(STOCK_PROMPT)
    assert prompt["4"] == {"class_type": wf.TINY_LOADER, "inputs": {"family": "sd1"}}
    assert STOCK_PROMPT["4"]["class_type"] == "CheckpointLoaderSimple"


def test_separate_loaders_become_tiny_loaders_with_links_on_their_outputs():
    """FLUX's stock loaders: the diffusion model names the family; CLIP and VAE links move to the tiny loader's
    CLIP (1) and VAE (2) outputs."""
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors",
                                                          "clip_name2": "t5xxl_fp16.safetensors", "type": "flux"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["2", 0]}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["3", 0]}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["1", 0]}},
    }
    swapped = wf.with_tiny_checkpoints(prompt)
    assert {node_id: swapped[node_id]["inputs"] for node_id in "123"} == {node_id: {"family": "flux"}
                                                                          for node_id in "123"}
    assert swapped["4"]["inputs"]["clip"] == ["2", 1] and swapped["5"]["inputs"]["vae"] == ["3", 2]
    assert swapped["6"]["inputs"]["model"] == ["1", 0] and prompt["4"]["inputs"]["clip"] == ["2", 0]


# --- the host's validation ---------------------------------------------------------------------------------------

def test_unknown_node_type():
    workflow = wf.load(STOCK)
    ui_node(workflow, 8)["type"] = "AG_NoSuchNode"
    with pytest.raises(wf.WorkflowError, match=r"node 8 \(AG_NoSuchNode\): this host has no node type"):
        wf.to_prompt(workflow)

    prompt = wf.with_tiny_checkpoints(wf.to_prompt(wf.load(STOCK)))
    prompt["8"]["class_type"] = "AG_NoSuchNode"
    if CURRENT_HOST:
        result = wf.validate(prompt)
        assert not result.ok
        assert result.error["message"] == "Cannot execute because node AG_NoSuchNode does not exist."
    else:  # the 2024 host looks the type up without a check (its server answers such a prompt with an error 500)
        with pytest.raises(KeyError, match="AG_NoSuchNode"):
            wf.validate(prompt)


def test_wrong_link_type_fails_validation():
    workflow = wf.load(STOCK)
    model_link = next(link for link in workflow["links"] if link[5] == "MODEL")
    model_link[2] = 1  # KSampler's model input fed by the loader's CLIP output
    result = wf.validate(wf.with_tiny_checkpoints(wf.to_prompt(workflow)))
    assert not result.ok and result.error["type"] == "prompt_outputs_failed_validation"
    (error,) = result.node_errors["3"]["errors"]
    assert error["type"] == "return_type_mismatch"
    assert error["message"] == "Return type mismatch between linked nodes"
    assert error["extra_info"]["received_type"] == "CLIP" and error["extra_info"]["input_name"] == "model"


def test_value_out_of_range_fails_validation():
    prompt = wf.with_tiny_checkpoints(wf.to_prompt(wf.load(STOCK)))
    prompt["5"]["inputs"]["width"] = 4
    result = wf.validate(prompt)
    assert not result.ok
    assert [error["type"] for error in result.node_errors["5"]["errors"]] == ["value_smaller_than_min"]


# --- the test-only loader ----------------------------------------------------------------------------------------

def test_tiny_loader_is_registered_by_the_dev_kit_not_by_the_pack():
    assert wf.TINY_LOADER in nodes.NODE_CLASS_MAPPINGS  # the dev kit's test_nodes folder, loaded by the harness
    assert wf.TINY_LOADER not in ag("nodes").NODE_CLASS_MAPPINGS
    assert all(node_id.startswith("AG_") for node_id in ag("nodes").NODE_CLASS_MAPPINGS)


def test_tiny_loader_builds_each_family_once():
    loader = nodes.NODE_CLASS_MAPPINGS[wf.TINY_LOADER]()
    first, second = loader.load("sdxl"), loader.load("sdxl")
    assert all(a is b for a, b in zip(first, second))
    assert first[0] is not loader.load("sd1")[0]
    assert type(first[0].model).__name__ == "SDXL"
