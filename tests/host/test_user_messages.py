"""What the user reads: warnings shown on the node in the page, errors that name the node, the input and the fix,
and a readable error type in ComfyUI's error dialog. Graphs run through the host's own execution engine with the
tiny models; texts shown on nodes are the messages the host's server would send to the page."""
import execution
import pytest
import torch

import nodes
from devkit import workflow as wf
from devkit.comfy_host import ag
from devkit.sampling import IS_CURRENT_HOST, guided_ksampler, ksampler_inputs

bridge = ag("guidance.comfy_bridge")
common = ag("nodes.common")
tokens_module = ag("guidance.subjects.tokens")
NODES = nodes.NODE_CLASS_MAPPINGS
PROMPT = "a cat and a frog"


def graph() -> dict[str, dict]:
    """One graph with every warning case: subjects named twice, A-STAR with one subject, Attention Regulation at
    256 px (its layers' maps are 8x8 there), Visualize Attention asked for 2048 px maps of every step."""
    def node(class_type, **inputs):
        return {"class_type": class_type, "inputs": inputs}

    return {
        "1": node(wf.TINY_LOADER, family="sd1"),
        "2": node("AG_TextEncodeWithTokens", clip=["1", 1], text=PROMPT, subjects="cat, cat"),
        "3": node("CLIPTextEncode", clip=["1", 1], text=""),
        "4": node("EmptyLatentImage", width=256, height=256, batch_size=1),
        "5": node("AG_TokenPicker", clip=["1", 1], text=PROMPT, subjects="cat"),
        "6": node("AG_AStar", tokens=["5", 0], step_size=20.0, guided_percent=50.0, binarisation="half_max",
                  preprocessing="ae", weight=1.0),
        "7": node("AG_GuidedKSampler", model=["1", 0], seed=1, steps=2, cfg=7.0, sampler_name="euler",
                  scheduler="normal", positive=["2", 0], negative=["3", 0], latent_image=["4", 0], denoise=1.0,
                  guidance=["6", 0]),
        "8": node("AG_VisualizeAttention", attention=["7", 1], which_steps="all", every=1, step_list="",
                  layout="grid", color_map="viridis", normalization="per map", opacity=0.5, tile_size=2048),
        "9": node("AG_AttentionRegulation", model=["1", 0], tokens=["5", 0], edit_steps=2, iterations=2,
                  mode="default"),
        "10": node("KSampler", model=["9", 0], seed=1, steps=2, cfg=7.0, sampler_name="euler", scheduler="normal",
                   positive=["2", 0], negative=["3", 0], latent_image=["4", 0], denoise=1.0),
        "11": node("VAEDecode", samples=["10", 0], vae=["1", 2]),
        "12": node("PreviewImage", images=["11", 0]),
    }


@pytest.fixture(scope="module")
def warned(tmp_path_factory):
    with wf.OutputDirectories(tmp_path_factory.mktemp("warnings")):
        result = wf.execute(graph(), ["8", "12"])
    assert result.success, result.error()
    return result


WARNINGS = {
    "2": "Warning: 'cat' is named twice and both name the same tokens (2); write 'cat#2'",
    "6": "Warning: one subject (cat): segregation keeps two or more subjects apart, so only retention acts",
    "8": "Warning: maps drawn at ",
    "9": "Warning: Attention Regulation edits nothing: its layers' attention maps are 8x8",
}


@pytest.mark.skipif(not IS_CURRENT_HOST, reason="the 2024 host has no per-node text message (its frontend shows "
                                                "none); its warnings go to the log, tested below")
@pytest.mark.parametrize("node_id", list(WARNINGS))
def test_warnings_are_shown_on_their_node(warned, node_id):
    texts = warned.node_texts()
    assert any(WARNINGS[node_id] in text for text in texts.get(node_id, [])), texts.get(node_id)


def test_warnings_are_logged_and_in_the_node_output(tiny, caplog):
    checkpoint = tiny("sd1")
    with caplog.at_level("WARNING", logger="attention_guidance"):
        out = NODES["AG_TokenPicker"]().pick(checkpoint.clip, PROMPT, "frog, frog")
    assert "'frog' is named twice" in out["ui"]["text"][0]
    assert any("Subject Token Picker: 'frog' is named twice" in record.message for record in caplog.records)


