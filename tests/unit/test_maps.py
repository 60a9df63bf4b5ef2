"""Subject-map preprocessing against the authors' values (ae_loss.json)."""
import json

import pytest
import torch

from attention_guidance.guidance.losses import maps as M
from devkit import REFERENCE_DIR

AE = json.loads((REFERENCE_DIR / "ae_loss.json").read_text())


def tensor(value) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


def test_kernel_is_the_coded_one():
    torch.testing.assert_close(M.gaussian_kernel(3, 0.5), tensor(AE["gaussian_kernel_3x3_official"]), atol=1e-7, rtol=0)


@pytest.mark.parametrize("smoothed", [False, True])
def test_subject_maps_match_reference(smoothed: bool):
    attention = tensor(AE["inputs"]["attention"])[None]
    kernel = M.gaussian_kernel() if smoothed else None
    result = M.subject_maps(attention, [[2], [5]], kernel=kernel)
    key = "smoothed_token_maps" if smoothed else "softmaxed_token_maps_before_smoothing"
    for index, token in enumerate(["2", "5"]):
        torch.testing.assert_close(result[0, index], tensor(AE["official"][key][token]), atol=1e-6, rtol=0)


def test_multi_piece_subject_is_the_sum_of_its_pieces():
    attention = tensor(AE["inputs"]["attention"])[None]
    pieces = M.subject_maps(attention, [[2], [3]])
    whole = M.subject_maps(attention, [[2, 3]])
    torch.testing.assert_close(whole[:, 0], pieces.sum(dim=1))


def test_second_chunk_drops_its_own_sot_and_last_slot():
    columns = M.default_token_columns(154).tolist()
    assert 0 not in columns and 76 not in columns and 77 not in columns and 153 not in columns
    assert len(columns) == 150 and 78 in columns


def test_subject_outside_columns_is_rejected():
    with pytest.raises(ValueError, match=r"\[0\]"):
        M.subject_maps(torch.rand(1, 4, 4, 77).softmax(-1), [[0]])
