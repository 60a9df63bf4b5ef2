"""FOCUS's group-JSD loss, its term and the SOC step size (pure)."""
import math

import pytest
import torch

from attention_guidance.guidance.engine.schedule import GuidanceSchedule, soc_step_size
from attention_guidance.guidance.engine.spec import TermInputs
from attention_guidance.guidance.losses.focus import FocusConfig, focus_loss, gaussian_blur_kernel, group_divergence
from attention_guidance.guidance.methods.focus import focus, paper_schedule, subject_groups
from attention_guidance.guidance.subjects.encoders import map_encoder_subjects
from attention_guidance.guidance.subjects.tokens import PromptTokens

SHARP = FocusConfig(blur=False)


def one_hot_maps(spots: list[int], size: int = 4) -> torch.Tensor:
    """``[1, size, size, T]``: token t attends to pixel ``spots[t]`` only (a little everywhere else)."""
    maps = torch.full((1, size * size, len(spots)), 1e-3)
    for token, spot in enumerate(spots):
        maps[0, spot, token] = 1.0
    return maps.reshape(1, size, size, len(spots))


def test_divergence_is_zero_for_equal_and_one_for_disjoint_maps():
    equal = torch.rand(2, 3, 16).expand(2, 3, 16).clone()
    equal[:, 1:] = equal[:, :1]
    assert group_divergence(equal, 3.0).abs().max() < 1e-6
    disjoint = torch.eye(3)[None] * 1.0
    torch.testing.assert_close(group_divergence(disjoint, 3.0), torch.ones(1), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="at least two"):
        group_divergence(equal[:, :1], 3.0)


def test_loss_rewards_coherent_groups_and_separate_subjects():
    groups = ((0, 1), (2, 3))
    good = focus_loss(one_hot_maps([0, 0, 15, 15]), groups, SHARP)  # each group together, groups apart
    mixed = focus_loss(one_hot_maps([0, 15, 0, 15]), groups, SHARP)  # each group split, mixtures equal
    assert good.loss.item() < 1e-3 and good.coherence.item() < 1e-6
    assert mixed.coherence.item() > 0.99 and mixed.separation.item() > 0.99 and mixed.loss.item() > 0.99
    single = focus_loss(one_hot_maps([0, 15]), ((0, 1),), SHARP)  # one subject: coherence only
    torch.testing.assert_close(single.loss, single.coherence / 2)


def test_blur_is_a_unit_gaussian():
    kernel = gaussian_blur_kernel(3, 1.0)
    line = torch.tensor([math.exp(-0.5), 1.0, math.exp(-0.5)])
    torch.testing.assert_close(kernel, torch.outer(line, line) / line.sum() ** 2)


def test_a_gradient_step_lowers_the_loss():
    logits = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    groups = ((0, 1), (2, 3))
    loss = focus_loss(torch.softmax(logits, dim=-1), groups).loss
    (gradient,) = torch.autograd.grad(loss.sum(), logits)
    lowered = focus_loss(torch.softmax(logits - 0.5 * gradient, dim=-1), groups).loss
    assert lowered.item() < loss.item()


PIECES = ("▁", "a", "▁red", "▁cu", "be", "▁and", "▁blue", "▁", "sphere", "</s>")


def test_groups_hold_word_pieces_and_attributes_and_the_term_reads_joint_maps():
    tokens = map_encoder_subjects("a red cube and blue sphere", [PromptTokens(PIECES, encoder="t5")],
                                  "red cube, blue sphere")
    assert subject_groups(tokens) == ((2, 3, 4), (6, 8))
    spec = focus(tokens, paper_schedule())
    assert spec.joint_attention and spec.terms[0].groups == ((2, 3, 4), (6, 8))
    text = torch.rand(1, 4, 4, 10)
    joint = torch.rand(1, 4, 4, 10)
    term = spec.terms[0]
    from_joint = term.evaluate(TermInputs(text, 0, 10, joint_maps=joint)).loss
    torch.testing.assert_close(from_joint, focus_loss(joint, term.groups).loss)
    torch.testing.assert_close(term.evaluate(TermInputs(text, 0, 10)).loss, focus_loss(text, term.groups).loss)


def test_soc_step_size_follows_the_run_noise_levels():
    sigmas = [1.0, 0.9, 0.5, 0.0]
    schedule = GuidanceSchedule(scale_factor=4.0, refinement_points=(), weighting="soc")
    run = schedule.for_run(sigmas, flow=True)
    expected = [4.0 * (s - t) * 2 * s * (s + 1e-3) / (1 - s + 1e-3) for s, t in zip(sigmas, sigmas[1:])]
    assert [run.step_size(step, 3) for step in range(3)] == pytest.approx(expected)
    assert soc_step_size(1.0, 1.0, 0.95) == pytest.approx(0.05 * 2 * 1.001 / 1e-3)
    auto = GuidanceSchedule(weighting="auto")
    assert auto.for_run(sigmas, flow=False) is auto and auto.for_run(sigmas, flow=True).step_sizes is not None
    with pytest.raises(ValueError, match="SOC step size follows a flow model's noise levels"):
        schedule.for_run([14.6, 1.0, 0.0], flow=False)
    with pytest.raises(ValueError, match="weighting must be one of"):
        GuidanceSchedule(weighting="fast")