@pytest.mark.skipif(not IS_CURRENT_HOST, reason="the 2024 host has no per-node text message")
def test_a_clean_run_blanks_an_earlier_warning_on_the_node(tmp_path):
    def picker_graph(subjects):
        return {"1": {"class_type": wf.TINY_LOADER, "inputs": {"family": "sd1"}},
                "2": {"class_type": "AG_TokenPicker", "inputs": {"clip": ["1", 1], "text": PROMPT,
                                                                 "subjects": subjects}}}

    with wf.OutputDirectories(tmp_path):
        first = wf.execute(picker_graph("cat, cat"), ["2"])
        second = wf.execute(picker_graph("cat, frog"), ["2"])
    assert first.success and second.success, (first.error(), second.error())
    assert "named twice" in first.node_texts()["2"][0]
    assert second.node_texts()["2"] == [" "]  # the earlier warning is overwritten


def test_the_error_dialog_names_the_packs_error_type(tmp_path):
    """The dialog shows ``exception_type``: the pack's name, not the custom node folder's file path."""
    assert execution.full_type_name(common.NodeInputError) == "attention_guidance.NodeInputError"
    prompt = {"1": {"class_type": wf.TINY_LOADER, "inputs": {"family": "sd1"}},
              "2": {"class_type": "AG_TokenPicker", "inputs": {"clip": ["1", 1], "text": PROMPT, "subjects": "dog"}},
              "3": {"class_type": "AG_RecordAttention", "inputs": {"tokens": ["2", 0]}}}
    with wf.OutputDirectories(tmp_path):
        result = wf.execute(prompt, ["3"])
    (error,) = [data for event, data in result.status_messages if event == "execution_error"]
    assert error["exception_type"] == "attention_guidance.NodeInputError"
    assert error["exception_message"].startswith("Subject Token Picker: input 'subjects': subject 'dog'")


@pytest.mark.parametrize("boxes,message", [
    ("-0.1,0.1,0.4,0.5; 0.55,0.3,0.4,0.6", r"input 'boxes': box 1 .* leaves the image: x = -0.1 is below 0"),
    ("0.05,0.1,0.45,0.6; 0.55,0.3,0.95,0.9", r"input 'boxes': box 2 .* x \+ w = 1.5 is above 1, "
                                             r"y \+ h = 1.2 is above 1; boxes are x,y,w,h "
                                             r".* if you meant corners, write 0.55,0.3,0.4,0.6"),
])
def test_box_mistakes_are_reported_against_the_boxes(tiny, boxes, message):
    tokens = tokens_module.map_subjects(PROMPT, bridge.prompt_tokens(tiny("sd1").clip, PROMPT), "cat, frog")
    with pytest.raises(common.NodeInputError, match="Subject Layout \\(boxes\\): " + message):
        NODES["AG_BoxLayout"]().build(tokens, boxes, 512, 512)


def test_a_box_layout_of_another_aspect_is_refused_when_sampling(tiny):
    checkpoint = tiny("sd1")
    tokens = tokens_module.map_subjects(PROMPT, bridge.prompt_tokens(checkpoint.clip, PROMPT), "cat, frog")
    inputs = ksampler_inputs(checkpoint, PROMPT, steps=2)
    inputs["latent_image"] = {"samples": torch.zeros(1, 4, 32, 64)}  # a 512x256 image
    boxes = "0.05,0.1,0.4,0.5; 0.55,0.3,0.4,0.6"
    square = NODES["AG_BoxLayout"]().build(tokens, boxes, 256, 256)[0]
    wide = NODES["AG_BoxLayout"]().build(tokens, boxes, 1024, 512)[0]

    def astar(layout):
        node = NODES["AG_AStar"]()
        return node.build(tokens, 20.0, 50.0, "half_max", "ae", 1.0, layout)["result"][0]

    with pytest.raises(ValueError, match=r"made for a 256x256 px image .* Set the box layout's width and height"):
        guided_ksampler(checkpoint.model, inputs, astar(square))
    latent, _ = guided_ksampler(checkpoint.model, inputs, astar(wide))  # same aspect, another size: fine
    assert torch.isfinite(latent).all()


def test_a_bad_threshold_is_reported_against_the_thresholds(tiny):
    tokens = tokens_module.map_subjects(PROMPT, bridge.prompt_tokens(tiny("sd1").clip, PROMPT), "cat, frog")
    with pytest.raises(common.NodeInputError, match="Attend-and-Excite: input 'refinement_thresholds': refinement "
                                                    "thresholds must be comma-separated numbers, got '0.05, 0.5, O.8'"):
        NODES["AG_AttendAndExcite"]().build(tokens, 20.0, 50.0, "0, 20, 40", "0.05, 0.5, O.8", 20, True, 0.5, "auto")


