"""Attention Regulation as a model patch on a real host: the edit, its off switch, run state and composition.

Edits need maps of at least 16x16 at latent/4, so edited runs sample 512x512 images. They use the tiny SDXL model,
whose 512-px forward takes well under a second on CPU (the SD1.x/SD2.x tiny models attend at full latent size and
take seconds); SD1.x is sampled once, for the layers the authors edit in the family they used.
"""
import logging
from types import SimpleNamespace

import comfy.samplers
import pytest
import torch

import nodes
from devkit import tiny_models
from devkit.comfy_host import ag
from devkit.sampling import IS_CURRENT_HOST, encode, recording_sampler, sample_custom, with_recorder

bridge = ag("guidance.comfy_bridge")
bridge_regulation = ag("guidance.comfy_bridge.regulation")
compat = ag("guidance.comfy_bridge.compat")
patches = ag("guidance.comfy_bridge.patches")
recorder = ag("guidance.comfy_bridge.recorder")
regulation_run = ag("guidance.regulation.run")
tokens_module = ag("guidance.subjects.tokens")
regulation = ag("guidance.regulation")
regulation_node = ag("nodes.regulation")
common = ag("nodes.common")
attention = ag("guidance.capture.attention")

PROMPT = "a cat and a frog"
SIZE = 512  # latent 64: 16x16 maps at latent/4, the smallest size the basis supports
EXPECTED_LAYERS = {
    "sd1": [("input", 7), ("input", 8), ("output", 3), ("output", 4), ("output", 5)],
    "sd2": [("input", 7), ("input", 8), ("output", 3), ("output", 4), ("output", 5)],
    "sdxl": [("input", 7), ("input", 8), ("output", 0), ("output", 1), ("output", 2)],
}


def subject_tokens(checkpoint, prompt=PROMPT, subjects="cat, frog"):
    return tokens_module.map_subjects(prompt, bridge.prompt_tokens(checkpoint.clip, prompt), subjects)


def regulated(checkpoint, observer=None, model=None, **settings):
    spec = regulation_run.RegulationSpec.from_tokens(subject_tokens(checkpoint), regulation.RegulationConfig(**settings))
    return bridge.with_regulation(checkpoint.model if model is None else model, spec, observer)


def ksample(model, checkpoint, steps=2, size=SIZE, batch=1, seed=3, sampler="euler", prompt=PROMPT, negative="",
            cfg=7.0):
    """The stock KSampler node."""
    with torch.inference_mode():
        latent = nodes.EmptyLatentImage().generate(size, size, batch)[0]
        positive, negative = encode(checkpoint.clip, prompt), encode(checkpoint.clip, negative)
        (out,) = nodes.KSampler().sample(model, seed, steps, cfg, sampler, "normal", positive, negative, latent)
    return out["samples"]


def attn2_patches(model):
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})


def other_pack_patch(log):
    """Another pack's attn2 replace patch (standard attention) that logs each call's conditional probabilities.

    A closure, as packs write them: ModelPatcher.clone deep-copies patch objects but shares closures.
    """
    def patch(q, k, v, extra_options):
        rows = [row for _, chunk in patches.conditional_chunks(extra_options["cond_or_uncond"], q.shape[0])
                for row in chunk]
        layer = (*extra_options["block"], extra_options["block_index"])
        log.append((layer, attention.attention_probabilities(q[rows], k[rows], extra_options["n_heads"])))
        return compat.host_attention(q, k, v, extra_options)

    return patch


def with_other_pack(model, log):
    clone = model.clone()
    for site in bridge.regulation_sites(model):
        for key in site.keys():
            clone.set_model_attn2_replace(other_pack_patch(log), *key)
    return clone


def subject_peak(probabilities, subjects, quantile=0.9):
    """``[subjects, images]``: the quantile over pixels of each subject's head-averaged attention."""
    maps = [probabilities[..., list(positions)].sum(-1).mean(1) for positions in subjects]
    return torch.stack([m.quantile(quantile, dim=-1) for m in maps])


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_edits_the_authors_layers_on_every_block_index(tiny, family):
    checkpoint = tiny(family)
    assert [site.block for site in bridge.regulation_sites(checkpoint.model)] == EXPECTED_LAYERS[family]
    depth = 2 if family == "sdxl" else 1
    keys = {(*block, index) for block in EXPECTED_LAYERS[family] for index in range(depth)}
    patches = attn2_patches(regulated(checkpoint))
    assert set(patches) == keys
    assert all(isinstance(patch, bridge.RegulationPatch) for patch in patches.values())


