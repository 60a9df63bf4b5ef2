"""The Divide & Bind term and spec builder: subjects and attributes from tokens, attribute maps from extra levels."""
import pytest
import torch

from attention_guidance.guidance.engine.schedule import GuidanceSchedule
from attention_guidance.guidance.engine.spec import LevelMaps, TermInputs
from attention_guidance.guidance.losses.divide_bind import DivideBindConfig, aggregate_attribute_maps, divide_bind_loss
from attention_guidance.guidance.methods.divide_bind import DivideBindTerm, divide_bind
from attention_guidance.guidance.subjects.tokens import PromptTokens, SubjectTokenError, map_subjects

PROMPT = "a yellow bowl and a blue cat"
PIECES = ("<|startoftext|>", "a</w>", "yellow</w>", "bowl</w>", "and</w>", "a</w>", "blue</w>", "cat</w>",
          *["<|endoftext|>"] * 69)
BIND = DivideBindConfig(mode="tv_bind")


def tokens(subjects="yellow bowl, blue cat"):
    return map_subjects(PROMPT, PromptTokens(PIECES), subjects)


def softmaxed(*shape, seed=0):
    return torch.randn(*shape, 77, generator=torch.Generator().manual_seed(seed)).softmax(-1)


def test_the_builder_binds_each_attribute_to_its_subject():
    spec = divide_bind(tokens("yellow bowl, blue cat"), GuidanceSchedule(), BIND, weight=0.5)
    (term,) = spec.terms
    assert term.subjects == ((3,), (7,)) and term.attributes == (((2,),), ((6,),))
    assert term.weight == 0.5 and term.levels == (1, 2) and spec.levels == (1, 2)


def test_only_binding_reads_extra_levels():
    assert divide_bind(tokens(), GuidanceSchedule()).terms[0].levels == ()  # tv mode
    assert divide_bind(tokens("yellow bowl, cat"), GuidanceSchedule(), DivideBindConfig(mode="max")).levels == ()


def test_tv_bind_without_attributes_says_what_to_fix():
    with pytest.raises(SubjectTokenError, match="no subject has one.*'yellow bowl, blue cat'.*or use mode tv"):
        divide_bind(tokens("bowl, cat"), GuidanceSchedule(), BIND)


def test_a_missing_attribute_is_refused_when_tokens_are_mapped():
    with pytest.raises(SubjectTokenError, match="attribute 'green' of 'green cat' is not in the prompt"):
        tokens("yellow bowl, green cat")


def test_the_term_aggregates_the_attribute_levels_onto_the_latent4_grid():
    maps = softmaxed(2, 4, 4, seed=1)
    fine, mid = softmaxed(2, 16, 16, seed=2), softmaxed(2, 8, 8, seed=3)
    term = divide_bind(tokens(), GuidanceSchedule(), BIND).terms[0]
    inputs = TermInputs(maps, 3, 10, level_maps={1: LevelMaps(fine, 16), 2: LevelMaps(mid, 32)})
    result = term.evaluate(inputs)
    attribute_maps = aggregate_attribute_maps([fine, mid], [16, 32], (4, 4))
    expected = divide_bind_loss(maps, term.subjects, 3, 10, BIND, term.attributes, attribute_maps)
    torch.testing.assert_close(result.loss, expected.loss)
    assert result.jsd.shape == (2, 2) and (result.jsd > 0).all()
    only_mid = term.evaluate(TermInputs(maps, 3, 10, level_maps={2: LevelMaps(mid, 32)}))  # SDXL: no latent/1
    assert not torch.allclose(only_mid.jsd, result.jsd)
    with pytest.raises(ValueError, match="no cross-attention at those levels"):
        term.evaluate(TermInputs(maps, 3, 10))


def test_refinement_follows_the_indicator():
    term = DivideBindTerm(((3,),), ((),), BIND)
    result = term.evaluate(TermInputs(softmaxed(1, 4, 4), 0, 10))
    indicator = float(result.indicator)
    assert term.unmet(result, indicator + 1e-3).tolist() == [True]
    assert term.unmet(result, indicator).tolist() == [False]
