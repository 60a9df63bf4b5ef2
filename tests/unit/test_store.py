"""AttentionStore aggregation against the A&E / diffusers / D&B reference (aggregation.json)."""
import json

import pytest
import torch

from attention_guidance.guidance.capture.store import AttentionStore
from devkit import REFERENCE_DIR

FIXTURE = json.loads((REFERENCE_DIR / "aggregation.json").read_text())


def test_mean_over_heads_and_layers_matches_reference():
    store = AttentionStore(token_count=6)
    store.recording = True
    for layer in FIXTURE["inputs"]["layers"]:
        probabilities = torch.tensor(layer["probs"], dtype=torch.float32)
        heads, pixels, tokens = probabilities.shape
        if not layer["is_cross"] or tokens != 6:
            continue  # self-attention is never recorded (only attn2 is patched)
        side = int(pixels ** 0.5)
        store.add(level=16 // side, probabilities=probabilities[None], height=side, width=side)
    for implementation in ("ae_official_res4", "diffusers_res4", "dnb_res4"):  # the three authors' aggregations
        expected = torch.tensor(FIXTURE["expected"][implementation])
        torch.testing.assert_close(store.aggregate(4)[0], expected, atol=1e-7, rtol=0)
    assert store.levels() == [1, 2, 4, 8]


def test_cfg_batches_with_a_repeated_context_fold_back_to_the_prompt_tokens():
    probabilities = torch.rand(1, 2, 4, 154).softmax(-1)
    store = AttentionStore(token_count=77)
    store.add(4, probabilities, 2, 2)
    folded = probabilities[..., :77] + probabilities[..., 77:]
    torch.testing.assert_close(store.aggregate(4), folded.mean(1).reshape(1, 2, 2, 77))


def test_clear_and_missing_level():
    store = AttentionStore(token_count=3)
    store.add(4, torch.rand(1, 1, 4, 3), 2, 2)
    store.clear()
    with pytest.raises(KeyError, match="no attention was recorded at level 4"):
        store.aggregate(4)


def test_bad_shapes_are_rejected():
    store = AttentionStore(token_count=77)
    with pytest.raises(ValueError, match="do not form a 3x3 map"):
        store.add(4, torch.rand(1, 1, 4, 77), 3, 3)
    with pytest.raises(ValueError, match="does not fit a prompt of 77 tokens"):
        store.add(4, torch.rand(1, 1, 4, 100), 2, 2)
