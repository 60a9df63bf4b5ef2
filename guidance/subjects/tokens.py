"""Subject phrases -> token positions in the text encoder's sequence (pure; fed by the host tokenizer's output).

``subjects`` syntax: comma-separated phrases from the prompt. In each phrase the last word is the subject and the
words before it are its attributes (``"red apple, blue car"``: ``apple`` with ``red``, ``car`` with ``blue``).
``word#2`` names the second occurrence of a repeated word. An empty ``subjects`` picks the subjects automatically
(:func:`pick_subjects`).

Positions index the flattened 77·k sequence the encoder produces: position 0 of every chunk is ``<|startoftext|>``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

WORD_END = "</w>"
EMBEDDING_PIECE = "<embedding>"
START_OF_TEXT, END_OF_TEXT = "<|startoftext|>", "<|endoftext|>"
SPECIAL_PIECES = (START_OF_TEXT, END_OF_TEXT, "!")  # "!" is id 0, SDXL clip_g's and SD2's padding

# Words that never name a subject in the automatic pick: function words, and style words common in prompts.
_FUNCTION_WORDS = frozenset("""
a an the this that these those some any each every no one two three four five several many few
and or but nor with without of in on at by for from to into onto over under above below behind near beside
between next inside outside around through across against along among is are was were be being been has have
it its his her their my your our very highly photo picture image painting drawing style
""".split())
_STYLE_WORDS = frozenset("""
photorealistic realistic detailed hyperdetailed hd 4k 8k uhd masterpiece quality best high resolution sharp
cinematic lighting studio professional render rendering octane unreal engine trending artstation digital art
""".split())
_SEPARATORS = frozenset({",", ".", ";", ":", "!", "?", "and", "or", "with", "without", "of", "in", "on", "at",
                         "by", "for", "from", "to", "into", "onto", "over", "under", "above", "below", "behind",
                         "near", "beside", "between", "next", "inside", "outside", "around", "through", "across",
                         "against", "along", "among"})


class SubjectTokenError(ValueError):
    """A subject or attribute that cannot be mapped to the prompt's tokens."""


@dataclass(frozen=True)
class PromptTokens:
    """The encoder's view of a prompt: a text piece per position (``cat</w>``, ``<embedding>``, specials)."""

    pieces: tuple[str, ...]
    embedding_names: tuple[str, ...] = ()  # names of the embeddings whose vectors appear, in order


@dataclass(frozen=True)
class Word:
    text: str
    positions: tuple[int, ...]


@dataclass(frozen=True)
class Subject:
    word: Word
    attributes: tuple[Word, ...]


@dataclass(frozen=True)
class SubjectTokens:
    """The AG_TOKENS value: prompt, token strings, subjects with their positions and bound attributes."""

    prompt: str
    pieces: tuple[str, ...]
    subjects: tuple[Subject, ...]
    auto_picked: bool
    encoding: torch.Tensor | None = field(default=None, compare=False, repr=False)
    """The text encoder's output for the prompt, ``[77·k, D]``, set by the nodes that make AG_TOKENS: the samplers
    check the positive conditioning against it (``subjects.encoding``). None: only the token count is checked."""

    @property
    def token_count(self) -> int:
        return len(self.pieces)

    @property
    def subject_positions(self) -> tuple[tuple[int, ...], ...]:
        return tuple(subject.word.positions for subject in self.subjects)

    @property
    def attribute_pairs(self) -> tuple[tuple[tuple[int, ...], int], ...]:
        """``(attribute positions, subject index)`` for every attribute bound to a subject."""
        return tuple(
            (attribute.positions, index)
            for index, subject in enumerate(self.subjects)
            for attribute in subject.attributes
        )

    @property
    def word_positions(self) -> tuple[int, ...]:
        """Positions of the prompt's own tokens (no start, end or padding tokens)."""
        return tuple(position for word in prompt_words(PromptTokens(self.pieces)) for position in word.positions)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(subject.word.text for subject in self.subjects)

    def describe(self) -> str:
        """One line per subject: ``cat: tokens 2 | attributes: red (1)``."""
        lines = []
        for subject in self.subjects:
            line = f"{subject.word.text}: tokens {', '.join(map(str, subject.word.positions))}"
            if subject.attributes:
                bound = "; ".join(f"{a.text} ({', '.join(map(str, a.positions))})" for a in subject.attributes)
                line += f" | attributes: {bound}"
            lines.append(line)
        origin = "picked automatically" if self.auto_picked else "from the subjects input"
        return f"Subjects ({origin}):\n" + "\n".join(lines)


def _is_special(piece: str) -> bool:
    return piece in SPECIAL_PIECES


