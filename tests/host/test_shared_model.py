"""The one change guidance makes to the model every clone shares: its weights, loaded by ComfyUI as inference
tensors, become ordinary tensors with the same values at the first guidance pass (autograd cannot use inference
tensors). Values never change, and a model with weight patches (a LoRA) samples guided with them and unpatches to
its own weights afterwards, with ComfyUI's own patch bookkeeping (README, "Batches" and "ControlNet")."""
import comfy.model_management
import torch

from devkit.comfy_host import ag
from devkit.sampling import sample_custom
from devkit.tiny_models import tiny_checkpoint

bridge = ag("guidance.comfy_bridge")
schedule_module = ag("guidance.engine.schedule")
attend_excite = ag("guidance.methods.attend_excite")
tokens_module = ag("guidance.subjects.tokens")

PROMPT = "a cat and a frog"
PATCHED = "diffusion_model.input_blocks.7.1.transformer_blocks.0.attn2.to_k.weight"


def guided(model, clip) -> torch.Tensor:
    tokens = tokens_module.map_subjects(PROMPT, bridge.prompt_tokens(clip, PROMPT), "cat, frog")
    spec = attend_excite.attend_and_excite(tokens, schedule_module.GuidanceSchedule(scale_factor=2000.0,
                                                                                    refinement_points=()))
    return sample_custom(model, clip, bridge.guided_sampler("euler", spec), steps=2, seed=5)


def test_a_weight_patched_model_samples_guided_and_unpatches_to_its_own_weights():
    checkpoint = tiny_checkpoint("sd1")  # its own copy: this test watches the first guidance pass on it
    model = checkpoint.model
    weights = model.model.state_dict()
    assert all(tensor.is_inference() for tensor in weights.values())  # as ComfyUI loads checkpoints
    before = {name: tensor.clone() for name, tensor in weights.items()}
    plain = guided(model, checkpoint.clip)

    lora = model.clone()
    difference = 0.5 * torch.randn(before[PATCHED].shape, generator=torch.Generator().manual_seed(0))
    assert lora.add_patches({PATCHED: (difference,)}, 1.0) == [PATCHED]
    patched = guided(lora, checkpoint.clip)
    comfy.model_management.unload_all_models()

    assert (patched - plain).abs().mean() > 1e-3  # the patch took part in the guided run
    after = model.model.state_dict()
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items())  # unpatched to its own values
    unet = {name: tensor for name, tensor in after.items() if name.startswith("diffusion_model.")}
    assert not any(tensor.is_inference() for tensor in unet.values())  # swapped once, at the first guidance pass
    torch.testing.assert_close(guided(model, checkpoint.clip), plain, rtol=0, atol=0)  # and samples as before
