"""A-STAR losses against the literal transcription of Eqs. 2-4 (astar_loss.json; docs/methods.md, "A-STAR")."""
import json

import pytest
import torch

from attention_guidance.guidance.losses import astar as A
from attention_guidance.guidance.methods.astar import paper_schedule
from attention_guidance.guidance.subjects.layout import LayoutGrid, masks_to_grid
from devkit import REFERENCE_DIR

ASTAR = json.loads((REFERENCE_DIR / "astar_loss.json").read_text())
INPUTS = ASTAR["inputs"]
CONCEPTS = [[token] for token in INPUTS["concept_token_indices"]]
KEYS = [str(token) for token in INPUTS["concept_token_indices"]]
LOSS_TOL = {"atol": 1e-6, "rtol": 1e-5}
RULES = ["half_max", "mean", "minmax_0.5"]


def tensor(value) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


def scalar(value: float) -> torch.Tensor:
    return torch.tensor([value], dtype=torch.float32)


SMALL = torch.zeros(1, 2, 8, 8)
PREVIOUS = tensor(INPUTS["attention_previous_step_t"])[None]
CURRENT = tensor(INPUTS["attention_current_step_t_minus_1"])[None]


def test_inputs_are_softmaxes_of_the_logits():
    for logits, attention in (("logits_previous_step_t", PREVIOUS), ("logits_current_step_t_minus_1", CURRENT)):
        torch.testing.assert_close(tensor(INPUTS[logits]).softmax(-1)[None], attention, atol=1e-7, rtol=0)


@pytest.mark.parametrize("preprocessing", ["ae", "raw"])
def test_concept_maps_and_segregation(preprocessing: str):
    expected = ASTAR["results"][preprocessing]
    config = A.AStarConfig(preprocessing=preprocessing)
    for attention, step in ((CURRENT, "current"), (PREVIOUS, "previous")):
        concepts = A.concept_maps(attention, CONCEPTS, config)
        for index, key in enumerate(KEYS):
            reference = tensor(expected[f"maps_{step}"][key])
            torch.testing.assert_close(concepts[0, index], reference, atol=1e-6, rtol=0)
        segregation = A.segregation_loss(concepts)
        torch.testing.assert_close(segregation, scalar(expected[f"seg_loss_{step}_step"]), **LOSS_TOL)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("preprocessing", ["ae", "raw"])
def test_retention_and_total(preprocessing: str, rule: str):
    expected = ASTAR["results"][preprocessing]
    config = A.AStarConfig(preprocessing=preprocessing, binarisation=rule)
    previous = A.concept_maps(PREVIOUS, CONCEPTS, config)
    result = A.astar_loss(CURRENT, CONCEPTS, previous, config)
    case = expected["retention"][rule]
    assert result.targets.sum(dim=(-2, -1))[0].tolist() == case["mask_area"]
    for index, key in enumerate(KEYS):
        assert torch.equal(result.targets[0, index], tensor(case["masks_previous_step"][key]))
    torch.testing.assert_close(result.segregation, scalar(expected["seg_loss_current_step"]), **LOSS_TOL)
    torch.testing.assert_close(result.retention, scalar(case["ret_loss"]), **LOSS_TOL)
    torch.testing.assert_close(result.loss, scalar(case["total_seg_plus_ret"]), **LOSS_TOL)
    assert result.retained.tolist() == [True, True]


def test_gradient_wrt_current_logits():
    expected = ASTAR["grad_ae_half_max"]
    logits = tensor(INPUTS["logits_current_step_t_minus_1"])[None].requires_grad_()
    previous = A.concept_maps(PREVIOUS, CONCEPTS)
    result = A.astar_loss(logits.softmax(-1), CONCEPTS, previous)
    (gradient,) = torch.autograd.grad(result.loss.sum(), logits)
    torch.testing.assert_close(result.loss, scalar(expected["loss"]), **LOSS_TOL)
    torch.testing.assert_close(gradient[0], tensor(expected["d_loss_d_logits_current"]), atol=1e-7, rtol=1e-5)


