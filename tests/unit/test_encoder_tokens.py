"""T5 word grouping, subjects over several encoders, loss columns and block selections (pure)."""
import pytest

from attention_guidance.guidance.capture.blocks import BlockSelectionError, parse_blocks, resolve_blocks
from attention_guidance.guidance.subjects.encoders import map_encoder_subjects
from attention_guidance.guidance.subjects.tokens import (
    PromptTokens,
    SubjectTokenError,
    map_subjects,
    sentencepiece_words,
)

T5 = ("▁", "a", "▁red", "▁cu", "be", ",", "▁and", "▁", "t", "-", "shirt", "</s>", "<pad>", "<pad>")
CLIP = ("<|startoftext|>", "a</w>", "red</w>", "cube</w>", ",</w>", "and</w>", "t</w>", "-</w>", "shirt</w>",
        "<|endoftext|>", *["<|endoftext|>"] * 67)


def test_sentencepiece_words():
    words = [(word.text, word.positions) for word in sentencepiece_words(T5)]
    assert words == [("a", (1,)), ("red", (2,)), ("cube", (3, 4)), (",", (5,)), ("and", (6,)), ("t", (8,)),
                     ("-", (9,)), ("shirt", (10,))]


def test_t5_subjects_and_columns():
    mapped = map_encoder_subjects("a red cube, and t-shirt", [PromptTokens(T5, encoder="t5")], "red cube, t-shirt")
    assert mapped.subject_positions == ((3, 4), (8, 9, 10)) and mapped.attribute_pairs == (((2,), 0),)
    assert mapped.encoders == ("t5",) and mapped.attention_columns == tuple(range(12))
    assert mapped.loss_columns == tuple(range(12))
    assert mapped.word_positions == (1, 2, 3, 4, 5, 6, 8, 9, 10)


def test_clip_then_t5_groups_and_tables():
    sequence = [PromptTokens(CLIP), PromptTokens(T5, encoder="t5")]
    mapped = map_encoder_subjects("a red cube, and t-shirt", sequence, "red cube")
    assert mapped.subject_positions == ((3, 77 + 3, 77 + 4),) and mapped.attribute_pairs == (((2, 77 + 2), 0),)
    assert [(s.encoder, s.start, s.length) for s in mapped.segments] == [("clip", 0, 77), ("t5", 77, 14)]
    assert mapped.attention_columns == tuple(range(1, 76)) + tuple(range(77, 89))
    table = mapped.token_table().splitlines()
    assert table[0].endswith("8 shirt</w>, 9 <|endoftext|>") and table[1].endswith("87 shirt, 88 </s>")
    picked = map_encoder_subjects("a red cube, and t-shirt", sequence, "")
    assert picked.auto_picked and picked.labels == ("cube", "shirt")  # the pick passes over the single letter "t"
    assert picked.subject_positions[0] == (3, 80, 81)


def test_clip_tokens_keep_the_losses_default_columns():
    mapped = map_subjects("a red cube", PromptTokens(CLIP), "cube")
    assert mapped.segments == () and mapped.loss_columns is None
    assert mapped.attention_columns == tuple(range(1, 76))


def test_subject_missing_in_a_later_encoder_names_it():
    clip_only_word = ("<|startoftext|>", "a</w>", "dog</w>", *["<|endoftext|>"] * 74)
    with pytest.raises(SubjectTokenError, match="in the T5 tokens: subject 'dog': it is not in the prompt"):
        map_encoder_subjects("a dog", [PromptTokens(clip_only_word), PromptTokens(T5, encoder="t5")], "dog")


@pytest.mark.parametrize("text,expected", [("auto", None), ("", None), ("0-3, 7", (0, 1, 2, 3, 7)),
                                           ("2;0", (0, 2)), (" AUTO ", None)])
def test_block_selection(text, expected):
    assert parse_blocks(text) == expected


@pytest.mark.parametrize("text", ["a-b", "3-1", "-2", "1.5"])
def test_bad_block_selection(text):
    with pytest.raises(BlockSelectionError):
        parse_blocks(text)


def test_block_resolution():
    assert resolve_blocks(None, 3) == (0, 1, 2)
    with pytest.raises(BlockSelectionError, match=r"blocks \[19\] do not exist: this model has 19 joint blocks"):
        resolve_blocks((0, 19), 19)