def test_occurrence_zero_is_an_error_naming_the_subjects_input(tiny):
    with pytest.raises(common.NodeInputError, match="input 'subjects': subject 'cat#0': occurrences count from 1"):
        NODES["AG_TokenPicker"]().pick(tiny("sd1").clip, PROMPT, "cat#0")


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_accented_words_and_emoji_are_subjects_and_read_as_typed(tiny, family):
    prompt = "a café and a naïve cat 🐱"
    mapped = NODES["AG_TokenPicker"]().pick(tiny(family).clip, prompt, "café, naïve cat, 🐱")["result"][0]
    assert [(subject.word.text, subject.word.positions) for subject in mapped.subjects] == [
        ("café", (2,)), ("cat", (8,)), ("🐱", (9,))]
    assert mapped.subjects[1].attributes[0].text == "naïve"
    with pytest.raises(common.NodeInputError, match=r"café \(2\), and \(3\), a \(4\), naïve \(5, 6, 7\), cat \(8\)"):
        NODES["AG_TokenPicker"]().pick(tiny(family).clip, prompt, "dog")


@pytest.mark.parametrize("prompt,picked", [
    ("masterpiece, best quality, 8k, a cat and a frog", ["cat", "frog"]),
    ("a red cat and a frog on a table, photorealistic", ["cat", "frog", "table"]),
])
def test_the_automatic_pick_names_subjects_and_says_what_it_passed_over(tiny, prompt, picked):
    out = NODES["AG_TokenPicker"]().pick(tiny("sd1").clip, prompt, "")
    assert list(out["result"][0].labels) == picked
    assert "Passed over:" in out["ui"]["text"][0]


def test_the_automatic_pick_refuses_a_prompt_without_subjects(tiny):
    with pytest.raises(common.NodeInputError, match=r"no subjects found automatically in 'very beautiful and "
                                                    r"quickly' \(passed over: beautiful \(describing words\)"):
        NODES["AG_TokenPicker"]().pick(tiny("sd1").clip, "very beautiful and quickly", "")


def unsupported_model():
    """A tiny model of a family the guidance will not read: a DiT (Lumina 2's NextDiT) on the current host; the
    2024 host has no DiT family, so there Stable Cascade's stage C (no UNet blocks either)."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models

    with torch.inference_mode():
        if hasattr(comfy.supported_models, "Lumina2"):
            config = comfy.supported_models.Lumina2({
                "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 64, "n_layers": 1,
                "n_refiner_layers": 1, "n_heads": 2, "n_kv_heads": 2, "cap_feat_dim": 64, "axes_dims": [8, 12, 12],
                "axes_lens": [1, 64, 64]})
            model = comfy.model_base.Lumina2(config, device=torch.device("cpu"))
        else:
            config = comfy.supported_models.Stable_Cascade_C({
                "stable_cascade_stage": "c", "c_hidden": [32, 32], "nhead": [2, 2], "blocks": [[1, 1], [1, 1]],
                "block_repeat": [[1, 1], [1, 1]], "c_cond": 32, "c_r": 32})
            model = comfy.model_base.StableCascade_C(config)
        return comfy.model_patcher.ModelPatcher(model, torch.device("cpu"), torch.device("cpu"))


def test_an_unsupported_family_is_refused_by_the_guided_ksampler(tiny):
    checkpoint = tiny("sd1")
    model = unsupported_model()
    tokens = tokens_module.map_subjects(PROMPT, bridge.prompt_tokens(checkpoint.clip, PROMPT), "cat, frog")
    spec = NODES["AG_AttendAndExcite"]().build(tokens, 20.0, 50.0, "", "", 20, True, 0.5, "auto")[0]
    refusal = (f"this model is a {'NextDiT' if IS_CURRENT_HOST else 'StageC'} transformer, which attention guidance "
               "does not read; it supports SD1.x, SD2.x and SDXL .*, FLUX.1 .* and Chroma, SD3 and SD3.5")
    with pytest.raises(common.NodeInputError, match=f"Guided KSampler: input 'model': {refusal}"):
        guided_ksampler(model, ksampler_inputs(checkpoint, PROMPT, steps=2), spec)
    if IS_CURRENT_HOST:
        with pytest.raises(common.NodeInputError, match=f"Apply Attention Guidance: input 'model': {refusal}"):
            NODES["AG_ApplyGuidance"]().apply(model, spec)
