"""Subject phrases -> token positions in the text encoder's sequence (pure; fed by the host tokenizer's output).

``subjects`` syntax: comma-separated phrases from the prompt. In each phrase the last word is the subject and the
words before it are its attributes (``"red apple, blue car"``: ``apple`` with ``red``, ``car`` with ``blue``).
``word#2`` names the second occurrence of a repeated word. An empty ``subjects`` picks the subjects automatically
(:func:`pick_subjects`).

Positions index the sequence the model attends over. For CLIP (SD1.x, SD2.x, SDXL) that is the flattened 77·k
sequence, position 0 of every chunk ``<|startoftext|>``. For T5 (FLUX, Chroma) it is the SentencePiece sequence (no
start token; ``▁`` starts a word; ``</s>`` then ``<pad>`` to the encoder's minimum length). SD3 attends over CLIP's
77·k positions followed by T5's: its tokens carry both :class:`TokenSegment` s, and each subject's group holds its
positions in both (:func:`join_encoders`).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

WORD_END = "</w>"
CLIP_CHUNK = 77
EMBEDDING_PIECE = "<embedding>"
START_OF_TEXT, END_OF_TEXT = "<|startoftext|>", "<|endoftext|>"
SPECIAL_PIECES = (START_OF_TEXT, END_OF_TEXT, "!")  # "!" is id 0, SDXL clip_g's and SD2's padding
OPEN_CLIP_H = "open_clip_h"  # SD2.x's text encoder (OpenCLIP ViT-H); PromptTokens.text_encoder names it
CLIP_ENCODER, T5_ENCODER = "clip", "t5"
WORD_START = "\u2581"  # SentencePiece's "▁": the piece starts a word
T5_END, T5_PAD = "</s>", "<pad>"
T5_SPECIAL_PIECES = (T5_END, T5_PAD)

# Words that never name a subject in the automatic pick: function words, and style words common in prompts.
_FUNCTION_WORDS = frozenset("""
a an the this that these those some any each every no one two three four five several many few
and or but nor with without of in on at by for from to into onto over under above below behind near beside
between next inside outside around through across against along among is are was were be being been has have
it its his her their my your our very highly photo picture image painting drawing style
""".split())
_STYLE_WORDS = frozenset("""
photorealistic realistic detailed hyperdetailed hd 4k 8k uhd hdr masterpiece quality best high resolution sharp
cinematic lighting studio professional render rendering octane unreal engine trending artstation digital art
ultra highres absurdres intricate detail details focus bokeh raw dslr 35mm photography illustration concept
wallpaper closeup close-up shot view angle background foreground composition aesthetic score
""".split())
# Words that describe rather than name (the automatic pick passes over them; a curated list, no language model).
_ADJECTIVES = frozenset("""
beautiful pretty cute lovely gorgeous stunning amazing awesome epic magnificent elegant adorable ugly scary creepy
big small large tiny huge little giant massive tall short long wide narrow thin thick fat slim round square
old young new ancient modern futuristic vintage retro fresh happy sad angry calm serene peaceful cheerful funny
red orange yellow green blue purple violet pink brown black white gray grey golden silver colorful colourful
dark bright light pale vivid soft hard smooth rough shiny glossy matte wet dry hot cold warm cool wooden metallic
glass plastic stone fluffy furry hairy fuzzy natural simple complex strange weird magical mysterious majestic
""".split())
# Nouns that end in -ly, which the adverb rule would otherwise pass over.
_LY_NOUNS = frozenset("butterfly dragonfly firefly fly lily family jelly belly bully ally rally holly assembly "
                      "supply italy sicily anomaly monopoly".split())
_SEPARATORS = frozenset({",", ".", ";", ":", "!", "?", "and", "or", "with", "without", "of", "in", "on", "at",
                         "by", "for", "from", "to", "into", "onto", "over", "under", "above", "below", "behind",
                         "near", "beside", "between", "next", "inside", "outside", "around", "through", "across",
                         "against", "along", "among"})


class SubjectTokenError(ValueError):
    """A subject or attribute that cannot be mapped to the prompt's tokens."""


@dataclass(frozen=True)
class PromptTokens:
    """The encoder's view of a prompt: a text piece per position (``cat</w>``, ``<embedding>``, specials).

    ``byte_level``: the pieces are byte-level BPE (CLIP's): each character stands for one byte of the UTF-8 text, so
    ``café`` arrives as ``cafÃ©</w>``; words are decoded back to text (:func:`decode_byte_level`). ``encoder`` is the
    word rule of the pieces; ``text_encoder`` names the model that made them (``OPEN_CLIP_H`` for SD2.x; empty when
    unknown).
    """

    pieces: tuple[str, ...]
    embedding_names: tuple[str, ...] = ()  # names of the embeddings whose vectors appear, in order
    byte_level: bool = False
    encoder: str = CLIP_ENCODER  # how pieces form words: CLIP_ENCODER ("</w>" ends one) or T5_ENCODER ("▁" starts one)
    text_encoder: str = ""


@dataclass(frozen=True)
class TokenSegment:
    """One text encoder's positions ``start .. start + length - 1`` in the sequence the model attends over."""

    encoder: str
    start: int
    length: int


