"""What the token view on the subject nodes shows, as a JSON-ready dict (pure).

The same dict comes from the pack's tokens route while the user types (a weightless tokenizer of the family the node
is connected to) and from the node's run (its CLIP), so the page shows one thing whichever produced it::

    {"family": "sd1",                     # tokenizer family, None when the CLIP's is not one the pack names
     "token_count": 77,                   # positions of the sequence the model attends over (77 per CLIP chunk)
     "words": [{"text": "sombrero", "positions": [2, 3], "pieces": ["som", "brero"]}, ...],
                                          # pieces: the tokenizer's text per position, None for an embedding vector
     "subjects": [{"label": "apple", "positions": [3], "attributes": [{"text": "red", "positions": [2]}]}, ...],
     "auto_picked": False,
     "error": None}                       # or why a subject or attribute is not found (subjects is then empty)

A model that attends over several text encoders' tokens (SD3: CLIP's, then T5's) lists each encoder's words in
sequence order, positions counted over the whole sequence, as a subject's positions are.
"""
from __future__ import annotations

from collections.abc import Sequence

from .encoders import map_sequence_subjects
from .tokens import (
    EMBEDDING_PIECE,
    T5_ENCODER,
    WORD_END,
    WORD_START,
    PromptTokens,
    SubjectTokenError,
    SubjectTokens,
    Word,
    decode_byte_level,
    prompt_words,
)


def _word(word: Word, offset: int = 0) -> dict:
    return {"text": word.text, "positions": [offset + position for position in word.positions]}


def _piece_text(tokens: PromptTokens, piece: str) -> str | None:
    if piece == EMBEDDING_PIECE:
        return None
    if tokens.encoder == T5_ENCODER:
        return piece.replace(WORD_START, "")
    text = piece.replace(WORD_END, "")
    return decode_byte_level(text) if tokens.byte_level else text


def _base_view(sequence: Sequence[PromptTokens], family: str | None) -> dict:
    words, offset = [], 0
    for tokens in sequence:
        words += [{**_word(word, offset), "pieces": [_piece_text(tokens, tokens.pieces[p]) for p in word.positions]}
                  for word in prompt_words(tokens)]
        offset += len(tokens.pieces)
    return {"family": family, "token_count": offset, "words": words, "subjects": [], "auto_picked": False,
            "error": None}


def subjects_view(sequence: Sequence[PromptTokens], mapped: SubjectTokens, family: str | None) -> dict:
    """The view of subjects already mapped onto the encoders' ``sequence`` (what a node run computed)."""
    view = _base_view(sequence, family)
    view["subjects"] = [{"label": subject.word.text, "positions": list(subject.word.positions),
                         "attributes": [_word(attribute) for attribute in subject.attributes]}
                        for subject in mapped.subjects]
    view["auto_picked"] = mapped.auto_picked
    return view


def token_view(prompt: str, sequence: Sequence[PromptTokens], subjects: str, family: str | None) -> dict:
    """Map ``subjects`` onto the encoders' ``sequence`` as the nodes do; a subject that is not found becomes the
    view's error."""
    try:
        mapped = map_sequence_subjects(prompt, sequence, subjects)
    except SubjectTokenError as error:
        view = _base_view(sequence, family)
        view["error"] = str(error)
        return view
    return subjects_view(sequence, mapped, family)
