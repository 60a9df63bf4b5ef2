"""What the host's tokenizer makes of a prompt: the pieces at each token position."""
from __future__ import annotations

import re
from typing import Any

from ..subjects.encoders import map_sequence_subjects
from ..subjects.tokens import EMBEDDING_PIECE, OPEN_CLIP_H, T5_ENCODER, PromptTokens, SubjectTokens

try:
    from comfy.text_encoders.sd3_clip import SD3ClipModel
except ImportError:  # 2024 host: no SD3
    SD3ClipModel = None

T5_KEY = "t5xxl"
ENCODERS = {"l": "clip_l", "g": "clip_g", "h": OPEN_CLIP_H}  # ComfyUI's tokenizer keys -> PromptTokens.text_encoder


def prompt_tokens(clip: Any, text: str) -> PromptTokens:
    """The pieces the CLIP model encodes for ``text``, over all 77-token chunks (CLIP's byte-level BPE pieces).

    SD1.x and SDXL read the ``l`` encoder (SDXL's ``g`` encoder must agree on every position), SD2.x its ``h`` one,
    which ``text_encoder`` records.
    """
    tokenized = {key: chunks for key, chunks in clip.tokenize(text).items() if key != T5_KEY}
    key = "l" if "l" in tokenized else next(iter(tokenized))
    encoder_tokenizer = getattr(clip.tokenizer, f"clip_{key}")
    ids = [token for chunk in tokenized[key] for token, *_ in chunk]
    for other, chunks in tokenized.items():
        other_ids = [token for chunk in chunks for token, *_ in chunk]
        if other != key and [isinstance(t, int) for t in other_ids] != [isinstance(t, int) for t in ids]:
            raise ValueError(f"the {other} and {key} text encoders disagree on token positions for this prompt")
    vocabulary = encoder_tokenizer.inv_vocab
    pieces = tuple(vocabulary[token] if isinstance(token, int) else EMBEDDING_PIECE for token in ids)
    return PromptTokens(pieces, _loaded_embeddings(encoder_tokenizer, text), byte_level=True,
                        text_encoder=ENCODERS.get(key, key))


def _loaded_embeddings(encoder_tokenizer: Any, text: str) -> tuple[str, ...]:
    """Names of the ``embedding:name`` words the tokenizer turns into vectors (missing ones it drops)."""
    identifier = getattr(encoder_tokenizer, "embedding_identifier", "embedding:")
    names = re.findall(re.escape(identifier) + r"([^\s,()\[\]]+)", text)
    if not names or getattr(encoder_tokenizer, "embedding_directory", None) is None:
        return ()
    return tuple(name for name in names if encoder_tokenizer._try_get_embedding(name)[0] is not None)


def t5_prompt_tokens(clip: Any, text: str) -> PromptTokens:
    """The SentencePiece pieces the T5 encoder reads for ``text`` (padded to the tokenizer's minimum length)."""
    tokenizer = getattr(clip.tokenizer, T5_KEY, None) or getattr(clip.tokenizer, f"clip_{T5_KEY}")
    ids = [token for chunk in clip.tokenize(text)[T5_KEY] for token, *_ in chunk]
    pieces = tuple(tokenizer.inv_vocab[token] if isinstance(token, int) else EMBEDDING_PIECE for token in ids)
    return PromptTokens(pieces, encoder=T5_ENCODER)


def sequence_tokens(clip: Any, text: str) -> list[PromptTokens]:
    """Each text encoder's tokens in the order the diffusion model attends over them.

    CLIP-only models (SD1.x, SD2.x, SDXL): CLIP. SD3's encoder: CLIP-L/G's 77·k positions (when either is loaded),
    then T5's (when loaded). Other encoders with T5 (FLUX's, whose CLIP-L gives the pooled vector only; Chroma's):
    T5.
    """
    if T5_KEY not in clip.tokenize(text):
        return [prompt_tokens(clip, text)]
    encoder = clip.cond_stage_model
    if SD3ClipModel is None or not isinstance(encoder, SD3ClipModel):
        return [t5_prompt_tokens(clip, text)]
    sequence = []
    if encoder.clip_l is not None or encoder.clip_g is not None:
        sequence.append(prompt_tokens(clip, text))
    if encoder.t5xxl is not None:
        sequence.append(t5_prompt_tokens(clip, text))
    return sequence


def subject_tokens(clip: Any, text: str, subjects: str) -> SubjectTokens:
    """AG_TOKENS for ``text`` as ``clip`` encodes it: ``subjects`` mapped onto every encoder the model attends over
    (a subject's positions in all of them form its group). Raises ``SubjectTokenError``."""
    return map_sequence_subjects(text, sequence_tokens(clip, text), subjects)
