"""Which entry of a positive conditioning the subject tokens belong to.

A positive CONDITIONING may hold several entries (ConditioningCombine, regional prompts with ConditioningSetArea or
ConditioningSetMask); the host runs the model once per entry and blends the predictions. Subject positions mean
something in one prompt only, so the pack reads the attention of the entry encoded from the tokens' prompt, the
*subject entry*, one row per image, and leaves the other entries to the sampling passes.
"""
from __future__ import annotations

import torch

from ..subjects.encoding import CHUNK_LENGTH, encoding_mismatch
from ..subjects.tokens import SubjectTokens

TOKENS_HINT = ("connect the tokens output of the CLIP Text Encode (with subjects) node that encodes the positive "
               "prompt (or of a Subject Token Picker with the same CLIP and text) to the tokens input")


class PromptMismatchError(ValueError):
    """The subject tokens were not made from any entry of the positive conditioning."""


class SubjectEntryError(ValueError):
    """The subject entry of the positive conditioning is one the guidance cannot read."""


def entry_context(entry: dict) -> torch.Tensor:
    """The entry's text context, ``[T, D]`` (its first row: every image of a batch shares the prompt)."""
    return entry["model_conds"]["c_crossattn"].cond[0]


def _mismatch(tokens: SubjectTokens, context: torch.Tensor, appended: bool) -> str | None:
    if tokens.encoding is not None:
        return encoding_mismatch(tokens.encoding, context, appended)
    longer = appended and context.shape[0] > tokens.token_count and context.shape[0] % CHUNK_LENGTH == 0
    if context.shape[0] != tokens.token_count and not longer:
        return f"it has {context.shape[0]} tokens, the tokens' prompt {tokens.token_count}"
    return None


def subject_entries(positive: list[dict], tokens: SubjectTokens, appended: bool = False) -> list[dict]:
    """The entries of ``positive`` (as the host prepared them for sampling) encoded from the tokens' prompt, in order;
    ``appended``: also entries that go on with other chunks after it (ConditioningConcat with the subject prompt
    first), where the subject positions hold as well.

    Raises :class:`PromptMismatchError`, saying what each entry is, when there is none.
    """
    reasons = [_mismatch(tokens, entry_context(entry), appended) for entry in positive]
    matching = [entry for entry, reason in zip(positive, reasons) if reason is None]
    if matching:
        return matching
    listed = "; ".join(f"entry {index + 1}: {reason}" for index, reason in enumerate(reasons))
    prompt = tokens.prompt if len(tokens.prompt) <= 80 else tokens.prompt[:77] + "..."
    raise PromptMismatchError(
        f"the subject tokens were made from '{prompt}' ({tokens.token_count} tokens), but the positive "
        f"conditioning was not encoded from that prompt ({listed}); {TOKENS_HINT}")


def subject_entry(positive: list[dict], tokens: SubjectTokens | None, latent: torch.Tensor) -> dict:
    """The entry whose attention the guidance and the recording read: the first one encoded from the tokens' prompt,
    possibly with other chunks appended (the first entry when there are no tokens). It must cover the whole
    ``latent`` ``[B, C, h, w]``: the subjects' maps are the image's."""
    entry = positive[0] if tokens is None else subject_entries(positive, tokens, appended=True)[0]
    area = entry.get("area")
    if area is not None:
        dims = len(area) // 2
        size, offset = list(area[:dims]), list(area[dims:])
        if any(offset) or size[-2:] != list(latent.shape[-2:]):
            raise SubjectEntryError(
                "the positive entry encoded from the subject prompt covers only an area of the image "
                "(ConditioningSetArea, or a mask set to its bounds), but the subjects' attention is read over the "
                "whole image; keep the subject prompt's entry unrestricted and give the areas to the other entries")
    return entry
