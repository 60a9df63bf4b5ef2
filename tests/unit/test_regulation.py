"""Attention Regulation against the authors' processor (attnreg.json) and the product's default mode."""
import json

import pytest
import torch

from attention_guidance.guidance import regulation as R
from devkit import REFERENCE_DIR

AR = json.loads((REFERENCE_DIR / "attnreg.json").read_text())
INPUTS = AR["inputs"]
HEADS = INPUTS["heads"]
WIDTH = INPUTS["width"]
TARGETS = INPUTS["target_ids"][0]
EOS = INPUTS["eos_id"]
REFERENCE = R.RegulationConfig(mode="reference")


def tensor(value) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


def fixture_logits(step: int) -> torch.Tensor:
    """``[1, heads, 256, 77]``: the conditional rows of the fixture layer call at edit step ``step``."""
    return tensor(AR["steps"][step]["logits_cond_half"])[None]


def fixture_weights(step: int) -> torch.Tensor:
    return tensor(AR["steps"][step]["init_weights_w0"])[None]


def all_logits(step: int) -> torch.Tensor:
    """``[4, 256, 77]`` logits of all rows (uncond 0-1, cond 2-3), as the authors form them."""
    query, key = tensor(AR["steps"][step]["query"]), tensor(INPUTS["key"])
    scale = query.shape[-1] ** -0.5
    return torch.baddbmm(torch.empty(query.shape[0], query.shape[1], key.shape[1]), query, key.mT, beta=0, alpha=scale)


def quantile_90(probabilities: torch.Tensor, targets: list[int] = TARGETS) -> torch.Tensor:
    """90th percentile over pixels of each target column: ``[images, heads, HW, T] -> [images, heads, S]``."""
    return torch.quantile(probabilities[..., targets], 0.9, dim=-2)


@pytest.fixture(scope="module")
def reference_run() -> list[R.RegulationOutput]:
    """Both fixture steps in reference mode; step 1 blends with the state step 0 returned."""
    outputs, previous = [], None
    for step, record in enumerate(AR["steps"]):
        output = R.regulate(
            fixture_logits(step), WIDTH, WIDTH, TARGETS, record["current_step"], previous, fixture_weights(step), EOS,
            REFERENCE,
        )
        outputs.append(output)
        previous = output.state
    return outputs


# --- constants and basis -------------------------------------------------------------------------------------


def test_defaults_are_the_authors():
    official, config = AR["hyperparameters_official"], R.RegulationConfig()
    assert config.iterations == official["max_iter"] == 20
    assert config.learning_rate == official["lr"] == 100.0
    assert config.quantile == official["quantile"] and config.quantile_target == official["quantile_target"] == 0.9
    assert (config.gamma, config.delta, config.epsilon) == (official["gamma"], official["delta"], official["epsilon"])
    assert config.ema_decay == official["ema_decay_old_weight"] == 0.25
    assert config.global_decay == official["global_decay"] == 0.99
    assert config.edited_steps(official["steps"]) == official["edit_steps"] == INPUTS["num_edit_steps"] == 25
    assert [config.total_share(count) for count in range(1, 7)] == [min(1.0, 0.2 * count) for count in range(1, 7)]
    assert config.mode == "default"  # the project's choice, not the authors' (docs/methods.md, "AR modes")


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="mode"):
        R.RegulationConfig(mode="paper")


def test_basis_is_the_coded_one():
    assert torch.equal(R.gaussian_basis(16, 16), tensor(AR["gaussian_basis"]["basis_16x16_49"]))


