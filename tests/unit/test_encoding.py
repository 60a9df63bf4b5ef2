"""Telling whether a conditioning was encoded from the subject tokens' prompt."""
import torch

from attention_guidance.guidance.subjects.encoding import encoding_mismatch


def causal_encoding(token_ids, width=8):
    """A stand-in for a causal text encoder: each row depends on the tokens up to it."""
    table = torch.randn(100, width, generator=torch.Generator().manual_seed(0))
    return torch.cumsum(table[torch.tensor(token_ids)], dim=0)


def test_the_same_prompt_matches_also_in_half_precision():
    encoding = causal_encoding([0, 5, 7, 9, 1])
    assert encoding_mismatch(encoding, encoding.clone()) is None
    assert encoding_mismatch(encoding, encoding.half()) is None
    assert encoding_mismatch(encoding, encoding.bfloat16()) is None


def test_another_prompt_of_the_same_length_is_found_from_its_first_other_token():
    cat, dog = causal_encoding([0, 5, 7, 9, 1]), causal_encoding([0, 5, 8, 9, 1])
    assert encoding_mismatch(cat, dog) == "it encodes another prompt (from token position 2 on)"


def test_chunks_appended_after_the_prompt_match_only_where_allowed():
    prompt = causal_encoding([0, 5, 7] + [1] * 74)
    concatenated = torch.cat([prompt, causal_encoding([0, 9] + [1] * 75)])
    assert encoding_mismatch(prompt, concatenated, appended=True) is None
    assert encoding_mismatch(prompt, concatenated) == "it has 154 tokens, the tokens' prompt 77"
    other_first = torch.cat([causal_encoding([0, 9] + [1] * 75), prompt])
    assert encoding_mismatch(prompt, other_first, appended=True) == "it encodes another prompt (from token position 1 on)"


def test_other_lengths_and_other_encoders_are_named():
    encoding = causal_encoding([0, 5, 7, 9, 1])
    assert encoding_mismatch(encoding, torch.cat([encoding, encoding])) == "it has 10 tokens, the tokens' prompt 5"
    assert "another text encoder (16 features per token, not 8)" in encoding_mismatch(encoding, encoding.repeat(1, 2))
