"""Subject tokens on the text encoders of FLUX (T5), Chroma (T5, no padding) and SD3 (CLIP-L/G then T5), with the
real tokenizers ComfyUI ships."""
import re

import pytest
import torch

import nodes
from devkit import comfy_host
from devkit.comfy_host import ag

pytestmark = pytest.mark.skipif(not comfy_host.has_dit(), reason=comfy_host.NO_DIT_REASON)

text = ag("guidance.comfy_bridge.text")
tokens_module = ag("guidance.subjects.tokens")
common = ag("nodes.common")

PROMPT = "a red cube and a blue sphere"
# T5: ▁ a ▁red ▁cu be ▁and ▁ a ▁blue ▁ sphere </s>: "cube" is two pieces, "a" and "sphere" follow a lone "▁"
T5_PIECES = ("▁", "a", "▁red", "▁cu", "be", "▁and", "▁", "a", "▁blue", "▁", "sphere", "</s>")


def subjects_of(mapped) -> dict:
    return {s.word.text: (s.word.positions, {a.text: a.positions for a in s.attributes}) for s in mapped.subjects}


def test_flux_maps_subjects_onto_t5_pieces(tiny_dit):
    mapped = text.subject_tokens(tiny_dit("flux").clip, PROMPT, "red cube, blue sphere")
    assert mapped.pieces[:12] == T5_PIECES and set(mapped.pieces[12:]) == {"<pad>"}
    assert mapped.token_count == 256 and mapped.encoders == ("t5",)
    assert subjects_of(mapped) == {"cube": ((3, 4), {"red": (2,)}), "sphere": ((10,), {"blue": (8,)})}
    assert mapped.word_positions == (1, 2, 3, 4, 5, 7, 8, 10)
    assert mapped.attention_columns == tuple(range(12))  # the prompt's pieces and </s>, no padding


def test_t5_words_of_several_pieces_punctuation_and_weights(tiny_dit):
    prompt = "a tiger, a t-shirt and a (red cube:1.2)"
    mapped = text.subject_tokens(tiny_dit("flux").clip, prompt, "tiger, t-shirt, red cube")
    pieces = mapped.pieces

    def spelled(positions):
        return [pieces[p] for p in positions]

    tiger, shirt, cube = mapped.subject_positions
    assert spelled(tiger) == ["t", "iger"] and spelled(shirt) == ["t", "-", "shirt"] and spelled(cube) == ["▁cu", "be"]
    assert [(spelled(positions), owner) for positions, owner in mapped.attribute_pairs] == [(["▁red"], 2)]


def test_chroma_reads_t5_without_padding(tiny_dit):
    mapped = text.subject_tokens(tiny_dit("chroma").clip, PROMPT, "red cube, blue sphere")
    assert mapped.pieces == T5_PIECES and mapped.token_count == 12
    assert subjects_of(mapped) == {"cube": ((3, 4), {"red": (2,)}), "sphere": ((10,), {"blue": (8,)})}


def test_t5_prompt_over_256_tokens(tiny_dit):
    filler = " ".join(["cat"] * 260)
    prompt = f"a dog and {filler} and a frog"
    mapped = text.subject_tokens(tiny_dit("flux").clip, prompt, "dog, frog, cat#260")
    with torch.inference_mode():
        context = nodes.CLIPTextEncode().encode(tiny_dit("flux").clip, prompt)[0][0][0]
    assert mapped.token_count == context.shape[1] > 256
    words = ["".join(mapped.pieces[p] for p in positions).lstrip("▁") for positions in mapped.subject_positions]
    dog, frog, cat = mapped.subject_positions
    assert words == ["dog", "frog", "cat"] and cat[0] == dog[0] + 2 + 260 - 1
    assert frog[0] > 256 and mapped.pieces[mapped.token_count - 1] == "</s>"


def test_sd3_groups_clip_and_t5_positions_of_each_subject(tiny_dit):
    mapped = text.subject_tokens(tiny_dit("sd3").clip, PROMPT, "red cube, blue sphere")
    assert mapped.encoders == ("clip", "t5") and mapped.token_count == 77 + 77
    assert mapped.pieces[:9] == ("<|startoftext|>", "a</w>", "red</w>", "cube</w>", "and</w>", "a</w>", "blue</w>",
                                 "sphere</w>", "<|endoftext|>")
    assert mapped.pieces[77:89] == T5_PIECES
    assert subjects_of(mapped) == {"cube": ((3, 77 + 3, 77 + 4), {"red": (2, 77 + 2)}),
                                   "sphere": ((7, 77 + 10), {"blue": (6, 77 + 8)})}
    columns = mapped.attention_columns
    assert 0 not in columns and 76 not in columns and 77 in columns and 88 in columns and 89 not in columns


def test_sd3_long_prompt_offsets_t5_by_every_clip_chunk(tiny_dit):
    filler = " ".join(["cat"] * 80)
    prompt = f"a dog and {filler} and a frog"
    clip = tiny_dit("sd3").clip
    mapped = text.subject_tokens(clip, prompt, "dog, frog")
    with torch.inference_mode():
        context = nodes.CLIPTextEncode().encode(clip, prompt)[0][0][0]
    assert mapped.token_count == context.shape[1] and mapped.segments[1].start == 2 * 77
    dog, frog = ([mapped.pieces[p] for p in positions] for positions in mapped.subject_positions)
    assert dog == ["dog</w>", "▁dog"] and frog == ["frog</w>", "f", "rog"]  # T5: ▁ f rog
    frog_clip, *frog_t5 = mapped.subject_positions[1]
    assert 77 < frog_clip < 154 and min(frog_t5) > 154


def test_automatic_pick_on_sd3_uses_the_same_words_in_both_encoders(tiny_dit):
    mapped = text.subject_tokens(tiny_dit("sd3").clip, "a red cat and a frog on a table, photorealistic", "")
    assert mapped.auto_picked and mapped.labels == ("cat", "frog", "table")
    cat = mapped.subjects[0]
    assert [mapped.pieces[p] for p in cat.word.positions] == ["cat</w>", "▁cat"]
    assert [mapped.pieces[p] for p in cat.attributes[0].positions] == ["red</w>", "▁red"]


def test_node_shows_the_t5_pieces(tiny_dit):
    node = nodes.NODE_CLASS_MAPPINGS["AG_TextEncodeWithTokens"]()
    with torch.inference_mode():
        out = node.encode(tiny_dit("flux").clip, PROMPT, "red cube, blue sphere")
    shown = out["ui"]["text"][0]
    assert "cube: tokens 3, 4 | attributes: red (2)" in shown
    assert "T5 tokens: 0 ▁, 1 a, 2 ▁red, 3 ▁cu, 4 be, 5 ▁and" in shown and "<pad>" not in shown


def test_subject_missing_from_t5_tokens_names_node_input_and_encoder(tiny_dit):
    picker = nodes.NODE_CLASS_MAPPINGS["AG_TokenPicker"]()
    with pytest.raises(common.NodeInputError, match=re.escape("Subject Token Picker: input 'subjects': in the T5 "
                                                              "tokens: subject 'dog': it is not in the prompt")):
        picker.pick(tiny_dit("flux").clip, PROMPT, "cube, dog")
