"""Defaults that depend on the model, as documented: Attend-and-Excite's ``normalize_eot`` is on for SD2.x, found
from the CLIP that made the tokens (never from a file name)."""
import pytest
import torch

import nodes
from devkit.comfy_host import ag
from devkit.sampling import sample_custom

bridge = ag("guidance.comfy_bridge")
NODES = nodes.NODE_CLASS_MAPPINGS
PROMPT = "a cat and a frog"


def attend_and_excite(tokens, normalize_eot):
    return NODES["AG_AttendAndExcite"]().build(tokens, 2000.0, 50.0, "", "", 20, True, 0.5, normalize_eot)[0]


def tokens_for(checkpoint):
    return NODES["AG_TokenPicker"]().pick(checkpoint.clip, PROMPT, "cat, frog")["result"][0]


@pytest.mark.parametrize("family,expected", [("sd1", False), ("sd2", True), ("sdxl", False)])
def test_normalize_eot_auto_is_on_for_sd2_only(tiny, family, expected):
    tokens = tokens_for(tiny(family))
    assert attend_and_excite(tokens, "auto").terms[0].config.normalize_eot is expected
    assert attend_and_excite(tokens, "on").terms[0].config.normalize_eot is True
    assert attend_and_excite(tokens, "off").terms[0].config.normalize_eot is False


def test_sd2_samples_guided_with_the_word_tokens_only(tiny):
    checkpoint = tiny("sd2")
    tokens = tokens_for(checkpoint)
    runs = {}
    for setting in ("auto", "off"):
        sampler = bridge.guided_sampler("euler", attend_and_excite(tokens, setting))
        runs[setting] = sample_custom(checkpoint.model, checkpoint.clip, sampler, steps=4, seed=5)
    assert torch.isfinite(runs["auto"]).all()
    assert (runs["auto"] - runs["off"]).abs().mean() > 1e-4  # the option changes the guidance
