"""Subject phrases -> token positions with the tokenizers ComfyUI ships (SD1, SD2, SDXL)."""
import re

import pytest
import safetensors.torch
import torch

import nodes
from devkit.comfy_host import ag
from devkit.tiny_models import tiny_clip
from devkit.token_cases import CASES, FILLER

bridge = ag("guidance.comfy_bridge")
tokens_module = ag("guidance.subjects.tokens")
common = ag("nodes.common")


def as_expected(mapped) -> dict:
    return {
        s.word.text.lower(): (s.word.positions, {a.text.lower(): a.positions for a in s.attributes})
        for s in mapped.subjects
    }


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("prompt,subjects,expected", CASES, ids=[f"{c[0][:28]}|{c[1]}" for c in CASES])
def test_subject_positions(tiny, family, prompt, subjects, expected):
    clip = tiny(family).clip
    mapped = tokens_module.map_subjects(prompt, bridge.prompt_tokens(clip, prompt), subjects)
    assert as_expected(mapped) == expected
    assert not mapped.auto_picked
    assert mapped.token_count == 77 * (2 if prompt.startswith(FILLER) else 1)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_start_token_and_pieces(tiny, family):
    mapped = tokens_module.map_subjects("a cat and a frog", bridge.prompt_tokens(tiny(family).clip, "a cat and a frog"),
                                        "cat, frog")
    assert mapped.pieces[:7] == ("<|startoftext|>", "a</w>", "cat</w>", "and</w>", "a</w>", "frog</w>",
                                 "<|endoftext|>")
    assert mapped.word_positions == (1, 2, 3, 4, 5)
    assert mapped.attribute_pairs == ()


def test_attribute_pairs_record_the_binding(tiny):
    prompt = "a red apple and a blue car"
    mapped = tokens_module.map_subjects(prompt, bridge.prompt_tokens(tiny("sd1").clip, prompt), "red apple, blue car")
    assert mapped.subject_positions == ((3,), (7,))
    assert mapped.attribute_pairs == (((2,), 0), ((6,), 1))
    assert mapped.prompt == prompt and mapped.labels == ("apple", "car")


def test_embedding_vectors_map_to_the_embedding_word(tmp_path):
    safetensors.torch.save_file({"emb_params": torch.randn(2, 768)}, str(tmp_path / "tinycat.safetensors"))
    with torch.inference_mode():  # as ComfyUI loads models
        clip = tiny_clip("sd1", tmp_path, embedding_directory=str(tmp_path))
    prompt = "a photo of embedding:tinycat and a frog"
    mapped = tokens_module.map_subjects(prompt, bridge.prompt_tokens(clip, prompt), "embedding:tinycat, frog")
    assert as_expected(mapped) == {"embedding:tinycat": ((4, 5), {}), "frog": ((8,), {})}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_automatic_pick_names_nouns(tiny, family):
    prompt = "a red cat and a frog on a table, photorealistic"
    mapped = tokens_module.map_subjects(prompt, bridge.prompt_tokens(tiny(family).clip, prompt), "  ")
    assert mapped.auto_picked
    assert as_expected(mapped) == {"cat": ((3,), {"red": (2,)}), "frog": ((6,), {}), "table": ((9,), {})}
    assert "picked automatically" in mapped.describe()


@pytest.mark.parametrize("subjects,message", [
    ("cat, dog", r"subject 'dog': it is not in the prompt.*a \(1\), cat \(2\), and \(3\), a \(4\), frog \(5\)"),
    ("cat#3", r"subject 'cat#3': it appears 1 time\(s\)"),
    ("green frog", r"attribute 'green' of 'green frog' is not in the prompt"),
])
def test_bad_subjects_name_the_problem_and_list_the_tokens(tiny, subjects, message):
    clip = tiny("sd1").clip
    with pytest.raises(tokens_module.SubjectTokenError, match=message):
        tokens_module.map_subjects("a cat and a frog", bridge.prompt_tokens(clip, "a cat and a frog"), subjects)


def test_automatic_pick_without_nouns_says_so(tiny):
    with pytest.raises(tokens_module.SubjectTokenError, match="no subjects found automatically"):
        tokens_module.map_subjects("a, the, and", bridge.prompt_tokens(tiny("sd1").clip, "a, the, and"), "")


def test_text_encode_with_tokens_matches_clip_text_encode(tiny):
    clip = tiny("sdxl").clip
    node = nodes.NODE_CLASS_MAPPINGS["AG_TextEncodeWithTokens"]()
    with torch.inference_mode():
        out = node.encode(clip, "a red apple and a blue car", "red apple, blue car")
        reference = nodes.CLIPTextEncode().encode(clip, "a red apple and a blue car")[0]
    conditioning, mapped = out["result"]
    torch.testing.assert_close(conditioning[0][0], reference[0][0], rtol=0, atol=0)
    torch.testing.assert_close(conditioning[0][1]["pooled_output"], reference[0][1]["pooled_output"], rtol=0, atol=0)
    assert mapped.subject_positions == ((3,), (7,))
    assert "apple: tokens 3 | attributes: red (2)" in out["ui"]["text"][0]


def test_node_error_names_node_and_input(tiny):
    picker = nodes.NODE_CLASS_MAPPINGS["AG_TokenPicker"]()
    with pytest.raises(common.NodeInputError, match=re.escape("Subject Token Picker: input 'subjects': subject 'dog'")):
        picker.pick(tiny("sd1").clip, "a cat and a frog", "dog")
