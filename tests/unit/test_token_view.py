"""The token view dict (guidance/subjects/token_view.py) on hand-written token pieces."""
from attention_guidance.guidance.subjects.token_view import token_view
from attention_guidance.guidance.subjects.tokens import PromptTokens

START, END = "<|startoftext|>", "<|endoftext|>"
T5 = ("▁", "a", "▁red", "▁cu", "be", "▁and", "▁", "a", "▁café", "</s>", "<pad>")


def pieces(*words: str) -> PromptTokens:
    return PromptTokens((START, *words, END, END))


def test_words_keep_their_pieces_and_positions():
    view = token_view("a red sombrero", [pieces("a</w>", "red</w>", "som", "brero</w>")], "red sombrero", "sd1")
    assert view["words"] == [{"text": "a", "positions": [1], "pieces": ["a"]},
                             {"text": "red", "positions": [2], "pieces": ["red"]},
                             {"text": "sombrero", "positions": [3, 4], "pieces": ["som", "brero"]}]
    assert view["subjects"] == [{"label": "sombrero", "positions": [3, 4],
                                 "attributes": [{"text": "red", "positions": [2]}]}]
    assert (view["family"], view["token_count"], view["auto_picked"], view["error"]) == ("sd1", 7, False, None)


def test_byte_level_pieces_show_as_typed():
    tokens = PromptTokens((START, "a</w>", "cafÃ©</w>", END), byte_level=True)
    view = token_view("a café", [tokens], "café", "sd1")
    assert view["words"][1] == {"text": "café", "positions": [2], "pieces": ["café"]}


def test_an_embedding_is_one_word_named_after_it():
    tokens = PromptTokens((START, "a</w>", "<embedding>", "<embedding>", END), ("tinycat",))
    view = token_view("a embedding:tinycat", [tokens], "embedding:tinycat", None)
    assert view["words"][1] == {"text": "embedding:tinycat", "positions": [2, 3],
                                "pieces": [None, None]}
    assert view["subjects"][0]["positions"] == [2, 3] and view["family"] is None


def test_a_missing_subject_keeps_the_words_and_says_why():
    view = token_view("a cat", [pieces("a</w>", "cat</w>")], "cat, dog", "sd1")
    assert view["subjects"] == [] and [word["text"] for word in view["words"]] == ["a", "cat"]
    assert view["error"].startswith("subject 'dog': it is not in the prompt.")


def test_automatic_picks_are_marked():
    view = token_view("a cat and a frog", [pieces("a</w>", "cat</w>", "and</w>", "a</w>", "frog</w>")], "", "sdxl")
    assert view["auto_picked"] and [subject["label"] for subject in view["subjects"]] == ["cat", "frog"]


def test_t5_words_drop_the_word_start_mark():
    view = token_view("a red cube and a café", [PromptTokens(T5, encoder="t5")], "red cube, café", "flux")
    assert view["words"] == [{"text": "a", "positions": [1], "pieces": ["a"]},
                             {"text": "red", "positions": [2], "pieces": ["red"]},
                             {"text": "cube", "positions": [3, 4], "pieces": ["cu", "be"]},
                             {"text": "and", "positions": [5], "pieces": ["and"]},
                             {"text": "a", "positions": [7], "pieces": ["a"]},
                             {"text": "café", "positions": [8], "pieces": ["café"]}]
    assert view["subjects"] == [{"label": "cube", "positions": [3, 4], "attributes": [{"text": "red", "positions": [2]}]},
                                {"label": "café", "positions": [8], "attributes": []}]
    assert view["token_count"] == len(T5)


def test_clip_then_t5_lists_both_encoders_words_over_one_sequence():
    clip = pieces("a</w>", "red</w>", "cube</w>")
    view = token_view("a red cube", [clip, PromptTokens(T5[:5] + T5[9:], encoder="t5")], "red cube", None)
    assert [(word["text"], word["positions"]) for word in view["words"]] == [
        ("a", [1]), ("red", [2]), ("cube", [3]), ("a", [7]), ("red", [8]), ("cube", [9, 10])]
    assert view["subjects"] == [{"label": "cube", "positions": [3, 9, 10],
                                 "attributes": [{"text": "red", "positions": [2, 8]}]}]
    assert view["token_count"] == 6 + 7
