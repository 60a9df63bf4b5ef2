"""The token view dict (guidance/token_view.py) on hand-written token pieces."""
from attention_guidance.guidance.token_view import token_view
from attention_guidance.guidance.tokens import PromptTokens

START, END = "<|startoftext|>", "<|endoftext|>"


def pieces(*words: str) -> PromptTokens:
    return PromptTokens((START, *words, END, END))


def test_words_keep_their_pieces_and_positions():
    view = token_view("a red sombrero", pieces("a</w>", "red</w>", "som", "brero</w>"), "red sombrero", "sd1")
    assert view["words"] == [{"text": "a", "positions": [1], "pieces": ["a"]},
                             {"text": "red", "positions": [2], "pieces": ["red"]},
                             {"text": "sombrero", "positions": [3, 4], "pieces": ["som", "brero"]}]
    assert view["subjects"] == [{"label": "sombrero", "positions": [3, 4],
                                 "attributes": [{"text": "red", "positions": [2]}]}]
    assert (view["family"], view["token_count"], view["auto_picked"], view["error"]) == ("sd1", 7, False, None)


def test_an_embedding_is_one_word_named_after_it():
    tokens = PromptTokens((START, "a</w>", "<embedding>", "<embedding>", END), ("tinycat",))
    view = token_view("a embedding:tinycat", tokens, "embedding:tinycat", None)
    assert view["words"][1] == {"text": "embedding:tinycat", "positions": [2, 3],
                                "pieces": [None, None]}
    assert view["subjects"][0]["positions"] == [2, 3] and view["family"] is None


def test_a_missing_subject_keeps_the_words_and_says_why():
    view = token_view("a cat", pieces("a</w>", "cat</w>"), "cat, dog", "sd1")
    assert view["subjects"] == [] and [word["text"] for word in view["words"]] == ["a", "cat"]
    assert view["error"].startswith("subject 'dog': it is not in the prompt.")


def test_automatic_picks_are_marked():
    view = token_view("a cat and a frog", pieces("a</w>", "cat</w>", "and</w>", "a</w>", "frog</w>"), "", "sdxl")
    assert view["auto_picked"] and [subject["label"] for subject in view["subjects"]] == ["cat", "frog"]