def test_node_is_registered_with_tooltips_and_the_first_versions_id_keeps_its_step_count():
    node = nodes.NODE_CLASS_MAPPINGS["AG_AttentionRegulationV2"]
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS["AG_AttentionRegulationV2"] == "Attention Regulation"
    inputs = node.INPUT_TYPES()["required"]
    assert list(inputs) == ["model", "tokens", "edit_percent", "iterations", "mode"]
    assert all(options[1]["tooltip"] for options in inputs.values())
    assert (inputs["edit_percent"][1]["default"], inputs["iterations"][1]["default"]) == (50.0, 20)
    assert node.RETURN_TYPES == ("MODEL",) and node.DESCRIPTION
    old = nodes.NODE_CLASS_MAPPINGS["AG_AttentionRegulation"]  # saved workflows name it with [edit_steps, ...]
    assert list(old.INPUT_TYPES()["required"]) == ["model", "tokens", "edit_steps", "iterations", "mode"]
    assert old.DEPRECATED and "deprecated" in nodes.NODE_DISPLAY_NAME_MAPPINGS["AG_AttentionRegulation"]


def test_edit_raises_the_weakest_subjects_peak_towards_the_target(tiny):
    """Same seed, with and without the edit: in every edited layer call the weakest subject's 90th-percentile
    attention rises towards 0.9, and edited rows still sum to 1."""
    checkpoint = tiny("sdxl")
    subjects = subject_tokens(checkpoint).subject_positions
    plain_log, regulated_log, events = [], [], []
    ksample(with_other_pack(checkpoint.model, plain_log), checkpoint)
    ksample(regulated(checkpoint, events.append, with_other_pack(checkpoint.model, regulated_log), edit_steps=1),
            checkpoint)
    layers = [(*block, index) for block in EXPECTED_LAYERS["sdxl"] for index in range(2)]
    assert [(event.layer, event.step) for event in events] == [(layer, 0) for layer in layers]  # stops after step 0
    plain = {layer: probabilities for layer, probabilities in plain_log[:len(layers)]}  # step 0
    first = events[0]
    torch.testing.assert_close(first.before, plain[first.layer], rtol=0, atol=1e-6)  # same inputs before the edit
    for event in events:
        unedited, edited = subject_peak(plain[event.layer], subjects), subject_peak(event.after, subjects)
        weakest = unedited.argmin(0)
        before, after = unedited.gather(0, weakest[None]), edited.gather(0, weakest[None])
        assert (after > before + 0.05).all(), (event.layer, before, after)
        assert ((after - 0.9).abs() < (before - 0.9).abs()).all()
        torch.testing.assert_close(event.after.sum(-1), torch.ones_like(event.after[..., 0]), rtol=0, atol=1e-5)


def test_reference_mode_restores_start_and_end_token_attention(tiny):
    checkpoint = tiny("sdxl")
    events = []
    ksample(regulated(checkpoint, events.append, mode="reference", edit_steps=1, iterations=5), checkpoint, steps=1)
    eos = subject_tokens(checkpoint).pieces.index("<|endoftext|>")
    assert events
    for event in events:
        for column in (0, eos):
            torch.testing.assert_close(event.after[..., column], event.before[..., column], rtol=0, atol=1e-6)
        assert event.after.sum(-1).max() > 1.001  # rows no longer sum to 1, as coded (docs/methods.md AR-SOT-EOT)


def test_sd1_edits_its_16x16_layers(tiny):
    checkpoint = tiny("sd1")
    events = []
    latent = ksample(regulated(checkpoint, events.append, edit_steps=1, iterations=5), checkpoint, steps=1, cfg=1.0)
    assert [(event.layer, event.height, event.width) for event in events] == [
        ((*block, 0), 16, 16) for block in EXPECTED_LAYERS["sd1"]
    ]
    assert torch.isfinite(latent).all()