def test_defaults():
    config = A.AStarConfig()
    assert (config.preprocessing, config.binarisation, config.kernel_size, config.sigma) == ("ae", "half_max", 3, 0.5)
    schedule = paper_schedule()
    assert schedule.guided_steps(50) == 25 and schedule.refinement_thresholds(50) == {}
    assert schedule.step_size(0, 50) == pytest.approx(20.0)


def test_segregation_of_identical_maps_is_one_half():
    maps = torch.rand(3, 1, 8, 6)
    result = A.segregation_loss(torch.cat([maps, maps], dim=1))
    torch.testing.assert_close(result, torch.full((3,), ASTAR["sanity"]["seg_identical_maps_value"]))


def test_segregation_sums_over_all_pairs():
    maps = torch.rand(2, 3, 5, 5)
    pairs = [A.segregation_loss(maps[:, [m, n]]) for m, n in ((0, 1), (0, 2), (1, 2))]
    torch.testing.assert_close(A.segregation_loss(maps), sum(pairs))
    assert not A.segregation_loss(maps[:, :1]).any()


def test_first_step_is_segregation_only():
    result = A.astar_loss(CURRENT, CONCEPTS)
    expected = ASTAR["results"]["ae"]["seg_loss_current_step"]
    torch.testing.assert_close(result.loss, scalar(expected), **LOSS_TOL)
    assert not result.retention.any() and result.retained.tolist() == [False, False]


def test_previous_maps_carry_no_gradient():
    current = CURRENT.clone().requires_grad_()
    previous = A.concept_maps(PREVIOUS, CONCEPTS).requires_grad_()
    result = A.astar_loss(current, CONCEPTS, previous)
    current_grad, previous_grad = torch.autograd.grad(result.loss.sum(), [current, previous], allow_unused=True)
    assert previous_grad is None and current_grad.abs().sum() > 0
    assert not result.concepts.requires_grad


def test_retention_targets_carry_no_gradient():
    concepts = torch.rand(1, 1, 4, 4, requires_grad=True)
    targets = (torch.rand(1, 1, 4, 4) > 0.5).float().requires_grad_()
    gradients = torch.autograd.grad(A.retention_terms(concepts, targets).sum(), [concepts, targets], allow_unused=True)
    assert gradients[1] is None and gradients[0].abs().sum() > 0


def test_binarize_rules_on_a_hand_made_map():
    image = torch.tensor([[0.0, 0.2, 0.5], [1.0, 0.4, 0.3]])
    # max 1.0 -> half_max keeps >= 0.5; mean 0.4 -> keeps > 0.4; min 0 -> minmax equals half_max.
    assert A.binarize(image, "half_max").tolist() == [[0, 0, 1], [1, 0, 0]]
    assert A.binarize(image, "mean").tolist() == [[0, 0, 1], [1, 0, 0]]
    shifted = image + 1.0  # minmax is shift-invariant, half_max is not
    assert A.binarize(shifted, "minmax_0.5").tolist() == [[0, 0, 1], [1, 0, 0]]
    assert A.binarize(shifted, "half_max").tolist() == [[1, 1, 1], [1, 1, 1]]
    assert A.binarize(torch.full((2, 2), 0.3), "minmax_0.5").tolist() == [[1, 1], [1, 1]]
    with pytest.raises(ValueError, match="otsu"):
        A.binarize(image, "otsu")


def test_retention_of_a_perfect_map_is_one_half():
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 1:3, 1:3] = 1
    torch.testing.assert_close(A.retention_terms(mask, mask), torch.tensor([[0.5]]))


def test_layout_replaces_the_target_of_given_concepts_only():
    config = A.AStarConfig()
    previous = A.concept_maps(PREVIOUS, CONCEPTS, config)
    user = torch.zeros(1, 2, 16, 16)
    user[0, 0, :8, :8] = 1
    user[0, 1] = 1  # ignored: concept 1 has no mask
    result = A.astar_loss(CURRENT, CONCEPTS, previous, config, LayoutGrid(user, (True, False)))
    assert torch.equal(result.targets[0, 0], user[0, 0])
    assert torch.equal(result.targets[0, 1], A.binarize(previous, "half_max")[0, 1])
    concepts = A.concept_maps(CURRENT, CONCEPTS, config)
    expected = A.segregation_loss(concepts) + A.retention_terms(concepts, result.targets).sum(dim=1)
    torch.testing.assert_close(result.loss, expected)


