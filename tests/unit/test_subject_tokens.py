"""Subject phrases on hand-made token pieces (pure core): text of byte-level pieces, occurrences, the automatic
pick and what it says about its picks."""
import pytest

from attention_guidance.guidance.subjects.tokens import (
    END_OF_TEXT,
    START_OF_TEXT,
    PromptTokens,
    SubjectTokenError,
    decode_byte_level,
    map_subjects,
    pick_subjects,
)


def tokens(*pieces: str, byte_level: bool = True) -> PromptTokens:
    """A one-chunk prompt of CLIP pieces (``word</w>`` ends a word)."""
    sequence = (START_OF_TEXT, *pieces, END_OF_TEXT)
    return PromptTokens(sequence + (END_OF_TEXT,) * (77 - len(sequence)), byte_level=byte_level)


# CLIP's pieces for "a café and a naïve cat 🐱" (ComfyUI's SD1 tokenizer): each character stands for a byte.
ACCENTED = tokens("a</w>", "cafÃ©</w>", "and</w>", "a</w>", "na", "Ã¯", "ve</w>", "cat</w>", "ðŁĲ±</w>")


def test_byte_level_pieces_decode_to_the_typed_text():
    assert decode_byte_level("cafÃ©") == "café"
    assert decode_byte_level("ðŁĲ±") == "🐱"
    assert decode_byte_level("cat") == "cat"
    assert decode_byte_level("ðŁĲ") == "ðŁĲ"  # half of a split character stays as it is
    assert decode_byte_level("▁café") == "▁café"  # not a byte-level spelling (a SentencePiece piece)


def test_accented_words_and_emoji_are_subjects():
    mapped = map_subjects("a café and a naïve cat 🐱", ACCENTED, "café, naïve cat, 🐱")
    assert [(s.word.text, s.word.positions) for s in mapped.subjects] == [
        ("café", (2,)), ("cat", (8,)), ("🐱", (9,))]
    assert [(a.text, a.positions) for a in mapped.subjects[1].attributes] == [("naïve", (5, 6, 7))]
    with pytest.raises(SubjectTokenError, match=r"café \(2\), and \(3\), a \(4\), naïve \(5, 6, 7\)"):
        map_subjects("a café and a naïve cat 🐱", ACCENTED, "dog")


def test_pieces_of_other_tokenizers_are_left_as_they_are():
    mapped = map_subjects("a café", tokens("a</w>", "café</w>", byte_level=False), "café")
    assert mapped.subjects[0].word.positions == (2,)


@pytest.mark.parametrize("subjects", ["cat#0", "red cat#0"])
def test_occurrence_zero_is_an_error(subjects):
    with pytest.raises(SubjectTokenError, match=r"occurrences count from 1 \('cat#1' or 'cat' is the first"):
        map_subjects("a red cat", tokens("a</w>", "red</w>", "cat</w>"), subjects)


def test_a_subject_named_twice_is_reported():
    prompt = tokens("a</w>", "cat</w>", "and</w>", "a</w>", "cat</w>")
    assert map_subjects("a cat and a cat", prompt, "cat, cat#2").warnings() == []
    (warning,) = map_subjects("a cat and a cat", prompt, "cat, cat").warnings()
    assert "'cat' is named twice and both name the same tokens (2); write 'cat#2'" in warning


def test_automatic_pick_passes_over_quality_words_and_numbers():
    # "masterpiece, best quality, 8k, a cat and a frog": CLIP splits 8k into 8 and k.
    prompt = tokens("masterpiece</w>", ",</w>", "best</w>", "quality</w>", ",</w>", "8</w>", "k</w>", ",</w>",
                    "a</w>", "cat</w>", "and</w>", "a</w>", "frog</w>")
    picked = pick_subjects("masterpiece, best quality, 8k, a cat and a frog", prompt)
    assert [(s.word.text, s.attributes) for s in picked.subjects] == [("cat", ()), ("frog", ())]
    description = picked.describe()
    assert "picked automatically: the last noun-like word of each phrase" in description
    assert "Passed over: masterpiece, best, quality (style or quality words); 8 (numbers); k (single letters)" \
        in description


def test_automatic_pick_without_nouns_says_what_it_passed_over():
    prompt = tokens("very</w>", "beautiful</w>", "and</w>", "quickly</w>")
    with pytest.raises(SubjectTokenError, match=r"no subjects found automatically in 'very beautiful and quickly' "
                                                r"\(passed over: beautiful \(describing words\); quickly "
                                                r"\(describing words\)\)\. Name them"):
        pick_subjects("very beautiful and quickly", prompt)


def test_automatic_pick_keeps_describing_words_as_attributes():
    prompt = tokens("a</w>", "big</w>", "red</w>", "butterfly</w>", "and</w>", "a</w>", "happy</w>", "dog</w>",
                    ",</w>", "photorealistic</w>")
    picked = pick_subjects("a big red butterfly and a happy dog, photorealistic", prompt)
    assert [(s.word.text, [a.text for a in s.attributes]) for s in picked.subjects] == [
        ("butterfly", ["big", "red"]), ("dog", ["happy"])]
    assert picked.passed_over == (("photorealistic", "style or quality words"),)