def test_off_is_bit_identical_to_the_stock_ksampler(tiny):
    checkpoint = tiny("sdxl")
    node = regulation_node.AttentionRegulation()
    (off,) = node.apply(checkpoint.model, subject_tokens(checkpoint), edit_percent=0.0, iterations=20, mode="default")
    assert not attn2_patches(off)
    plain = ksample(checkpoint.model, checkpoint)
    assert torch.equal(ksample(off, checkpoint), plain)
    (on,) = node.apply(checkpoint.model, subject_tokens(checkpoint), edit_percent=50.0, iterations=2, mode="default")
    assert not torch.allclose(ksample(on, checkpoint), plain, atol=1e-3)


def test_input_model_is_not_mutated(tiny):
    checkpoint = tiny("sdxl")
    options_before = repr(checkpoint.model.model_options)
    wrappers_before = repr(getattr(checkpoint.model, "wrappers", None))
    plain = ksample(checkpoint.model, checkpoint)
    ksample(regulated(checkpoint, edit_steps=2, iterations=2), checkpoint)
    assert repr(checkpoint.model.model_options) == options_before
    assert repr(getattr(checkpoint.model, "wrappers", None)) == wrappers_before
    assert torch.equal(ksample(checkpoint.model, checkpoint), plain)


def test_each_run_starts_fresh(tiny):
    checkpoint = tiny("sdxl")
    model = regulated(checkpoint, edit_steps=2, iterations=2)
    first = ksample(model, checkpoint, seed=3)
    ksample(model, checkpoint, seed=4, steps=3)
    assert torch.equal(ksample(model, checkpoint, seed=3), first)


# heun's corrector evaluates the model at the next step's noise level after reporting its step: it belongs to the
# step it corrects, as for latent guidance; the 2024 host, which has no step reports, counts it as the next step.
HEUN_STEPS = [0, 0, 1] if IS_CURRENT_HOST else [0, 1, 1]


@pytest.mark.parametrize("sampler,steps", [("euler", [0, 1]), ("heun", HEUN_STEPS), ("dpmpp_2m", [0, 1])])
def test_step_index_and_ema_partner_follow_the_steps_per_layer(tiny, sampler, steps):
    """A layer's later calls blend with its state from the previous step; a second call within a step blends with
    the same partner as the step's first call."""
    checkpoint = tiny("sdxl")
    events = []
    ksample(regulated(checkpoint, events.append, edit_steps=5, iterations=2), checkpoint, sampler=sampler)
    layers = {event.layer for event in events}
    assert len(layers) == 10
    for layer in layers:
        calls = [event for event in events if event.layer == layer]
        assert [event.step for event in calls] == steps
        for index, call in enumerate(calls[1:], start=1):
            earlier = calls[index - 1]
            expected = earlier.diagnostics.ema_partner if earlier.step == call.step else earlier.state
            assert torch.equal(call.diagnostics.ema_partner, expected)


def test_batch_images_each_get_their_own_bias(tiny):
    checkpoint = tiny("sdxl")
    single, pair = [], []
    ksample(regulated(checkpoint, single.append, edit_steps=1, iterations=5), checkpoint, steps=1)
    ksample(regulated(checkpoint, pair.append, edit_steps=1, iterations=5), checkpoint, steps=1, batch=2)
    assert pair[0].after.shape[0] == 2
    torch.testing.assert_close(pair[0].after[:1], single[0].after, rtol=0, atol=1e-4)  # independent of its batch
    assert not torch.allclose(pair[0].after[0], pair[0].after[1], atol=1e-3)


def test_composes_with_the_recorder(tiny):
    checkpoint = tiny("sdxl")
    reference = sample_custom(regulated(checkpoint, edit_steps=1, iterations=5), checkpoint.clip,
                              comfy.samplers.sampler_object("euler"), width=SIZE, height=SIZE)
    for model in (with_recorder(regulated(checkpoint, edit_steps=1, iterations=5)),
                  regulated(checkpoint, model=with_recorder(checkpoint.model), edit_steps=1, iterations=5)):
        record = []
        out = sample_custom(model, checkpoint.clip, recording_sampler("euler", record), width=SIZE, height=SIZE)
        assert [step.maps.shape for step in record] == [(1, 16, 16, 77)] * 2
        torch.testing.assert_close(out, reference, rtol=0, atol=1e-5 * reference.abs().max().item())


