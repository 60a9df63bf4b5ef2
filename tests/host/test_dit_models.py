"""Tiny FLUX, Chroma, SD3 and SD3.5-medium models in the dev kit: the host's own classes, sampled and decoded by the
stock nodes; the family the pack reads from each model's classes; a clear error for other transformers."""
import pytest
import torch

import nodes
from devkit import comfy_host
from devkit.comfy_host import ag

pytestmark = pytest.mark.skipif(not comfy_host.has_dit(), reason=comfy_host.NO_DIT_REASON)

FAMILIES = ("flux", "chroma", "sd3", "sd35_medium")


def _host_classes():
    import comfy.ldm.chroma.model
    import comfy.ldm.flux.model
    import comfy.ldm.modules.diffusionmodules.mmdit

    return {"flux": comfy.ldm.flux.model.Flux, "chroma": comfy.ldm.chroma.model.Chroma,
            "sd3": comfy.ldm.modules.diffusionmodules.mmdit.MMDiT,
            "sd35_medium": comfy.ldm.modules.diffusionmodules.mmdit.MMDiT}


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_dit_uses_the_host_classes_as_loaded(family):
    import comfy.model_sampling
    from devkit.tiny_dit import tiny_dit_checkpoint

    checkpoint = tiny_dit_checkpoint(family)  # a fresh one: guidance makes the shared ones' weights autograd-ready
    diffusion_model = checkpoint.model.model.diffusion_model
    assert isinstance(diffusion_model, _host_classes()[family])
    assert isinstance(checkpoint.model.model.model_sampling, comfy.model_sampling.CONST)
    assert all(parameter.is_inference() for parameter in diffusion_model.parameters())
    assert checkpoint.model.model.latent_format.latent_channels == 16
    heads = {"flux": 4, "chroma": 4, "sd3": 2, "sd35_medium": 2}[family]
    blocks = diffusion_model.joint_blocks if family.startswith("sd3") else diffusion_model.double_blocks
    attention = blocks[0].x_block.attn if family.startswith("sd3") else blocks[0]
    assert len(blocks) == 2 and attention.num_heads == heads
    if family == "sd35_medium":
        assert blocks[0].x_block.x_block_self_attn and not blocks[1].x_block.x_block_self_attn


@pytest.mark.parametrize("family", FAMILIES)
def test_stock_nodes_encode_sample_and_decode(tiny_dit, family):
    checkpoint = tiny_dit(family)
    with torch.inference_mode():
        positive = nodes.CLIPTextEncode().encode(checkpoint.clip, "a red cube and a blue sphere")[0]
        negative = nodes.CLIPTextEncode().encode(checkpoint.clip, "")[0]
        latent = nodes.EmptyLatentImage().generate(64, 64, 1)[0]
        samples = nodes.KSampler().sample(checkpoint.model, 3, 2, 3.5, "euler", "simple", positive, negative,
                                          latent)[0]["samples"]
        image = nodes.VAEDecode().decode(checkpoint.vae, {"samples": samples})[0]
    context = {"flux": (1, 256, 64), "chroma": (1, 12, 64), "sd3": (1, 154, 4096), "sd35_medium": (1, 154, 4096)}
    assert tuple(positive[0][0].shape) == context[family]
    assert samples.shape == (1, 16, 8, 8) and torch.isfinite(samples).all()
    assert image.shape == (1, 64, 64, 3)


def test_family_is_read_from_the_model_classes(tiny_dit, tiny):
    families = ag("guidance.comfy_bridge.dit.families")
    read = {family: families.dit_family(tiny_dit(family).model.model.diffusion_model) for family in FAMILIES}
    assert {family: (found.name, found.block, found.blocks) for family, found in read.items()} == {
        "flux": ("FLUX.1", "flux", 2), "chroma": ("Chroma", "chroma", 2), "sd3": ("SD3", "mmdit", 2),
        "sd35_medium": ("SD3", "mmdit", 2)}
    assert read["flux"].accepts(("t5",)) and not read["flux"].accepts(("clip",))
    assert read["sd3"].accepts(("clip", "t5")) and read["sd3"].accepts(("t5",))
    assert families.dit_family(tiny("sd1").model.model.diffusion_model) is None


def test_other_transformers_get_an_error_naming_the_supported_families(tiny_dit):
    from devkit.tiny_dit import tiny_dit_checkpoint

    capture = ag("guidance.comfy_bridge.capture")
    bridge = ag("guidance.comfy_bridge")
    aura = tiny_dit_checkpoint("auraflow")
    latent = torch.zeros(1, 4, 8, 8)
    with pytest.raises(bridge.UnsupportedModelError,
                       match=r"MMDiT transformer, which attention guidance does not read; it supports SD1\.x, SD2\.x "
                             r"and SDXL .*FLUX\.1 \(dev, schnell\) and Chroma, SD3 and SD3\.5"):
        capture.attention_capture(aura.model.model, latent, None, None)