@pytest.mark.parametrize("width", [16, 32, 64])
def test_basis_centres_per_width(width: int):
    expected = AR["gaussian_basis"]["per_width"][str(width)]
    sigma, centres = R.axis_centres(width)
    assert (sigma, centres) == (expected["sigma"], expected["centre_coords_first_axis"])
    assert R.basis_size(width, width) == expected["n_centres"] == 49
    basis = R.gaussian_basis(width, width)
    # k = 7·a + b: x0 = centres[a] in the outer loop, y0 = centres[b] in the inner one; each peaks at 1.
    for k in (0, 1, 7, 48):
        y0, x0 = centres[k % 7], centres[k // 7]
        assert basis[k, y0, x0] == 1.0 and basis[k].max() == 1.0


def test_non_square_basis_has_sigma_and_centres_per_axis():
    height, width = 32, 80
    basis = R.gaussian_basis(height, width)
    (sigma_y, centres_y), (sigma_x, centres_x) = R.axis_centres(height), R.axis_centres(width)
    assert (sigma_y, sigma_x) == (2, 5) and len(centres_y) == 7 and len(centres_x) == 7
    assert basis.shape == (49, height, width) == (R.basis_size(height, width), height, width)
    ys, xs = torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64)
    for k in (0, 9, 48):
        y0, x0 = centres_y[k % len(centres_y)], centres_x[k // len(centres_y)]
        along_y = torch.exp(-((ys - y0) ** 2) / (2 * sigma_y**2))
        along_x = torch.exp(-((xs - x0) ** 2) / (2 * sigma_x**2))
        separable = along_y[:, None] * along_x[None, :]
        torch.testing.assert_close(basis[k].double(), separable, atol=1e-7, rtol=0)


@pytest.mark.parametrize("height, width", [(8, 8), (8, 16), (16, 12)])
def test_maps_below_16_are_rejected(height: int, width: int):
    assert not R.supports_map(height, width)
    with pytest.raises(ValueError, match="skip this layer"):
        R.gaussian_basis(height, width)
    logits = torch.randn(1, 1, height * width, 77)
    with pytest.raises(ValueError, match="skip this layer"):
        R.regulate(logits, height, width, [2], 0, None, torch.rand(1, 1, 1, 1), None)
    assert R.supports_map(16, 24)


def test_initial_weights_come_from_the_given_generator():
    for step, record in enumerate(AR["steps"]):
        generator = torch.Generator().manual_seed(record["rand_seed_before_call"])
        weights = R.initial_weights(generator, 1, HEADS, WIDTH, WIDTH, len(TARGETS))
        assert torch.equal(weights, fixture_weights(step))
    weights = R.initial_weights(torch.Generator().manual_seed(0), 3, 2, 16, 24, 3)
    assert weights.shape == (3, 2, 77, 3) and 0 <= weights.min() and weights.max() < 1


# --- reference mode against the authors' processor -----------------------------------------------------------


@pytest.mark.parametrize("step", [0, 1])
def test_logits_are_scaled_query_key_products(step: int):
    torch.testing.assert_close(all_logits(step)[HEADS:], fixture_logits(step)[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("step", [0, 1])
def test_reference_losses_and_first_iteration(reference_run, step: int):
    record, diagnostics = AR["steps"][step], reference_run[step].diagnostics
    expected = tensor(record["iter_losses_official"])
    losses = diagnostics.losses[:, 0]
    assert diagnostics.losses.shape == (20, 1)
    # Every iterate, the late ones included, at the fixture's stated tolerance (docs/methods.md, "Reference fixtures").
    torch.testing.assert_close(losses, expected, atol=2e-5, rtol=2e-5)
    terms = record["iter0_loss_components"]
    initial = diagnostics.initial_terms
    torch.testing.assert_close(initial.quantile, tensor([terms["quantile_term_gamma1"]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(initial.coverage, tensor([terms["mean_term_unweighted"]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(initial.weights, tensor([terms["weights_l2_unweighted"]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(losses[0], tensor(terms["total_official_weights_1_80_0.09"]), atol=1e-6, rtol=0)
    gradient = diagnostics.first_gradient[0]
    torch.testing.assert_close(gradient, tensor(record["grad_iter0_d_loss_d_w"]), atol=1e-7, rtol=0)
    torch.testing.assert_close(diagnostics.iterates[0], fixture_weights(step), atol=0, rtol=0)
    after = diagnostics.iterates[1, 0]
    torch.testing.assert_close(after, tensor(record["weights_after_iter0_update"]), atol=2e-5, rtol=0)


@pytest.mark.parametrize("step", [0, 1])
def test_reference_best_iterate_and_state(reference_run, step: int):
    record, output = AR["steps"][step], reference_run[step]
    assert output.diagnostics.best_iteration.tolist() == [record["best_iteration_index"]]
    torch.testing.assert_close(output.diagnostics.best_loss, tensor([record["best_loss"]]), atol=2e-5, rtol=0)
    partner_atol = 1e-6 if step == 0 else 1e-4
    expected_partner = tensor(record["ma_attn_used_for_ema_targets"])
    torch.testing.assert_close(output.diagnostics.ema_partner[0], expected_partner, atol=partner_atol, rtol=0)
    expected_state = tensor(record["best_additive_stored_in_internals_targets"])
    torch.testing.assert_close(output.state[0], expected_state, atol=1e-4, rtol=0)
    # The applied bias is the decayed EMA blend with the fixture's decay factor 0.99^t (Eqs. 14-15).
    blend = 0.25 * output.diagnostics.ema_partner + 0.75 * output.state
    torch.testing.assert_close(output.diagnostics.applied_bias, record["global_decay_factor"] * blend, atol=1e-6,
                               rtol=0)


@pytest.mark.parametrize("step", [0, 1])
def test_reference_edited_logits_and_probabilities(reference_run, step: int):
    record, output = AR["steps"][step], reference_run[step]
    logits = fixture_logits(step)
    maps = logits.reshape(1, HEADS, WIDTH, WIDTH, -1)
    edited = R.edited_logits(maps, torch.tensor(TARGETS), output.diagnostics.applied_bias, REFERENCE)
    assert torch.equal(edited, edited.half().float())
    expected = tensor(record["edited_logits_cond_half_after_fp16_cast"])
    torch.testing.assert_close(edited.reshape(HEADS, WIDTH * WIDTH, -1), expected, atol=1e-2, rtol=0)
    torch.testing.assert_close(output.probabilities[0], tensor(record["final_probs_cond_half"]), atol=2e-4, rtol=0)
    # <sot>/<eot> are written back unedited, so rows sum to more than 1 (docs/methods.md AR-SOT-EOT).
    assert torch.equal(output.probabilities[..., [0, EOS]], logits.softmax(-1)[..., [0, EOS]])
    assert output.probabilities.sum(-1).max() > 1.05


@pytest.mark.parametrize("step", [0, 1])
def test_reference_attention_output(reference_run, step: int):
    record = AR["steps"][step]
    assert record["uncond_half_probs_unchanged"]
    logits = all_logits(step)
    logits_before = logits.clone()
    cond = R.regulate(
        logits[None, HEADS:].reshape(1, HEADS, WIDTH * WIDTH, -1), WIDTH, WIDTH, TARGETS, record["current_step"],
        reference_run[0].state if step == 1 else None, fixture_weights(step), EOS, REFERENCE,
    ).probabilities[0]
    assert torch.equal(logits, logits_before)
    probabilities = torch.cat([logits[:HEADS].softmax(-1), cond])
    output = probabilities @ tensor(INPUTS["value"])
    expected = tensor(record["attention_output_heads_probs_at_V"])
    torch.testing.assert_close(output[:HEADS], expected[:HEADS], atol=1e-6, rtol=0)
    torch.testing.assert_close(output, expected, atol=5e-4, rtol=0)


# --- default mode ---------------------------------------------------------------------------------------------


def batch_of_two() -> tuple[torch.Tensor, torch.Tensor]:
    """Two images (the fixture's two query sets) and their initial weights."""
    return torch.cat([fixture_logits(0), fixture_logits(1)]), torch.cat([fixture_weights(0), fixture_weights(1)])


def test_default_rows_sum_to_one_and_targets_gain_attention():
    logits, weights = batch_of_two()
    output = R.regulate(logits, WIDTH, WIDTH, TARGETS, 0, None, weights, None)
    torch.testing.assert_close(output.probabilities.sum(-1), torch.ones(2, HEADS, WIDTH * WIDTH), atol=1e-5, rtol=0)
    before, after = quantile_90(logits.softmax(-1)), quantile_90(output.probabilities)
    assert before.max() < 0.02 and after.min() > 0.4
    assert output.probabilities.dtype == torch.float32 and output.probabilities.shape == logits.shape


@pytest.mark.parametrize("size", [(16, 16), (24, 40)])
def test_target_only_search_equals_the_coded_arithmetic(size: tuple[int, int]):
    """Default mode's target-column search gives the coded bias, target attention and gradient (to fp32 rounding)."""
    height, width = size
    generator = torch.Generator().manual_seed(3)
    logits = 3 * torch.randn(6, height, width, 77, generator=generator)
    targets = torch.tensor([4, 9, 10])
    basis = R.gaussian_basis(height, width)
    weights = torch.rand(6, basis.shape[0], 3, generator=generator).requires_grad_(True)
    coded_bias, coded = R.coded_biased_attention(logits, targets, basis)(weights)
    fast_bias, fast = R.target_only_biased_attention(logits, targets, basis)(weights)
    upstream = torch.randn(coded.shape, generator=generator)
    coded_gradient = torch.autograd.grad((coded * upstream).sum(), weights)[0]
    fast_gradient = torch.autograd.grad((fast * upstream).sum(), weights)[0]
    torch.testing.assert_close(fast_bias, coded_bias, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(fast, coded, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fast_gradient, coded_gradient, atol=1e-5, rtol=1e-4)


def test_default_selects_per_image_so_an_image_does_not_depend_on_its_batch():
    logits, weights = batch_of_two()
    batch = R.regulate(logits, WIDTH, WIDTH, TARGETS, 3, None, weights, None)
    assert batch.diagnostics.best_iteration.tolist() == [13, 12]
    for image in range(2):
        alone = R.regulate(logits[image : image + 1], WIDTH, WIDTH, TARGETS, 3, None, weights[image : image + 1], None)
        assert alone.diagnostics.best_iteration.tolist() == [batch.diagnostics.best_iteration[image].item()]
        torch.testing.assert_close(alone.probabilities[0], batch.probabilities[image], atol=1e-6, rtol=0)
        torch.testing.assert_close(alone.state[0], batch.state[image], atol=1e-6, rtol=0)
        losses = alone.diagnostics.losses[:, 0]
        torch.testing.assert_close(losses, batch.diagnostics.losses[:, image], atol=1e-6, rtol=0)
    coupled = R.regulate(logits, WIDTH, WIDTH, TARGETS, 3, None, weights, EOS, REFERENCE)
    assert coupled.diagnostics.best_iteration.tolist() == [12]


def test_ema_partner_and_decay():
    logits, weights = batch_of_two()
    first = R.regulate(logits, WIDTH, WIDTH, TARGETS, 0, None, weights, None)
    initial_pattern = R.basis_bias(R.gaussian_basis(WIDTH, WIDTH), weights.reshape(2 * HEADS, -1, len(TARGETS)))
    torch.testing.assert_close(first.diagnostics.ema_partner.reshape(initial_pattern.shape), initial_pattern)
    later = R.regulate(logits, WIDTH, WIDTH, TARGETS, 7, first.state, weights, None)
    assert torch.equal(later.diagnostics.ema_partner, first.state)
    expected = 0.99**7 * (0.25 * first.state + 0.75 * later.state)
    torch.testing.assert_close(later.diagnostics.applied_bias, expected, atol=1e-6, rtol=0)
    unedited = logits.softmax(-1)
    assert not torch.allclose(later.probabilities, unedited, atol=1e-3)
    untouched = [t for t in range(logits.shape[-1]) if t not in TARGETS]
    # Only the target logits move: the other columns keep their ratios.
    ratio = later.probabilities[..., untouched] / unedited[..., untouched]
    torch.testing.assert_close(ratio, ratio[..., :1].expand_as(ratio), atol=1e-4, rtol=1e-4)


def test_non_square_map_end_to_end():
    height, width, targets = 16, 24, [3, 4, 9]
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 3, height * width, 77, generator=generator)
    weights = R.initial_weights(generator, 2, 3, height, width, len(targets))
    output = R.regulate(logits, height, width, targets, 0, None, weights, None)
    assert output.state.shape == (2, 3, height, width, 3)
    torch.testing.assert_close(output.probabilities.sum(-1), torch.ones(2, 3, height * width), atol=1e-5, rtol=0)
    assert (quantile_90(output.probabilities, targets) > quantile_90(logits.softmax(-1), targets)).all()


# --- host integration -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["default", "reference"])
def test_works_under_inference_mode_with_inference_tensors(mode: str):
    config = R.RegulationConfig(mode=mode)
    expected, previous = [], None
    for step in range(2):
        logits, weights = fixture_logits(step), fixture_weights(step)
        output = R.regulate(logits, WIDTH, WIDTH, TARGETS, step, previous, weights, EOS, config)
        expected.append(output)
        previous = output.state
    value = tensor(INPUTS["value"])[HEADS:][None]
    previous = None
    with torch.inference_mode():
        for step in range(2):
            logits, weights = fixture_logits(step).clone(), fixture_weights(step).clone()
            assert logits.is_inference() and weights.is_inference()
            output = R.regulate(logits, WIDTH, WIDTH, TARGETS, step, previous, weights, EOS, config)
            assert not output.probabilities.requires_grad and not output.state.requires_grad
            attended = output.probabilities @ value
            assert attended.shape == (1, HEADS, WIDTH * WIDTH, value.shape[-1])
            assert torch.equal(output.probabilities, expected[step].probabilities)
            assert torch.equal(output.state, expected[step].state)
            previous = output.state
        assert not torch.is_grad_enabled()
    with torch.no_grad():
        R.regulate(fixture_logits(0), WIDTH, WIDTH, TARGETS, 0, None, fixture_weights(0), EOS, config)
        assert not torch.is_grad_enabled()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"targets": []}, "targets"),
        ({"targets": [2, 2]}, "targets"),
        ({"targets": [77]}, "targets"),
        ({"height": 16, "width": 32}, "logits must be"),
        ({"step": -1}, "step"),
        ({"init_weights": torch.rand(1, HEADS, 49, 3)}, "init_weights"),
        ({"previous": torch.zeros(1, HEADS, 16, 16, 3)}, "previous"),
        ({"eos_position": None, "config": REFERENCE}, "<eot>"),
    ],
)
def test_bad_inputs_are_rejected(change: dict, message: str):
    arguments = {
        "logits": fixture_logits(0), "height": WIDTH, "width": WIDTH, "targets": TARGETS, "step": 0,
        "previous": None, "init_weights": fixture_weights(0), "eos_position": EOS, "config": R.RegulationConfig(),
    }
    arguments.update(change)
    with pytest.raises(ValueError, match=message):
        R.regulate(**arguments)