def test_a_recorder_records_the_edited_attention_once(tiny):
    """Around a regulated layer, a recorder records the attention the layer used (the edited one), once, also when
    another recorder sits inside the regulation."""
    spec = regulation_run.RegulationSpec.from_tokens(subject_tokens(tiny("sdxl")),
                                             regulation.RegulationConfig(edit_steps=1, iterations=3))
    heads, width = 2, 16
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, tokens, heads * 8, generator=generator) for tokens in (width * width, 77, 77))

    def record(patch):
        store = ag("guidance.capture.store").AttentionStore(77)
        run = regulation_run.RegulationRun(0, lambda sigma: 0, lambda sigma: True)
        options = {"cond_or_uncond": [1, 0], "original_shape": [2, 4, 4 * width, 4 * width], "n_heads": heads,
                   "sigmas": torch.tensor([5.0, 5.0]), "block": ("input", 7), "block_index": 0,
                   recorder.STORE_KEY: store, bridge_regulation.REGULATION_RUN_KEY: run}
        with recorder.recording(store):
            out = patch(q, k, v, options)
        return out, store.aggregate(4)

    events = []
    edited_out, edited_maps = record(recorder.RecorderPatch(4, bridge.RegulationPatch(4, spec, events.append)))
    [event] = events
    torch.testing.assert_close(edited_maps, event.after.mean(dim=1).reshape(1, width, width, 77), rtol=0, atol=1e-7)
    assert (event.after - event.before).abs().max() > 1e-2  # the edit is visible in what is recorded
    nested_out, nested_maps = record(recorder.RecorderPatch(4, bridge.RegulationPatch(4, spec, None,
                                                                                     recorder.RecorderPatch(4))))
    torch.testing.assert_close(nested_maps, edited_maps, rtol=0, atol=1e-7)
    torch.testing.assert_close(nested_out, edited_out, rtol=1e-5, atol=1e-6)  # (P_edited − P) V added to P V


def test_composes_with_another_packs_patch_on_the_same_layer(tiny):
    checkpoint = tiny("sdxl")
    log, events = [], []
    alone = ksample(regulated(checkpoint, edit_steps=1, iterations=5), checkpoint)
    composed = ksample(regulated(checkpoint, events.append, with_other_pack(checkpoint.model, log), edit_steps=1,
                                 iterations=5), checkpoint)
    calls = 2 * 10  # every call of the 10 regulated layers in 2 steps still reaches the other pack's patch
    assert len(log) == calls and len(events) == 10
    torch.testing.assert_close(composed, alone, rtol=0, atol=1e-5 * alone.abs().max().item())
    reapplied = regulated(checkpoint, model=regulated(checkpoint, model=with_other_pack(checkpoint.model, log)))
    assert all(not isinstance(patch.wrapped, bridge.RegulationPatch) and patch.wrapped is not None
               for patch in attn2_patches(reapplied).values())


def test_repeated_negative_context_is_edited_and_a_foreign_prompt_is_refused(tiny):
    checkpoint = tiny("sdxl")
    long_prompt = " ".join(["cat"] * 80)
    events = []
    ksample(regulated(checkpoint, events.append, edit_steps=1, iterations=1), checkpoint, steps=1,
            negative=long_prompt)  # the positive context is repeated to the negative's 154 tokens
    assert events and events[0].after.shape[-1] == 77
    # the current host checks the prompt before sampling, the 2024 host in the patch
    with pytest.raises(ValueError, match="it has 154 tokens, the tokens' prompt 77|tokens come from a prompt of 77 "
                                         "tokens, but the positive conditioning has 154"):
        ksample(regulated(checkpoint, edit_steps=1, iterations=1), checkpoint, steps=1, prompt=long_prompt)


def test_small_images_are_left_alone_and_logged(tiny, caplog):
    checkpoint = tiny("sdxl")
    events = []
    with caplog.at_level(logging.WARNING, logger="attention_guidance"):
        out = ksample(regulated(checkpoint, events.append, edit_steps=2), checkpoint, size=256)
    assert not events
    assert sum("edits nothing" in record.message and "8x8" in record.message for record in caplog.records) == 1
    torch.testing.assert_close(out, ksample(checkpoint.model, checkpoint, size=256), rtol=0, atol=1e-5)