def _byte_alphabet() -> dict[str, int]:
    """Character -> byte of the byte-level BPE alphabet (GPT-2's, which CLIP uses): the printable Latin-1 bytes
    stand for themselves, the other 68 bytes for the characters 256, 257, ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return {**{chr(byte): byte for byte in printable}, **{chr(256 + n): byte for n, byte in enumerate(others)}}


_BYTE_OF = _byte_alphabet()


def decode_byte_level(text: str) -> str:
    """The UTF-8 text that byte-level pieces spell (``cafÃ©`` -> ``café``); ``text`` itself where it is not such
    a spelling (a character outside the alphabet, or bytes that are not UTF-8, e.g. half of a split character)."""
    if any(character not in _BYTE_OF for character in text):
        return text
    try:
        return bytes(_BYTE_OF[character] for character in text).decode("utf-8")
    except UnicodeDecodeError:
        return text


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
    text_encoder: str = ""  # PromptTokens.text_encoder of the prompt
    passed_over: tuple[tuple[str, str], ...] = ()  # automatic pick: (word, why it is no subject)
    segments: tuple[TokenSegment, ...] = ()  # empty: one CLIP sequence (SD1.x, SD2.x, SDXL)

    @property
    def encoder_segments(self) -> tuple[TokenSegment, ...]:
        return self.segments or (TokenSegment(CLIP_ENCODER, 0, len(self.pieces)),)

    @property
    def encoders(self) -> tuple[str, ...]:
        """The text encoders whose tokens the model attends over, in sequence order (``("clip",)``, ``("t5",)``,
        ``("clip", "t5")``)."""
        return tuple(segment.encoder for segment in self.encoder_segments)

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
        return tuple(segment.start + position for segment in self.encoder_segments
                     for word in prompt_words(self._segment_tokens(segment)) for position in word.positions)

    @property
    def attention_columns(self) -> tuple[int, ...]:
        """Positions the losses' re-softmax runs over: each CLIP chunk without its ``<|startoftext|>`` and its last
        slot (A&E's ``[1:-1]``), every T5 position but ``<pad>`` (the prompt's pieces and ``</s>``)."""
        columns = []
        for segment in self.encoder_segments:
            for offset in range(segment.length):
                position = segment.start + offset
                if segment.encoder == T5_ENCODER:
                    keep = self.pieces[position] != T5_PAD
                else:
                    keep = offset % CLIP_CHUNK not in (0, CLIP_CHUNK - 1)
                if keep:
                    columns.append(position)
        return tuple(columns)

    @property
    def loss_columns(self) -> tuple[int, ...] | None:
        """:attr:`attention_columns` for the losses, None for one CLIP sequence (the losses' own default)."""
        return self.attention_columns if self.segments else None

    def _segment_tokens(self, segment: TokenSegment) -> PromptTokens:
        return PromptTokens(self.pieces[segment.start:segment.start + segment.length], encoder=segment.encoder)

    def token_table(self) -> str:
        """The prompt's pieces with their positions, one line per encoder (padding left out)."""
        lines = []
        for segment in self.encoder_segments:
            pieces = self._segment_tokens(segment).pieces
            listed = [f"{segment.start + offset} {piece}" for offset, piece in enumerate(pieces)
                      if not _is_padding(piece, pieces[offset - 1] if offset else None)]
            lines.append(f"{segment.encoder.upper()} tokens: " + ", ".join(listed))
        return "\n".join(lines)

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
        if not self.auto_picked:
            text = "Subjects (from the subjects input):\n" + "\n".join(lines)
        else:
            text = ("Subjects (picked automatically: the last noun-like word of each phrase between commas, 'and', "
                    "'with' and prepositions; name them in the subjects input to choose others):\n" + "\n".join(lines))
            if self.passed_over:
                reasons: dict[str, list[str]] = {}
                for word, reason in self.passed_over:
                    reasons.setdefault(reason, []).append(word)
                text += "\nPassed over: " + "; ".join(f"{', '.join(words)} ({reason})"
                                                      for reason, words in reasons.items())
        return text + "\n" + self.token_table() if self.segments else text

    def warnings(self) -> list[str]:
        """What the user should know about these subjects: subjects named twice (same tokens)."""
        seen: dict[tuple[int, ...], str] = {}
        found = []
        for subject in self.subjects:
            positions = subject.word.positions
            if positions in seen:
                found.append(f"'{subject.word.text}' is named twice and both name the same tokens "
                             f"({', '.join(map(str, positions))}); write '{subject.word.text}#2' for a second "
                             f"'{subject.word.text}' of the prompt, or name it once")
            seen[positions] = subject.word.text
        return found


def _is_padding(piece: str, previous: str | None) -> bool:
    """T5's ``<pad>``, SDXL clip_g's and SD2's ``!``, and CLIP's end token repeated as padding."""
    return piece in (T5_PAD, "!") or piece == previous == END_OF_TEXT


def _is_special(piece: str) -> bool:
    return piece in SPECIAL_PIECES


def prompt_words(tokens: PromptTokens) -> list[Word]:
    """Group pieces into the words the user typed; each embedding's vectors form one ``embedding:<name>`` word."""
    if tokens.encoder == T5_ENCODER:
        return sentencepiece_words(tokens.pieces)
    words: list[Word] = []
    pending: list[int] = []
    embeddings = iter(tokens.embedding_names)

    def flush() -> None:
        if pending:
            text = "".join(tokens.pieces[p] for p in pending).replace(WORD_END, "")
            words.append(Word(decode_byte_level(text) if tokens.byte_level else text, tuple(pending)))
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


def sentencepiece_words(pieces: tuple[str, ...]) -> list[Word]:
    """Words of a SentencePiece (T5) sequence: a piece starting with ``▁`` starts a word, a piece of punctuation only
    is a word of its own. A lone ``▁`` (T5 writes ``a`` and ``sphere`` as ``▁``, ``a`` and ``▁``, ``sphere``) only
    marks where the next piece's word starts and belongs to no word, like ``</s>`` and ``<pad>``."""
    words: list[Word] = []
    pending: list[int] = []

    def flush() -> None:
        text = "".join(pieces[p] for p in pending).replace(WORD_START, "")
        if text:
            words.append(Word(text, tuple(p for p in pending if pieces[p] != WORD_START)))
        pending.clear()

    punctuation = False  # whether the pending word is punctuation (the next piece starts a new word)
    for position, piece in enumerate(pieces):
        if piece in T5_SPECIAL_PIECES:
            flush()
            continue
        body = piece.removeprefix(WORD_START)
        is_punctuation = bool(body) and not any(character.isalnum() for character in body)
        after_lone_start = bool(pending) and pieces[pending[-1]] == WORD_START
        if not after_lone_start and (piece.startswith(WORD_START) or is_punctuation or punctuation):
            flush()
        pending.append(position)
        punctuation = is_punctuation
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
        if occurrence < 1:
            raise SubjectTokenError(f"subject '{phrase[-1]}': occurrences count from 1 ('{name}#1' or '{name}' is "
                                    f"the first '{name}', '{name}#2' the second)")
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
    return SubjectTokens(prompt, tokens.pieces, tuple(mapped), auto_picked=False, text_encoder=tokens.text_encoder)


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


def _not_a_subject(text: str) -> str | None:
    """Why the automatic pick passes over a word (None: it may name a subject): a curated judgement, no language
    model, so it errs towards passing over descriptive words."""
    lowered = text.lower()
    if lowered in _FUNCTION_WORDS:
        return "function words"
    if any(character.isdigit() for character in lowered):
        return "numbers"
    if lowered in _STYLE_WORDS:
        return "style or quality words"
    if lowered in _ADJECTIVES:
        return "describing words"
    if lowered.endswith("ly") and lowered not in _LY_NOUNS:
        return "describing words"
    letters = sum(character.isalpha() for character in lowered)
    pictures = sum(unicodedata.category(character) == "So" for character in lowered)  # emoji
    if letters < 2 and not pictures:
        return "single letters"
    return None


def pick_subjects(prompt: str, tokens: PromptTokens) -> SubjectTokens:
    """Automatic pick: in each stretch between separators (punctuation, conjunctions, prepositions), the last word
    that may name a subject (:func:`_not_a_subject`) is a subject, and the describing words before it are its
    attributes. Stretches without such a word give no subject; the words passed over are kept with the reason.

    ``"a red cat and a frog on a table, photorealistic"`` -> cat (red), frog, table.
    """
    words = prompt_words(tokens)
    subjects: list[Subject] = []
    passed_over: list[tuple[str, str]] = []
    stretch: list[Word] = []
    for word in [*words, Word(",", ())]:
        text = word.text.lower()
        separator = text in _SEPARATORS or not any(
            character.isalnum() or unicodedata.category(character) == "So" for character in text)
        if not separator:
            stretch.append(word)
            continue
        reasons = [_not_a_subject(w.text) for w in stretch]
        used: set[int] = set()
        nouns = [index for index, reason in enumerate(reasons) if reason is None]
        if nouns:
            attributes = [index for index in range(nouns[-1]) if reasons[index] in (None, "describing words")]
            subjects.append(Subject(stretch[nouns[-1]], tuple(stretch[index] for index in attributes)))
            used = {nouns[-1], *attributes}
        passed_over.extend((w.text, reason) for index, (w, reason) in enumerate(zip(stretch, reasons))
                           if index not in used and reason not in (None, "function words"))
        stretch = []
    if not subjects:
        skipped = "; ".join(f"{word} ({reason})" for word, reason in passed_over)
        raise SubjectTokenError(
            f"no subjects found automatically in '{prompt}'" + (f" (passed over: {skipped})" if skipped else "")
            + ". Name them in the subjects input, e.g. 'red cat, frog'. The prompt's words and token positions: "
            f"{_token_listing(words)}"
        )
    return SubjectTokens(prompt, tokens.pieces, tuple(subjects), auto_picked=True, text_encoder=tokens.text_encoder,
                         passed_over=tuple(passed_over))
