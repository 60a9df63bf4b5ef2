"""Attend-and-Excite loss against the authors' values (ae_loss.json, docs/methods.md, "Attend-and-Excite")."""
import dataclasses
import json

import pytest
import torch

from attention_guidance.guidance.losses import attend_excite as AE
from devkit import REFERENCE_DIR

REF = json.loads((REFERENCE_DIR / "ae_loss.json").read_text())
SUBJECTS = [[2], [5]]
LOSS_TOL = {"atol": 1e-6, "rtol": 1e-5}


def tensor(value) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32)


def logits() -> torch.Tensor:
    return tensor(REF["inputs"]["logits"])


def attention() -> torch.Tensor:
    return tensor(REF["inputs"]["attention"])


def assert_matches(result: AE.AttendExciteLoss, expected: dict) -> None:
    torch.testing.assert_close(result.maxima[0], tensor(expected["max_attention_per_index"]), **LOSS_TOL)
    torch.testing.assert_close(torch.relu(1 - result.maxima[0]), tensor(expected["losses_per_token"]), **LOSS_TOL)
    torch.testing.assert_close(result.loss, tensor([expected["loss"]]), **LOSS_TOL)


def test_defaults_are_the_authors():
    official = REF["official"]
    config = AE.AttendExciteConfig()
    assert (config.smooth_attentions, config.kernel_size, config.sigma, config.normalize_eot) == (
        official["smooth_attentions"],
        official["kernel_size"],
        official["sigma"],
        official["normalize_eot"],
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.sigma = 1.0


def test_official_loss():
    result = AE.attend_excite_loss(attention()[None], SUBJECTS)
    assert result.loss.shape == (1,) and result.maxima.shape == (1, 2)
    assert_matches(result, REF["official"])
    assert_matches(result, {**REF["diffusers"], "losses_per_token": REF["official"]["losses_per_token"]})


def test_no_smoothing():
    config = AE.AttendExciteConfig(smooth_attentions=False)
    assert_matches(AE.attend_excite_loss(attention()[None], SUBJECTS, config), REF["official_no_smoothing"])


def test_normalize_eot_uses_the_prompt_words_only():
    expected = REF["official_normalize_eot_sd21"]
    words = range(1, expected["n_prompt_tokens"] - 1)  # the slice [1:6]
    config = AE.AttendExciteConfig(normalize_eot=True)
    assert_matches(AE.attend_excite_loss(attention()[None], SUBJECTS, config, word_positions=words), expected)
    with pytest.raises(ValueError, match="word token positions"):
        AE.attend_excite_loss(attention()[None], SUBJECTS, config)


def test_mild_input_values_and_gradient():
    expected = REF["official_mild_input"]
    mild_logits = (0.5 * logits()).requires_grad_(True)
    result = AE.attend_excite_loss(mild_logits.softmax(-1)[None], SUBJECTS)
    assert_matches(result, expected)
    torch.testing.assert_close(result.maxima[0], tensor(expected["diffusers_max_attention_per_index"]), **LOSS_TOL)
    smoothed = AE.excite_maps(mild_logits.detach().softmax(-1)[None], SUBJECTS)
    for index, token in enumerate(["2", "5"]):
        reference = tensor(expected["smoothed_token_maps"][token])
        torch.testing.assert_close(smoothed[0, index], reference, atol=1e-6, rtol=0)
    result.loss.sum().backward()
    torch.testing.assert_close(mild_logits.grad, tensor(expected["d_loss_d_logits_mild"]), atol=1e-6, rtol=0)


def test_official_gradients():
    source = logits().requires_grad_(True)
    probabilities = source.softmax(-1)
    probabilities.retain_grad()
    AE.attend_excite_loss(probabilities[None], SUBJECTS).loss.sum().backward()
    torch.testing.assert_close(source.grad, tensor(REF["grad"]["d_loss_d_logits_official"]), atol=1e-7, rtol=0)
    torch.testing.assert_close(
        probabilities.grad, tensor(REF["grad"]["d_loss_d_attention_official"]), atol=1e-7, rtol=0
    )


def test_each_image_of_a_batch_gets_its_own_gradient():
    source = torch.stack([logits(), 0.5 * logits()]).requires_grad_(True)
    result = AE.attend_excite_loss(source.softmax(-1), SUBJECTS)
    torch.testing.assert_close(
        result.loss, tensor([REF["official"]["loss"], REF["official_mild_input"]["loss"]]), **LOSS_TOL
    )
    result.loss.sum().backward()
    for index in range(2):
        single = source[index].detach().clone().requires_grad_(True)
        AE.attend_excite_loss(single.softmax(-1)[None], SUBJECTS).loss.sum().backward()
        # Equal up to summation order, which a batched convolution may change.
        torch.testing.assert_close(source.grad[index], single.grad, atol=1e-10, rtol=1e-6)
    torch.testing.assert_close(source.grad[0], tensor(REF["grad"]["d_loss_d_logits_official"]), atol=1e-7, rtol=0)
    torch.testing.assert_close(
        source.grad[1], tensor(REF["official_mild_input"]["d_loss_d_logits_mild"]), atol=1e-6, rtol=0
    )


def test_tied_subjects_send_the_whole_gradient_to_the_first():
    # Tokens 2 and 5 get identical columns, so both subjects have exactly the same maximum. The reference's
    # Python max picks the first subject; an even split between the two would change the gradient.
    tied = logits()
    tied[..., 5] = tied[..., 2]
    gradients = []
    for subjects in ([[2]], [[2], [5]]):
        source = tied.clone().requires_grad_(True)
        AE.attend_excite_loss(source.softmax(-1)[None], subjects).loss.sum().backward()
        gradients.append(source.grad)
    torch.testing.assert_close(gradients[1], gradients[0], atol=0, rtol=0)


@pytest.mark.parametrize("config", [AE.AttendExciteConfig(), AE.AttendExciteConfig(smooth_attentions=False)])
def test_loss_leaves_its_input_untouched(config: AE.AttendExciteConfig):
    maps = attention()[None].requires_grad_(True)
    before = maps.detach().clone()
    AE.attend_excite_loss(maps, SUBJECTS, config).loss.sum().backward()
    AE.attend_excite_loss(maps, SUBJECTS, config)
    assert torch.equal(maps.detach(), before)


def test_met_target_gives_a_zero_tensor_without_gradient():
    one_hot = torch.zeros(2, 16, 16, 77)
    one_hot[..., 2] = 1.0
    maps = one_hot.requires_grad_(True)
    result = AE.attend_excite_loss(maps, [[2]])
    assert isinstance(result.loss, torch.Tensor) and result.loss.dtype == torch.float32
    assert torch.equal(result.loss, torch.zeros(2))
    assert torch.equal(result.maxima, torch.ones(2, 1))
    result.loss.sum().backward()
    assert torch.count_nonzero(maps.grad) == 0


def test_half_precision_maps_give_a_float32_loss():
    result = AE.attend_excite_loss(attention()[None].half(), SUBJECTS)
    assert result.loss.dtype == torch.float32 and result.maxima.dtype == torch.float32
    torch.testing.assert_close(result.loss, tensor([REF["official"]["loss"]]), atol=1e-3, rtol=0)


def test_refinement_criterion_is_loss_above_one_minus_threshold():
    loss = tensor([REF["official"]["loss"], 0.0])  # 0.6675 and a met target
    assert AE.needs_refinement(loss, 0.05).tolist() == [False, False]
    assert AE.needs_refinement(loss, 0.5).tolist() == [True, False]
    assert AE.needs_refinement(loss, 1.5).tolist() == [True, False]  # the target loss never drops below 0


def test_invalid_config_and_subjects_are_rejected():
    with pytest.raises(ValueError, match="kernel_size"):
        AE.AttendExciteConfig(kernel_size=4)
    with pytest.raises(ValueError, match="sigma"):
        AE.AttendExciteConfig(sigma=0.0)
    with pytest.raises(ValueError, match="at least one subject"):
        AE.attend_excite_loss(attention()[None], [])