def test_unsupported_model_error_comes_from_the_bridge(tiny):
    dit_like = SimpleNamespace(model=SimpleNamespace(diffusion_model=torch.nn.Linear(2, 2)))
    refusal = "input 'model': this model is a Linear transformer, which Attention Regulation does not read"
    with pytest.raises(common.NodeInputError, match=refusal) as raised:
        regulation_node.AttentionRegulation().apply(dit_like, subject_tokens(tiny("sdxl")), 25, 20, "default")
    assert isinstance(raised.value.__cause__, bridge.UnsupportedModelError)


def test_only_conditional_rows_are_edited_each_branch_with_its_own_memory():
    """A CFG call with two positive conds (``[uncond, cond, cond]``) at 16x16, then a call after the stop step."""
    config = regulation.RegulationConfig(edit_steps=1, iterations=2)
    events = []
    patch = bridge.RegulationPatch(4, regulation_run.RegulationSpec((2, 5), 6, 77, config), events.append)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, length, 16, generator=generator) for length in (256, 77, 77))
    step = 0
    run = regulation_run.RegulationRun(0, lambda sigma: step, lambda sigma: step < 1)
    options = {bridge_regulation.REGULATION_RUN_KEY: run, "sigmas": torch.full((3,), 5.0), "cond_or_uncond": [1, 0, 0],
               "original_shape": [3, 4, 64, 64], "block": ("input", 7), "block_index": 0, "n_heads": 2}
    with torch.inference_mode():
        out, plain = patch(q, k, v, options), compat.host_attention(q, k, v, options)
        torch.testing.assert_close(out[0], plain[0], rtol=0, atol=1e-6)
        assert (out[1:] - plain[1:]).abs().amax(dim=(1, 2)).min() > 1e-3
        assert [(event.branch, event.step, event.after.shape) for event in events] == [
            (0, 0, (1, 2, 256, 77)), (1, 0, (1, 2, 256, 77))]
        first, second = (run.partner((("input", 7, 0), branch, 16, 16), 1) for branch in (0, 1))
        assert first is not None and second is not None and not torch.equal(first, second)
        step = 1  # past the stop step
        assert torch.equal(patch(q, k, v, options), plain)
        assert len(events) == 2
        step = 0
        assert torch.equal(patch(q, k, v, {**options, bridge_regulation.REGULATION_RUN_KEY: None}), plain)  # no run: as is


def test_run_memory_is_keyed_by_layer_and_step():
    run = regulation_run.RegulationRun(7, lambda sigma: 0, lambda sigma: True)
    a, b = ("input", 7, 0), ("output", 0, 1)
    state_a0, state_b0, state_a1 = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    assert run.partner(a, 0) is None
    run.remember(a, 0, None, state_a0)
    run.remember(b, 0, None, state_b0)
    assert run.partner(a, 1) is state_a0 and run.partner(b, 1) is state_b0
    run.remember(a, 1, state_a0, state_a1)
    assert run.partner(a, 1) is state_a0  # a second call at the same step blends with the same partner
    assert run.partner(a, 2) is state_a1
    draw = torch.rand(3, generator=run.generator(0, a, 0, 0))
    other_run = regulation_run.RegulationRun(7, lambda sigma: 0, lambda sigma: True)
    assert torch.equal(draw, torch.rand(3, generator=other_run.generator(0, a, 0, 0)))
    assert not torch.equal(draw, torch.rand(3, generator=run.generator(0, b, 0, 0)))


def test_the_2024_hosts_runs_count_noise_levels_and_restart_when_it_rises(tiny):
    runs = compat.NoiseLevelRuns(tiny("sdxl").model, regulation.RegulationConfig(edit_steps=2))
    first = runs.run_at(14.6)
    first.remember(("input", 7, 0), 0, None, torch.zeros(1))
    steps = []
    for sigma in (14.6, 5.0, 5.0, 1.0):
        run = runs.run_at(sigma)
        steps.append(run.step_of(sigma))
    assert steps == [0, 1, 1, 2] and run is first
    again = runs.run_at(14.6)  # the noise level rose: a new run, with no memory of the last one
    assert again is not first and again.step_of(14.6) == 0 and again.partner(("input", 7, 0), 1) is None


