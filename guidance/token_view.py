"""What the token view on the subject nodes shows, as a JSON-ready dict (pure).

The same dict comes from the pack's tokens route while the user types (a weightless tokenizer of the family the node
is connected to) and from the node's run (its CLIP), so the page shows one thing whichever produced it::

    {"family": "sd1",                     # tokenizer family, None when the CLIP's is not one the pack names
     "token_count": 77,                   # positions of the encoded sequence (77 per chunk)
     "words": [{"text": "sombrero", "positions": [2, 3], "pieces": ["som", "brero"]}, ...],
                                          # pieces: the tokenizer's text per position, None for an embedding vector
     "subjects": [{"label": "apple", "positions": [3], "attributes": [{"text": "red", "positions": [2]}]}, ...],
     "auto_picked": False,
     "error": None}                       # or why a subject or attribute is not found (subjects is then empty)
"""
from __future__ import annotations

from .tokens import EMBEDDING_PIECE, WORD_END, PromptTokens, SubjectTokenError, SubjectTokens, Word, map_subjects, \
    prompt_words


def _word(word: Word) -> dict:
    return {"text": word.text, "positions": list(word.positions)}


def _base_view(tokens: PromptTokens, family: str | None) -> dict:
    words = [{**_word(word), "pieces": [None if tokens.pieces[position] == EMBEDDING_PIECE
                                        else tokens.pieces[position].replace(WORD_END, "")
                                        for position in word.positions]}
             for word in prompt_words(tokens)]
    return {"family": family, "token_count": len(tokens.pieces), "words": words, "subjects": [],
            "auto_picked": False, "error": None}


def subjects_view(tokens: PromptTokens, mapped: SubjectTokens, family: str | None) -> dict:
    """The view of subjects already mapped onto ``tokens`` (what a node run computed)."""
    view = _base_view(tokens, family)
    view["subjects"] = [{"label": subject.word.text, "positions": list(subject.word.positions),
                         "attributes": [_word(attribute) for attribute in subject.attributes]}
                        for subject in mapped.subjects]
    view["auto_picked"] = mapped.auto_picked
    return view


def token_view(prompt: str, tokens: PromptTokens, subjects: str, family: str | None) -> dict:
    """Map ``subjects`` onto ``tokens`` as the nodes do; a subject that is not found becomes the view's error."""
    try:
        mapped = map_subjects(prompt, tokens, subjects)
    except SubjectTokenError as error:
        view = _base_view(tokens, family)
        view["error"] = str(error)
        return view
    return subjects_view(tokens, mapped, family)
