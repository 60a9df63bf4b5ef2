"""Subjects over the sequence of several text encoders (pure): a diffusion transformer attends over the tokens of
every encoder it was given, one after the other (SD3: CLIP-L/G's 77·k positions, then T5's), and a subject is the
group of its positions in all of them.
"""
from __future__ import annotations

from collections.abc import Sequence

from .tokens import (
    T5_ENCODER,
    PromptTokens,
    Subject,
    SubjectTokenError,
    SubjectTokens,
    TokenSegment,
    Word,
    _occurrences,
    map_subjects,
    prompt_words,
)


def map_sequence_subjects(prompt: str, sequence: Sequence[PromptTokens], subjects: str) -> SubjectTokens:
    """``subjects`` mapped onto the tokens of every encoder the model attends over, in sequence order: one CLIP
    sequence as :func:`map_subjects` maps it, several encoders (or T5) joined. Raises :class:`SubjectTokenError`."""
    if len(sequence) == 1 and sequence[0].encoder != T5_ENCODER:
        return map_subjects(prompt, sequence[0], subjects)
    return map_encoder_subjects(prompt, sequence, subjects)


def map_encoder_subjects(prompt: str, sequence: Sequence[PromptTokens], subjects: str) -> SubjectTokens:
    """Map ``subjects`` (the usual syntax; empty picks automatically) onto each encoder's tokens and join them.

    The first encoder decides: its words name the subjects (and, for an automatic pick, which words are picked); the
    same phrases are then found in every other encoder's tokens. Raises :class:`SubjectTokenError` naming the encoder
    whose tokens lack a subject.
    """
    if not sequence:
        raise ValueError("no text encoder tokens")
    mapped = [_mapped(prompt, sequence[0], subjects)]
    phrases = subjects if subjects.strip() else picked_phrases(mapped[0], sequence[0])
    mapped += [_mapped(prompt, tokens, phrases) for tokens in sequence[1:]]
    return join_encoders(mapped, [tokens.encoder for tokens in sequence])


def _mapped(prompt: str, tokens: PromptTokens, subjects: str) -> SubjectTokens:
    try:
        return map_subjects(prompt, tokens, subjects)
    except SubjectTokenError as error:
        raise SubjectTokenError(f"in the {tokens.encoder.upper()} tokens: {error}") from error


def picked_phrases(picked: SubjectTokens, tokens: PromptTokens) -> str:
    """The ``subjects`` text that names exactly the subjects of ``picked`` (``word#n`` for repeated words)."""
    words = prompt_words(tokens)
    phrases = []
    for subject in picked.subjects:
        name = subject.word.text.lower()
        occurrence = [word.positions for word in _occurrences(words, name)].index(subject.word.positions) + 1
        attributes = [attribute.text for attribute in subject.attributes]
        phrases.append(" ".join([*attributes, name if occurrence == 1 else f"{name}#{occurrence}"]))
    return ", ".join(phrases)


def join_encoders(mapped: Sequence[SubjectTokens], encoders: Sequence[str]) -> SubjectTokens:
    """One AG_TOKENS over the encoders' sequences in order: each subject (and attribute) holds its positions in every
    encoder, the later ones shifted by the lengths before them; labels and the pick come from the first."""
    if len({len(tokens.subjects) for tokens in mapped}) != 1:
        raise SubjectTokenError("the text encoders found different numbers of subjects; name them in the subjects "
                                "input")
    offsets, segments, start = [], [], 0
    for tokens, encoder in zip(mapped, encoders):
        offsets.append(start)
        segments.append(TokenSegment(encoder, start, tokens.token_count))
        start += tokens.token_count

    def joined(words: Sequence[Word]) -> Word:
        return Word(words[0].text, tuple(p + offset for word, offset in zip(words, offsets) for p in word.positions))

    subjects = tuple(
        Subject(joined([tokens.subjects[index].word for tokens in mapped]),
                tuple(joined(attributes) for attributes in zip(*(tokens.subjects[index].attributes
                                                                for tokens in mapped))))
        for index in range(len(mapped[0].subjects))
    )
    pieces = tuple(piece for tokens in mapped for piece in tokens.pieces)
    return SubjectTokens(mapped[0].prompt, pieces, subjects, mapped[0].auto_picked,
                         text_encoder=mapped[0].text_encoder, passed_over=mapped[0].passed_over,
                         segments=tuple(segments))
