"""Image-to-text probabilities of a joint attention (pure): both normalisers against the full L x L softmax, masks,
head chunks, pooling to latent/4, and the store's joint maps."""
import math

import pytest
import torch

from attention_guidance.guidance.capture.joint import JointLayout, pool_grid, text_attention
from attention_guidance.guidance.capture.store import AttentionStore

TEXT, GRID, EXTRA = 5, (3, 4), 2  # 5 text tokens, a 3x4 image grid, 2 reference tokens after the image


def attention_inputs(seed: int = 0, heads: int = 3, dim: int = 8):
    generator = torch.Generator().manual_seed(seed)
    length = TEXT + GRID[0] * GRID[1] + EXTRA
    return (torch.randn(2, heads, length, dim, generator=generator, dtype=torch.float64) * 2,
            torch.randn(2, heads, length, dim, generator=generator, dtype=torch.float64) * 2)


def full_softmax(q, k, mask=None):
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.softmax(logits if mask is None else logits + mask, dim=-1)


LAYOUT = JointLayout(0, TEXT, TEXT, GRID, TEXT + GRID[0] * GRID[1] + EXTRA)
IMAGE = slice(TEXT, TEXT + GRID[0] * GRID[1])


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_both_normalisers_equal_the_full_softmax(chunk):
    q, k = attention_inputs()
    found = text_attention(q, k, LAYOUT, joint=True, heads_per_chunk=chunk)
    text_only = torch.softmax(torch.log(full_softmax(q, k)[:, :, IMAGE, :TEXT]), dim=-1)
    torch.testing.assert_close(found.text, text_only.sum(dim=1), atol=1e-12, rtol=0)
    torch.testing.assert_close(found.joint, full_softmax(q, k)[:, :, IMAGE, :TEXT].sum(dim=1), atol=1e-12, rtol=0)
    assert found.heads == 3 and found.text.dtype == torch.float64


def test_fp16_inputs_are_computed_in_fp32():
    q, k = attention_inputs()
    found = text_attention(q.half(), k.half(), LAYOUT)
    assert found.text.dtype == torch.float32 and found.joint is None


def test_image_first_layout_and_masks():
    q, k = attention_inputs(1)
    image_first = JointLayout(GRID[0] * GRID[1], TEXT, 0, GRID, LAYOUT.length)
    mask = torch.zeros(LAYOUT.length, LAYOUT.length)
    mask[:, GRID[0] * GRID[1] + 1] = -math.inf  # text token 1 masked out
    found = text_attention(q, k, image_first, joint=True, mask=mask)
    expected = full_softmax(q, k, mask.double())[:, :, :GRID[0] * GRID[1]]
    text = expected[..., GRID[0] * GRID[1]:GRID[0] * GRID[1] + TEXT]
    torch.testing.assert_close(found.joint, text.sum(dim=1), atol=1e-12, rtol=0)
    torch.testing.assert_close(found.text, (text / text.sum(-1, keepdim=True)).sum(dim=1), atol=1e-12, rtol=0)
    assert found.text[..., 1].abs().max() == 0
    keep = mask == 0  # the same mask as booleans ("keep"), per image and head
    boolean = text_attention(q, k, image_first, joint=True, mask=keep[None, None].expand(2, 3, -1, -1))
    torch.testing.assert_close(boolean.text, found.text, atol=1e-12, rtol=0)


def test_layout_must_fit_the_sequence():
    q, k = attention_inputs()
    with pytest.raises(ValueError, match="does not fit"):
        JointLayout(0, TEXT, TEXT, (4, 4), LAYOUT.length)
    with pytest.raises(ValueError, match="does not match the layout"):
        text_attention(q[:, :, :-1], k[:, :, :-1], LAYOUT)


def test_pooling_averages_what_each_cell_covers():
    maps = torch.arange(15.0).reshape(1, 15, 1)  # a 3x5 grid, one token
    pooled, size = pool_grid(maps, (3, 5), 2)
    assert size == (2, 3)
    assert pooled[0, :, 0].tolist() == [3.0, 5.0, 6.5, 10.5, 12.5, 14.0]
    assert pool_grid(maps, (3, 5), 1) == (maps, (3, 5))


def test_store_keeps_joint_maps_beside_the_text_maps():
    store = AttentionStore(token_count=2)
    text = torch.tensor([[[0.75, 0.25]] * 4])  # [1, 4 pixels, 2 tokens], two heads summed
    store.add_summed(4, text * 2, 2, 2, 2)
    store.add_joint(4, text * 0.2)
    store.add_summed(4, text * 2, 2, 2, 2)
    store.add_joint(4, text.repeat(1, 1, 2) * 0.1)  # a CFG-repeated context: copies are summed
    assert store.aggregate(4).shape == (1, 2, 2, 2) and store.head_count(4) == 4
    torch.testing.assert_close(store.aggregate(4)[0, 0, 0], torch.tensor([0.75, 0.25]))
    torch.testing.assert_close(store.aggregate_joint(4)[0, 0, 0], torch.tensor([0.75, 0.25]) * 0.1)
    assert store.aggregate_joint(2) is None
    store.clear()
    assert store.aggregate_joint(4) is None