def prompt_words(tokens: PromptTokens) -> list[Word]:
    """Group pieces into the words the user typed; each embedding's vectors form one ``embedding:<name>`` word."""
    words: list[Word] = []
    pending: list[int] = []
    embeddings = iter(tokens.embedding_names)

    def flush() -> None:
        if pending:
            text = "".join(tokens.pieces[p] for p in pending).replace(WORD_END, "")
            words.append(Word(text, tuple(pending)))
            pending.clear()

    for position, piece in enumerate(tokens.pieces):
        if piece == EMBEDDING_PIECE:
            if pending and tokens.pieces[pending[-1]] == EMBEDDING_PIECE:
                pending.append(position)
                continue
            flush()
            pending.append(position)
            continue
        if pending and tokens.pieces[pending[-1]] == EMBEDDING_PIECE:
            words.append(Word(f"embedding:{next(embeddings, '?')}", tuple(pending)))
            pending.clear()
        if _is_special(piece):
            flush()
            continue
        pending.append(position)
        if piece.endswith(WORD_END):
            flush()
    if pending and tokens.pieces[pending[-1]] == EMBEDDING_PIECE:
        words.append(Word(f"embedding:{next(embeddings, '?')}", tuple(pending)))
    else:
        flush()
    return words


def _normalise(word: str) -> str:
    """Lower case, without ComfyUI weight syntax: ``(Red:1.2)`` -> ``red``."""
    word = re.sub(r":-?[0-9.]+\)?$", "", word.strip())
    return word.strip("()[]").lower()


def _occurrence(text: str) -> tuple[str, int]:
    """``cat#2`` -> (``cat``, 2); ``cat`` -> (``cat``, 1)."""
    match = re.fullmatch(r"(.+)#(\d+)", text)
    return (match.group(1), int(match.group(2))) if match else (text, 1)


def _token_listing(words: list[Word]) -> str:
    return ", ".join(f"{word.text} ({', '.join(map(str, word.positions))})" for word in words)


def _occurrences(words: list[Word], name: str) -> list[Word]:
    """Every run of consecutive words that spells ``name`` (CLIP splits ``t-shirt`` into ``t``, ``-``, ``shirt``)."""
    found = []
    for start in range(len(words)):
        text, end = "", start
        while end < len(words) and len(text) < len(name):
            text += words[end].text.lower()
            end += 1
        if text == name:
            run = words[start:end]
            found.append(Word(name if len(run) > 1 else run[0].text, tuple(p for w in run for p in w.positions)))
    return found


def map_subjects(prompt: str, tokens: PromptTokens, subjects: str) -> SubjectTokens:
    """Map the ``subjects`` phrases onto ``tokens``; raises :class:`SubjectTokenError` naming what is missing."""
    words = prompt_words(tokens)
    phrases = [phrase.split() for phrase in subjects.split(",") if phrase.strip()]
    if not phrases:
        return pick_subjects(prompt, tokens)
    mapped = []
    for phrase in phrases:
        name, occurrence = _occurrence(_normalise(phrase[-1]))
        matches = _occurrences(words, name)
        if len(matches) < occurrence:
            found = f"it appears {len(matches)} time(s)" if matches else "it is not in the prompt"
            raise SubjectTokenError(
                f"subject '{phrase[-1]}': {found}. Use a word of the prompt exactly as written "
                f"('word#2' for a second occurrence). The prompt's words and token positions: {_token_listing(words)}"
            )
        subject = matches[occurrence - 1]
        attributes = tuple(_nearest(words, _normalise(attribute), subject, phrase) for attribute in phrase[:-1])
        mapped.append(Subject(subject, attributes))
    return SubjectTokens(prompt, tokens.pieces, tuple(mapped), auto_picked=False)


def _nearest(words: list[Word], name: str, subject: Word, phrase: list[str]) -> Word:
    """The occurrence of attribute ``name`` closest before its subject (after it, if none is before)."""
    matches = _occurrences(words, name)
    before = [word for word in matches if word.positions[-1] < subject.positions[0]]
    after = [word for word in matches if word.positions[0] > subject.positions[-1]]
    if not before and not after:
        raise SubjectTokenError(
            f"attribute '{name}' of '{' '.join(phrase)}' is not in the prompt. Attributes are the words before the "
            f"subject in a phrase and must appear in the prompt. The prompt's words and token positions: "
            f"{_token_listing(words)}"
        )
    return before[-1] if before else after[0]


def pick_subjects(prompt: str, tokens: PromptTokens) -> SubjectTokens:
    """Automatic pick: in each stretch between separators (punctuation, conjunctions, prepositions), the last word
    that is not a function or style word is a subject, and the other such words before it are its attributes.

    ``"a red cat and a frog on a table, photorealistic"`` -> cat (red), frog, table.
    """
    words = prompt_words(tokens)
    subjects: list[Subject] = []
    stretch: list[Word] = []
    for word in [*words, Word(",", ())]:
        text = word.text.lower()
        if text in _SEPARATORS or not any(character.isalnum() for character in text):
            content = [w for w in stretch if w.text.lower() not in _FUNCTION_WORDS | _STYLE_WORDS]
            if content:
                subjects.append(Subject(content[-1], tuple(content[:-1])))
            stretch = []
        else:
            stretch.append(word)
    if not subjects:
        raise SubjectTokenError(
            f"no subjects found automatically in '{prompt}'. Name them in the subjects input, e.g. 'red cat, frog'. "
            f"The prompt's words and token positions: {_token_listing(words)}"
        )
    return SubjectTokens(prompt, tokens.pieces, tuple(subjects), auto_picked=True)
