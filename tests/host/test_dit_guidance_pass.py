"""The guidance pass on diffusion transformers: gradients of a loss on the recorded maps (text-normalised and joint)
with respect to the latent against central finite differences in fp64, in every block mode; the trap it avoids
(the stock FLUX block under checkpointing); the early stop; what autograd keeps."""
import types

import pytest
import torch

from devkit import comfy_host
from devkit.comfy_host import ag

pytestmark = pytest.mark.skipif(not comfy_host.has_dit(), reason=comfy_host.NO_DIT_REASON)

PROMPT = "a red cube and a blue sphere"
LATENT = (1, 16, 16, 16)  # token grid 8x8, maps 4x4


def _modules():
    return (ag("guidance.comfy_bridge.dit.capture"), ag("guidance.comfy_bridge.dit.blocks"),
            ag("guidance.comfy_bridge.dit.families"), ag("guidance.capture.store"),
            ag("guidance.comfy_bridge.recorder"), ag("guidance.engine.update"))


class GuidedForward:
    """One family's diffusion model (fresh, normal tensors, ``dtype``) called directly with the pack's guidance-pass
    options: ``loss(x)`` is a fixed random weighting of the recorded text-normalised and joint maps."""

    def __init__(self, family: str, conditioning: list, dtype: torch.dtype, mode: str | None = None,
                 blocks: tuple[int, ...] | None = None, model_options: dict | None = None) -> None:
        from devkit.tiny_dit import tiny_dit_model

        capture, _, families, store_module, _, _ = _modules()
        self.family = family
        self.model = tiny_dit_model(family).model.diffusion_model.to(dtype)
        self.model.dtype = dtype
        if hasattr(self.model, "pe_embedder"):  # the host computes RoPE in fp32: bring it to the model's precision
            self.model.pe_embedder.register_forward_hook(lambda module, inputs, output: output.to(dtype))
        found = families.dit_family(self.model)
        self.context = conditioning[0][0].to(dtype)
        self.pooled = conditioning[0][1].get("pooled_output")
        self.pooled = None if self.pooled is None else self.pooled.to(dtype)
        dit = capture.DiTCapture(self.model, found, (8, 8), None, blocks)
        self.store = store_module.AttentionStore(self.context.shape[1], guidance_pass=True)
        spec = types.SimpleNamespace(levels=(), joint_attention=True)
        self.plan = dit.guidance_plan(model_options or {}, self.store, spec, block_mode=mode)
        generator = torch.Generator().manual_seed(7)
        self.weights = [torch.rand(1, 4, 4, self.context.shape[1], generator=generator, dtype=dtype) for _ in "tj"]

    def run(self, x: torch.Tensor) -> None:
        options = self.plan.options["transformer_options"]
        timestep = torch.full((x.shape[0],), 0.7 if self.family != "sd3" else 700.0, dtype=x.dtype)
        if self.family == "flux":
            self.model(x, timestep, self.context, y=self.pooled, guidance=torch.full_like(timestep, 3.5),
                       transformer_options=options)
        elif self.family == "chroma":
            self.model(x, timestep, self.context, guidance=torch.zeros_like(timestep), transformer_options=options)
        else:
            self.model(x, timestep, context=self.context, y=self.pooled, transformer_options=options)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        recorder = _modules()[4]
        self.store.clear()
        self.store.expected_rows = x.shape[0] * self.plan.calls_per_image
        with recorder.recording(self.store):
            try:
                self.run(x)
            except recorder.ForwardComplete:
                pass
        return ((self.store.aggregate(4) * self.weights[0]).sum()
                + 100 * (self.store.aggregate_joint(4) * self.weights[1]).sum())


def conditioning_for(tiny_dit, family: str) -> list:
    import nodes

    with torch.inference_mode():
        encoded = nodes.CLIPTextEncode().encode(tiny_dit(family).clip, PROMPT)[0]
    return [[encoded[0][0].clone(), {key: value.clone() for key, value in encoded[0][1].items()
                                     if isinstance(value, torch.Tensor)}]]


def gradient_and_difference(forward: GuidedForward, guard: bool = False, epsilon: float = 1e-4
                            ) -> tuple[float, float]:
    """``(∇L·d, (L(x + εd) - L(x - εd)) / 2ε)`` at a fixed latent and direction."""
    update = _modules()[5]
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(LATENT, generator=generator, dtype=torch.float64)
    direction = torch.randn(LATENT, generator=generator, dtype=torch.float64)
    latent = x.clone().requires_grad_(True)
    with update.SavedTensorGuard(guard).applied():
        loss = forward.loss(latent)
    (gradient,) = torch.autograd.grad(loss, latent)
    with torch.no_grad():
        difference = (forward.loss(x + epsilon * direction) - forward.loss(x - epsilon * direction)) / (2 * epsilon)
    return float((gradient * direction).sum()), float(difference)


