"""The A-STAR guidance term and its spec builder (guidance/methods/astar.py)."""
import pytest
import torch

from attention_guidance.guidance.engine.spec import TermInputs
from attention_guidance.guidance.losses import astar as A
from attention_guidance.guidance.methods.astar import AStarTerm, astar, paper_schedule
from attention_guidance.guidance.subjects.layout import SubjectLayout, masks_to_grid
from attention_guidance.guidance.subjects.tokens import Subject, SubjectTokens, Word

SUBJECTS = ((2,), (5, 6))
TOKENS = SubjectTokens("a cat and a sombrero", ("<|startoftext|>", "a</w>", "cat</w>", "and</w>", "a</w>", "som",
                                                "brero</w>", "<|endoftext|>"),
                       (Subject(Word("cat", (2,)), ()), Subject(Word("sombrero", (5, 6)), ())), False)


def attention(seed, batch=2, size=(6, 10)):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *size, 8, generator=generator).softmax(-1)


def test_first_step_is_segregation_then_retention_of_the_previous_maps():
    config = A.AStarConfig(binarisation="mean")
    term = AStarTerm(SUBJECTS, config)
    current, previous = attention(1), attention(2)
    first = term.evaluate(TermInputs(current, 0, 10))
    torch.testing.assert_close(first.loss, A.astar_loss(current, SUBJECTS, None, config).loss)
    assert not first.retention.any()
    later = term.evaluate(TermInputs(current, 1, 10, previous))
    expected = A.astar_loss(current, SUBJECTS, A.concept_maps(previous, SUBJECTS, config), config)
    torch.testing.assert_close(later.loss, expected.loss)
    assert torch.equal(later.targets, A.binarize(A.concept_maps(previous, SUBJECTS, config), "mean"))
    assert (later.retention > 0.5).all()
    assert not term.unmet(later, 0.9).any() and term.unmet(later, 0.9).shape == (2,)


def test_layout_targets_follow_the_maps_grid_and_all_ones_is_no_layout():
    masks = torch.zeros(1, 2, 300, 500)
    masks[0, 0, :, :250] = 1
    masks[0, 1] = 1  # anywhere
    layout = SubjectLayout(masks, TOKENS.labels)
    current, previous = attention(3), attention(4)
    result = AStarTerm(SUBJECTS, layout=layout).evaluate(TermInputs(current, 1, 10, previous))
    assert result.retained.tolist() == [True, True]
    assert torch.equal(result.targets[:, 0], masks_to_grid(masks[:, 0], (6, 10)).expand(2, -1, -1))
    assert torch.equal(result.targets[:, 1], A.binarize(A.concept_maps(previous, SUBJECTS), "half_max")[:, 1])

    anywhere = SubjectLayout(torch.ones(1, 2, 30, 50), TOKENS.labels)
    for inputs in (TermInputs(current, 0, 10), TermInputs(current, 1, 10, previous)):
        plain = AStarTerm(SUBJECTS).evaluate(inputs)
        assert torch.equal(AStarTerm(SUBJECTS, layout=anywhere).evaluate(inputs).loss, plain.loss)


def test_layout_of_the_wrong_batch_fails_at_evaluation():
    layout = SubjectLayout(torch.ones(3, 2, 30, 50), TOKENS.labels)
    with pytest.raises(ValueError, match="3 masks per subject but the latent batch has 2 images"):
        AStarTerm(SUBJECTS, layout=layout).evaluate(TermInputs(attention(1), 0, 10))


def test_spec_builder():
    schedule = paper_schedule()
    spec = astar(TOKENS, schedule, weight=0.5)
    (term,) = spec.terms
    assert term == AStarTerm(SUBJECTS, A.AStarConfig(), None, 0.5) and spec.schedules == (schedule,) and spec.active
    assert not astar(TOKENS, schedule, weight=0.0).active
    with pytest.raises(ValueError, match=r"layout is for the subjects \(cat, dog\) but the tokens name \(cat, "
                                         r"sombrero\); build the layout from the same tokens"):
        astar(TOKENS, schedule, layout=SubjectLayout(torch.ones(1, 2, 4, 4), ("cat", "dog")))
