"""What the host's tokenizer makes of a prompt: the pieces at each token position."""
from __future__ import annotations

import re
from typing import Any

from ..subjects.tokens import EMBEDDING_PIECE, OPEN_CLIP_H, PromptTokens

ENCODERS = {"l": "clip_l", "g": "clip_g", "h": OPEN_CLIP_H}  # ComfyUI's tokenizer keys -> PromptTokens.encoder


def prompt_tokens(clip: Any, text: str) -> PromptTokens:
    """The pieces the CLIP model encodes for ``text``, over all 77-token chunks (CLIP's byte-level BPE pieces).

    SD1.x and SDXL read the ``l`` encoder (SDXL's ``g`` encoder must agree on every position), SD2.x its ``h`` one,
    which ``encoder`` records.
    """
    tokenized = clip.tokenize(text)
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
                        encoder=ENCODERS.get(key, key))


def _loaded_embeddings(encoder_tokenizer: Any, text: str) -> tuple[str, ...]:
    """Names of the ``embedding:name`` words the tokenizer turns into vectors (missing ones it drops)."""
    identifier = getattr(encoder_tokenizer, "embedding_identifier", "embedding:")
    names = re.findall(re.escape(identifier) + r"([^\s,()\[\]]+)", text)
    if not names or getattr(encoder_tokenizer, "embedding_directory", None) is None:
        return ()
    return tuple(name for name in names if encoder_tokenizer._try_get_embedding(name)[0] is not None)