def relative_error(pair: tuple[float, float]) -> float:
    return abs(pair[0] - pair[1]) / abs(pair[1])


@pytest.mark.parametrize("family,mode,guard", [
    ("flux", "out_of_place", False),  # plain: the out-of-place block, no checkpointing, no guard
    ("flux", "stock", True),  # the stock block with the saved-tensor guard
    ("flux", "checkpointed", False),  # the default: out-of-place under non-reentrant checkpointing
    ("chroma", "stock", True),
    ("chroma", "checkpointed", False),
    ("sd3", "stock", False),  # the default: the stock block, which the host checkpoints on the replace path
    ("sd35_medium", "stock", False),
])
def test_gradient_through_two_recorded_blocks_matches_finite_differences(tiny_dit, family, mode, guard):
    forward = GuidedForward(family, conditioning_for(tiny_dit, family), torch.float64, mode)
    assert forward.plan.calls_per_image == 2
    pair = gradient_and_difference(forward, guard)
    assert relative_error(pair) < 1e-6, pair


def test_stock_flux_block_needs_the_guard(tiny_dit):
    forward = GuidedForward("flux", conditioning_for(tiny_dit, "flux"), torch.float64, "stock")
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        gradient_and_difference(forward, guard=False)


def test_a_checkpointed_stock_flux_block_is_caught(tiny_dit):
    """The trap the out-of-place copy avoids: the stock block under checkpointing (another pack's replace patch
    that checkpoints whatever block it gets) gives a wrong gradient, which the finite differences expose."""
    import torch.utils.checkpoint

    def checkpointing_patch(args, extra):
        return torch.utils.checkpoint.checkpoint(extra["original_block"], args, use_reentrant=False)

    options = {"transformer_options": {"patches_replace": {"dit": {("double_block", i): checkpointing_patch
                                                                   for i in range(2)}}}}
    forward = GuidedForward("flux", conditioning_for(tiny_dit, "flux"), torch.float64, "stock",
                            model_options=options)
    assert relative_error(gradient_and_difference(forward, guard=True)) > 1e-2
    # the pack's own block under the same checkpointing patch is exact
    exact = GuidedForward("flux", conditioning_for(tiny_dit, "flux"), torch.float64, "out_of_place",
                          model_options=options)
    assert relative_error(gradient_and_difference(exact)) < 1e-6


