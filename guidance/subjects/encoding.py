"""Whether a positive conditioning was encoded from the prompt that subject tokens were made from (pure).

Subject positions only mean something in the prompt they were mapped in. The nodes that make AG_TOKENS keep the text
encoder's output for that prompt (``SubjectTokens.encoding``, ``[77·k, D]``); the sampling side compares it with the
``[77·k', D']`` cross-attention context of each positive conditioning entry. The text encoder is causal, so two
prompts differ from their first differing token on, and the first position that differs says where.
"""
from __future__ import annotations

import torch

CHUNK_LENGTH = 77  # the text encoders encode prompts in chunks of 77 tokens
RELATIVE_TOLERANCE = 1e-2
"""Per token, ``|actual - expected| / |expected|`` up to this is one encoding (fp16 and bf16 round to about 1e-3);
another word changes a token's vector by far more."""


def encoding_mismatch(expected: torch.Tensor, actual: torch.Tensor, appended: bool = False) -> str | None:
    """Why ``actual`` ``[T', D']`` is not the encoding ``expected`` ``[T, D]`` (both one prompt's rows), or None
    when it is. ``appended``: ``actual`` may go on after ``expected`` with other 77-token chunks (ConditioningConcat
    with the tokens' prompt first), where the subject positions still hold."""
    if actual.shape[-1] != expected.shape[-1]:
        return (f"it was encoded by another text encoder ({actual.shape[-1]} features per token, not "
                f"{expected.shape[-1]})")
    longer = appended and actual.shape[0] > expected.shape[0] and actual.shape[0] % CHUNK_LENGTH == 0
    if actual.shape[0] != expected.shape[0] and not longer:
        return f"it has {actual.shape[0]} tokens, the tokens' prompt {expected.shape[0]}"
    expected, actual = expected.float().cpu(), actual[:expected.shape[0]].float().cpu()
    scale = expected.norm(dim=-1).clamp_min(torch.finfo(torch.float32).tiny)
    differs = ((actual - expected).norm(dim=-1) / scale > RELATIVE_TOLERANCE).nonzero()
    if len(differs):
        return f"it encodes another prompt (from token position {int(differs[0])} on)"
    return None
