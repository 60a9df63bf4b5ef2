"""Full-size SD1.5- and SDXL-shaped checkpoints (random weights, the real key names and shapes; ``devkit.full_size``)
through the stock ``CheckpointLoaderSimple``: the host's model detection recognises them, the guidance finds the
real layers, and SD1.5 samples guided at 512x512, reading the 16x16 layers, on CPU.

Marked ``full_size`` (``make test`` runs them; ``-m "not full_size"`` leaves them out): on this project's 2-core
machine they take minutes and GBs of RAM (README, "The test suite"). The checkpoints are written once into the host
cache (2.1 GB and 6.9 GB, fp16); each class loads its checkpoint once and unloads it before the next.
"""
import gc
import hashlib

import comfy.cli_args
import comfy.model_management
import comfy.supported_models
import pytest
import torch

import nodes
from devkit.comfy_host import ag
from devkit.full_size import full_size_checkpoint

bridge = ag("guidance.comfy_bridge")
doors = ag("guidance.comfy_bridge.doors")
schedule_module = ag("guidance.engine.schedule")
update = ag("guidance.engine.update")
attend_excite = ag("guidance.methods.attend_excite")
sites_module = ag("guidance.capture.sites")

pytestmark = pytest.mark.full_size
PROMPT, SUBJECTS = "a photo of a cat and a frog", "cat, frog"


def load(family: str):
    with torch.inference_mode():
        return nodes.CheckpointLoaderSimple().load_checkpoint(full_size_checkpoint(family))[:3]


def unload(*objects) -> None:
    del objects
    comfy.model_management.unload_all_models()
    gc.collect()


def weights_digest(model) -> str:
    """Every UNet weight's values (in float64 sums per tensor: cheap in memory, and any change shows)."""
    digest = hashlib.sha1()
    for name, tensor in model.model.diffusion_model.state_dict().items():
        digest.update(f"{name}:{tensor.double().sum().item()!r}:{tensor.double().abs().sum().item()!r}".encode())
    return digest.hexdigest()


def site_keys(model) -> list[tuple[str, int, int]]:
    return [(*site.block, site.depth) for site in bridge.guidance_sites(model)]


class TestSD15:
    @pytest.fixture(scope="class")
    def checkpoint(self):
        model, clip, vae = load("sd15")
        yield model, clip, vae
        unload(model, clip, vae)

    def test_the_stock_loader_recognises_it(self, checkpoint):
        model, clip, _ = checkpoint
        assert type(model.model.model_config) is comfy.supported_models.SD15
        assert model.model.diffusion_model.input_blocks[7][1].transformer_blocks[0].attn2.heads == 8
        assert site_keys(model) == [("input", 7, 1), ("input", 8, 1), ("output", 3, 1), ("output", 4, 1),
                                    ("output", 5, 1)]
        assert sites_module.map_size(64, 64, sites_module.GUIDANCE_LEVEL) == (16, 16)  # 512 px
        assert bridge.prompt_tokens(clip, PROMPT).pieces[5] == "cat</w>"

    def test_guided_sampling_at_512_reads_the_16x16_layers(self, checkpoint):
        model, clip, _ = checkpoint
        with torch.inference_mode():
            positive, tokens = nodes.NODE_CLASS_MAPPINGS["AG_TextEncodeWithTokens"]().encode(
                clip, PROMPT, SUBJECTS)["result"]
            negative = nodes.CLIPTextEncode().encode(clip, "")[0]
            latent = nodes.EmptyLatentImage().generate(512, 512, 1)[0]
        spec = attend_excite.attend_and_excite(tokens, schedule_module.GuidanceSchedule(refinement_points=()))
        passes = []

        class Passes(update.GuidanceObserver):
            def pass_finished(self, context, guidance_pass):
                passes.append(guidance_pass)

        options, weights = repr(model.model_options), weights_digest(model)
        with torch.inference_mode():
            out, history = doors.guided_ksample(model, 3, 2, 7.0, "euler", "normal", positive, negative, latent, 1.0,
                                                spec, observer=Passes())
        assert [(step.step, step.guided, tuple(step.maps.shape)) for step in history] == [
            (0, True, (1, 16, 16, 77)), (1, False, (1, 16, 16, 77))]
        (guidance_pass,) = passes
        assert torch.isfinite(guidance_pass.grad).all() and guidance_pass.grad.abs().max() > 0  # the latent moves
        assert torch.isfinite(guidance_pass.loss).all() and torch.isfinite(out["samples"]).all()
        assert repr(model.model_options) == options and weights_digest(model) == weights  # nothing left patched


class TestSDXL:
    @pytest.fixture(scope="class")
    def checkpoint(self):
        """Loaded with the host's --fp16-unet and --fp16-text-enc (fp16 weights, fp32 compute on CPU): in fp32 the
        SDXL UNet alone takes 10 GB."""
        arguments = comfy.cli_args.args
        saved = (arguments.fp16_unet, arguments.fp16_text_enc)
        arguments.fp16_unet = arguments.fp16_text_enc = True
        try:
            model, clip, vae = load("sdxl")
        finally:
            arguments.fp16_unet, arguments.fp16_text_enc = saved
        yield model, clip, vae
        unload(model, clip, vae)

    def test_the_stock_loader_recognises_it(self, checkpoint):
        model, clip, _ = checkpoint
        assert type(model.model.model_config) is comfy.supported_models.SDXL
        assert model.model.get_dtype() == torch.float16
        assert site_keys(model) == [("input", 7, 10), ("input", 8, 10), ("middle", 0, 10), ("output", 0, 10),
                                    ("output", 1, 10), ("output", 2, 10)]
        assert model.model.diffusion_model.input_blocks[7][1].transformer_blocks[0].attn2.heads == 20
        assert sites_module.map_size(128, 128, sites_module.GUIDANCE_LEVEL) == (32, 32)  # 1024 px
        assert [(*site.block, site.depth) for site in bridge.regulation_sites(model)] == [
            ("input", 7, 10), ("input", 8, 10), ("output", 0, 10), ("output", 1, 10), ("output", 2, 10)]
        tokens = bridge.prompt_tokens(clip, PROMPT)
        assert tokens.pieces[5] == "cat</w>" and tokens.text_encoder == "clip_l"