@pytest.mark.parametrize("steps,edited", [(4, [0, 1]), (2, [0])])
def test_edit_percent_edits_that_share_of_the_steps(tiny, steps, edited):
    """50 % of the steps, as the other methods count them. The 2024 host, which does not show a model the run's step
    count, places the window by noise level; with the normal scheduler it edits the same steps here."""
    checkpoint = tiny("sdxl")
    events = []
    ksample(regulated(checkpoint, events.append, edit_percent=50.0, iterations=1), checkpoint, steps=steps)
    assert sorted({event.step for event in events}) == edited
    assert len(events) == 10 * len(edited)  # every regulated layer on every edited step


def test_a_regulated_prediction_differs_at_an_edited_step_where_the_layers_reach_the_output(tiny):
    """A one-step stock KSampler returns the model's prediction at step 0. The tiny SD1.x model's 16x16 layers feed
    its output, so the edit changes the prediction. A UNet whose transformer output projections are zero (a freshly
    initialised LDM UNet, zero_module) ignores its cross-attention: the edit runs, and the prediction stays bitwise
    the stock one, whatever the attention."""
    checkpoint = tiny("sd1")
    events = []
    plain = ksample(checkpoint.model, checkpoint, steps=1)
    edited = ksample(regulated(checkpoint, events.append, edit_percent=100.0, iterations=5), checkpoint, steps=1)
    assert len(events) == 5
    assert (edited - plain).abs().max() > 0.01 * plain.abs().max()

    blind = tiny_models.tiny_unet("sd1", torch.Generator().manual_seed(tiny_models.SEED))
    with torch.inference_mode():
        for name, parameter in blind.model.diffusion_model.named_parameters():
            if name.endswith(("proj_out.weight", "proj_out.bias")):
                parameter.zero_()
    blind_events = []
    blind_plain = ksample(blind, checkpoint, steps=1)
    blind_edited = ksample(regulated(checkpoint, blind_events.append, model=blind, edit_percent=100.0, iterations=5),
                           checkpoint, steps=1)
    assert len(blind_events) == 5 and (blind_events[0].after - blind_events[0].before).abs().max() > 0.01
    assert torch.equal(blind_edited, blind_plain)


@pytest.mark.skipif(not IS_CURRENT_HOST, reason="the 2024 host runs no per-run hook in which a model patch could see "
                                                "the positive conditioning: it checks the token count only")
def test_tokens_of_another_prompt_are_refused_naming_the_tokens_input(tiny):
    checkpoint = tiny("sdxl")
    with torch.inference_mode():
        dog = nodes.NODE_CLASS_MAPPINGS["AG_TextEncodeWithTokens"]().encode(checkpoint.clip, "a dog and a frog",
                                                                             "dog, frog")["result"][1]
    model = regulation_node.AttentionRegulation().apply(checkpoint.model, dog, 50.0, 2, "default")[0]
    with pytest.raises(ValueError, match="Attention Regulation: the subject tokens were made from 'a dog and a frog'"
                                         ".*from token position 2 on.*tokens input"):
        ksample(model, checkpoint, steps=1)


@pytest.mark.skipif(not IS_CURRENT_HOST, reason="the 2024 host does not tell a model patch which positive entry a "
                                                "batch chunk belongs to: it edits every positive entry")
def test_only_the_subject_prompts_entry_of_a_combined_positive_is_edited(tiny):
    checkpoint = tiny("sdxl")
    with torch.inference_mode():
        cat, tokens = nodes.NODE_CLASS_MAPPINGS["AG_TextEncodeWithTokens"]().encode(checkpoint.clip, PROMPT,
                                                                                      "cat, frog")["result"]
        positive = nodes.ConditioningCombine().combine(encode(checkpoint.clip, "a watercolor landscape"), cat)[0]
        latent = nodes.EmptyLatentImage().generate(SIZE, SIZE, 1)[0]
        events = []
        spec = regulation_run.RegulationSpec.from_tokens(tokens, regulation.RegulationConfig(iterations=1))
        model = bridge.with_regulation(checkpoint.model, spec, events.append)
        nodes.KSampler().sample(model, 3, 1, 7.0, "euler", "normal", positive, encode(checkpoint.clip, ""), latent)
    assert len(events) == 10 and {event.branch for event in events} == {0}  # one entry per layer call, not two