def test_layout_applies_from_the_first_step():
    user = torch.zeros(1, 2, 16, 16)
    user[0, 1, 8:, 8:] = 1
    result = A.astar_loss(CURRENT, CONCEPTS, None, A.AStarConfig(), LayoutGrid(user, (False, True)))
    concepts = A.concept_maps(CURRENT, CONCEPTS)
    expected_retention = A.retention_terms(concepts, user)[:, 1]
    assert result.retained.tolist() == [False, True]
    torch.testing.assert_close(result.retention, expected_retention)
    torch.testing.assert_close(result.loss, A.segregation_loss(concepts) + expected_retention)


def test_layout_of_one_image_is_shared_by_the_batch():
    maps = torch.cat([CURRENT, PREVIOUS])
    user = torch.zeros(1, 2, 16, 16)
    user[0, :, 4:12, 4:12] = 1
    batched = A.astar_loss(maps, CONCEPTS, None, A.AStarConfig(), LayoutGrid(user, (True, True)))
    for index in range(2):
        alone = A.astar_loss(maps[index : index + 1], CONCEPTS, None, A.AStarConfig(), LayoutGrid(user, (True, True)))
        torch.testing.assert_close(batched.loss[index : index + 1], alone.loss)


def test_batch_images_get_their_own_gradient():
    maps = torch.cat([CURRENT, PREVIOUS]).requires_grad_()
    previous = A.concept_maps(torch.cat([PREVIOUS, CURRENT]), CONCEPTS)
    result = A.astar_loss(maps, CONCEPTS, previous)
    (gradient,) = torch.autograd.grad(result.loss[1], maps)
    assert not gradient[0].any() and gradient[1].abs().sum() > 0


def test_raw_multi_piece_concept_is_the_sum_of_its_pieces():
    config = A.AStarConfig(preprocessing="raw")
    whole = A.concept_maps(CURRENT, [[2, 3]], config)
    torch.testing.assert_close(whole[:, 0], CURRENT[..., 2] + CURRENT[..., 3])


def test_masks_to_grid_averages_areas():
    image = torch.zeros(1, 4, 4)
    image[0, 0, 0] = 1  # 1/4 of cell (0, 0): dropped (nearest sampling would keep it)
    image[0, 0:2, 2] = image[0, 1, 3] = 1  # 3/4 of cell (0, 1): kept
    image[0, 2:4, 0] = 1  # exactly 1/2 of cell (1, 0): kept (>= 0.5)
    assert masks_to_grid(image, (2, 2)).tolist() == [[[0, 1], [1, 0]]]


def test_masks_to_grid_any_size_and_aspect_ratio():
    image = torch.zeros(2, 600, 1000)
    image[0, :, :500] = 1  # left half
    image[1, 300:, :] = 0.8  # bottom half, soft values
    grid = masks_to_grid(image, (9, 15))
    assert grid.shape == (2, 9, 15)
    # Cells straddling the boundary average to 0.5 (left half) or 0.4 (soft bottom half).
    assert grid[0].sum(dim=0).tolist() == [9.0] * 8 + [0.0] * 7
    assert grid[1].sum(dim=1).tolist() == [0.0] * 5 + [15.0] * 4


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: A.astar_loss(CURRENT, []), "at least one concept"),
        (lambda: A.AStarConfig(preprocessing="smooth"), "preprocessing"),
        (lambda: A.AStarConfig(binarisation="otsu"), "binarisation"),
        (lambda: LayoutGrid(torch.zeros(1, 2, 16, 16), (True,)), "S = 1"),
        (lambda: A.astar_loss(CURRENT, CONCEPTS, torch.zeros(1, 2, 8, 8)), "previous maps"),
        (lambda: A.astar_loss(CURRENT, CONCEPTS, None, A.AStarConfig(), LayoutGrid(SMALL, (True, True))), "grid"),
    ],
)
def test_bad_inputs_are_rejected(build, message: str):
    with pytest.raises(ValueError, match=message):
        build()