def saved_bytes(forward: GuidedForward) -> int:
    """Bytes autograd keeps for backward in one guidance pass (a saved_tensors_hooks counter)."""
    saved = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    latent = torch.randn(LATENT, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward.loss(latent)
    return sum(saved)


@pytest.mark.parametrize("family,mode", [("flux", "checkpointed"), ("chroma", "checkpointed"), ("sd3", "stock")])
def test_guidance_pass_keeps_block_inputs_not_block_activations(tiny_dit, family, mode):
    """Each further recorded block adds only its inputs to what autograd keeps (image and text hidden states, and
    FLUX's RoPE table), where the same block without checkpointing keeps all its activations."""
    conditioning = conditioning_for(tiny_dit, family)

    def added_by_block_1(block_mode: str) -> int:
        one, two = (GuidedForward(family, conditioning, torch.float32, block_mode, blocks) for blocks in ((0,), (0, 1)))
        return saved_bytes(two) - saved_bytes(one)

    hidden = {"flux": 64, "chroma": 64, "sd3": 128}[family]
    block_inputs = (64 + conditioning[0][0].shape[1]) * hidden * 4  # fp32 image + text hidden states
    assert added_by_block_1(mode) <= 1.6 * block_inputs
    if family != "sd3":  # SD3's replace path is always checkpointed by the host
        assert added_by_block_1("out_of_place") >= 20 * block_inputs


def test_early_stop_runs_no_block_past_the_deepest_recorded_one(tiny_dit):
    """Through the Guided KSampler: in guidance passes reading block 0 only, FLUX's double block 1 and its single
    blocks never run (sampling passes run everything)."""
    import nodes

    spec_module, text = ag("guidance.engine.spec"), ag("guidance.comfy_bridge.text")
    attend_excite, schedule = ag("guidance.methods.attend_excite"), ag("guidance.engine.schedule")
    checkpoint = tiny_dit("flux")
    tokens = text.subject_tokens(checkpoint.clip, PROMPT, "cube, sphere")
    spec = attend_excite.attend_and_excite(tokens, schedule.GuidanceSchedule(refinement_points=()))
    spec = spec_module.GuidanceSpec(spec.tokens, spec.terms, spec.schedules, dit_blocks=(0,))
    diffusion_model = checkpoint.model.model.diffusion_model
    watched = {"double 0": diffusion_model.double_blocks[0].img_attn.qkv,
               "double 1": diffusion_model.double_blocks[1].img_attn.qkv,
               **{f"single {i}": block.linear1 for i, block in enumerate(diffusion_model.single_blocks)},
               "final": diffusion_model.final_layer.linear}
    counts = {"guidance": dict.fromkeys(watched, 0), "sampling": dict.fromkeys(watched, 0)}
    phase = ["sampling"]

    class Phases(ag("guidance.engine.update").GuidanceObserver):
        def pass_started(self, context):
            phase[0] = "guidance"

        def pass_finished(self, context, result):
            phase[0] = "sampling"

    def counter(name):
        def count(module, inputs):
            counts[phase[0]][name] += 1
        return count

    handles = [module.register_forward_pre_hook(counter(name)) for name, module in watched.items()]
    try:
        with torch.inference_mode():
            positive = nodes.CLIPTextEncode().encode(checkpoint.clip, PROMPT)[0]
            latent = nodes.EmptyLatentImage().generate(128, 128, 1)[0]
        ag("guidance.comfy_bridge.doors").guided_ksample(checkpoint.model, 1, 2, 1.0, "euler", "simple", positive,
                                                          positive, latent, 1.0, spec, observer=Phases())
    finally:
        for handle in handles:
            handle.remove()
    assert counts["guidance"]["double 0"] >= 1
    assert {name: count for name, count in counts["guidance"].items() if name != "double 0"} == \
        dict.fromkeys([name for name in watched if name != "double 0"], 0)
    assert all(count >= 2 for count in counts["sampling"].values())


def test_an_unknown_double_block_falls_back_to_the_stock_block_and_the_guard(tiny_dit):
    """A double block this host's out-of-place copy does not know (here: a subclass) runs as it is, without
    checkpointing; the engine's guidance pass then meets the in-place failure, turns the saved-tensor guard on and
    gets the exact gradient."""
    _, blocks, _, _, _, update = _modules()
    forward = GuidedForward("flux", conditioning_for(tiny_dit, "flux"), torch.float64)
    for block in forward.model.double_blocks:
        block.__class__ = type("ChangedDoubleBlock", (type(block),), {})
    assert not blocks.supports_out_of_place(forward.model.double_blocks[0])
    engine_spec = ag("guidance.engine.spec")
    level_maps = ag("guidance.engine.spec").LevelMaps

    class Weighted:
        weight, levels, joint_attention = 1.0, (), True

        def evaluate(self, inputs):
            loss = (inputs.maps * forward.weights[0]).sum() + 100 * (inputs.joint_maps * forward.weights[1]).sum()
            return types.SimpleNamespace(loss=loss.reshape(1))

    def engine_forward(x):
        forward.loss(x)
        return {4: level_maps(forward.store.aggregate(4), forward.store.head_count(4), forward.store.aggregate_joint(4))}

    schedule = ag("guidance.engine.schedule").GuidanceSchedule(refinement_points=())
    spec = engine_spec.GuidanceSpec(types.SimpleNamespace(), (Weighted(),), (schedule,))
    guard = update.SavedTensorGuard()
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(LATENT, generator=generator, dtype=torch.float64)
    direction = torch.randn(LATENT, generator=generator, dtype=torch.float64)
    result = update.guidance_pass(x, spec, engine_forward, update.StepContext(0, 10, 0.7), guard)
    assert guard.enabled
    with torch.no_grad():
        difference = (forward.loss(x + 1e-4 * direction) - forward.loss(x - 1e-4 * direction)) / 2e-4
    assert relative_error((float((result.grad * direction).sum()), float(difference))) < 1e-6


@pytest.mark.parametrize("family,mode", [("flux", "checkpointed"), ("sd3", "stock")])
def test_checkpoint_replays_during_backward_are_computed_not_recorded(tiny_dit, family, mode):
    """The backward of a checkpointed block runs the block, and so the pack's override, again: the maps are
    recomputed (so checkpointing sees the same operations) and the store is left as the forward filled it."""
    calls = []

    def counting(func, *args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return func(*args, **kwargs)

    forward = GuidedForward(family, conditioning_for(tiny_dit, family), torch.float32, mode,
                            model_options={"transformer_options": {"optimized_attention_override": counting}})
    latent = torch.randn(LATENT, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    loss = forward.loss(latent)
    forward_calls, maps = len(calls), forward.store.aggregate(4).detach().clone()
    loss.backward()
    assert len(calls) > forward_calls  # the blocks ran again during the backward
    assert torch.equal(forward.store.aggregate(4).detach(), maps) and forward.store.head_count(4) == 2 * \
        {"flux": 4, "sd3": 2}[family]
