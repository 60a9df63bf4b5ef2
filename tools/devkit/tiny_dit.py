"""Tiny random-weight diffusion transformers built with the current host's own classes: FLUX.1, Chroma, SD3/SD3.5
(MMDiT) and SD3.5 medium (MMDiT-X), and AuraFlow as an unsupported DiT.

Each keeps its family's block structure and text layout at toy width: FLUX and Chroma have 2 double and 2 single
blocks of hidden size 64 (4 heads of 16), the MMDiTs 2 joint blocks of hidden size 128 (2 heads of 64, the host fixes
64 per head). The text encoders are the host's own (FluxClipModel, SD3ClipModel, Chroma's T5) with the real CLIP and
T5 tokenizers over small transformers; their sizes come in through the host's ``<encoder>_model_config`` model
options. Everything is built under ``torch.inference_mode()`` as ComfyUI loads checkpoints. The 2024 host has no DiT
code: import this module on the current host only.
"""
from __future__ import annotations

import math
from typing import Any

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.sdxl_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.text_encoders.flux
import comfy.text_encoders.pixart_t5
import comfy.text_encoders.sd3_clip
import torch
import torch.nn.functional as F

from .tiny_models import SEED, TinyCheckpoint, _randomize, tiny_vae

DIT_FAMILIES = ("flux", "chroma", "sd3", "sd35_medium")
"""Tiny checkpoints of the supported DiT families: FLUX.1-dev, Chroma, SD3.5-large-like MMDiT (qk RMS norm) and
SD3.5-medium-like MMDiT-X (an extra image-only attention in joint block 0)."""
UNSUPPORTED_DIT_FAMILIES = ("auraflow",)

# Encoder sizes through the host's "<model_name>_model_config" overrides of the real configs (vocabularies kept).
T5_SIZE = {"d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2}
CLIP_SIZE = {"hidden_size": 32, "projection_dim": 32, "intermediate_size": 64, "num_attention_heads": 2,
             "num_hidden_layers": 3}
ENCODER_OPTIONS = {"t5xxl_model_config": T5_SIZE, "clip_l_model_config": CLIP_SIZE, "clip_g_model_config": CLIP_SIZE}
SD3_CONTEXT_WIDTH = 4096  # SD3ClipModel pads CLIP to 4096 channels and concatenates T5 along the sequence

_FLUX_COMMON: dict[str, Any] = {
    "context_in_dim": T5_SIZE["d_model"], "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 4, "depth": 2,
    "depth_single_blocks": 2, "axes_dim": [4, 6, 6], "theta": 10000, "patch_size": 2, "qkv_bias": True,
}


@torch.no_grad()
def _randomize_buffers(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Buffers the host allocates empty and fills from a checkpoint (MMDiT's position embedding)."""
    for buffer in module.buffers():
        if buffer.is_floating_point():
            buffer.copy_(0.5 * torch.randn(buffer.shape, generator=generator))


@torch.no_grad()
def _unit_norm_scales(module: torch.nn.Module) -> None:
    """FLUX's RMSNorm calls its weight ``scale``; like every norm weight it starts at 1 (q/k norms included, so
    attention logits are O(1) and the maps are not uniform)."""
    for name, parameter in module.named_parameters():
        if name.endswith(".scale"):
            parameter.fill_(1.0)


def _patcher(model: Any, generator: torch.Generator) -> Any:
    _randomize(model.diffusion_model, generator)
    _unit_norm_scales(model.diffusion_model)
    _randomize_buffers(model.diffusion_model, generator)
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def _configured(config: Any) -> Any:
    config.set_inference_dtype(torch.float32, None)
    return config


def tiny_flux_model(generator: torch.Generator) -> Any:
    """FLUX.1-dev: guidance embedding, ModelSamplingFlux (shift 1.15), T5 context, CLIP-L pooled vector."""
    config = _configured(comfy.supported_models.Flux({
        "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": CLIP_SIZE["hidden_size"],
        "guidance_embed": True, **_FLUX_COMMON,
    }))
    return _patcher(comfy.model_base.Flux(config, device=torch.device("cpu")), generator)


def tiny_chroma_model(generator: torch.Generator) -> Any:
    """Chroma: FLUX's blocks with modulations from the distilled approximator, T5 context only."""
    config = _configured(comfy.supported_models.Chroma({
        "image_model": "chroma", "in_channels": 64, "out_channels": 64, "in_dim": 64,
        "out_dim": _FLUX_COMMON["hidden_size"], "hidden_dim": 64, "n_layers": 2, **_FLUX_COMMON,
    }))
    return _patcher(comfy.model_base.Chroma(config, device=torch.device("cpu")), generator)


def tiny_mmdit_model(generator: torch.Generator, x_block: bool) -> Any:
    """SD3/SD3.5 MMDiT (qk RMS norm) or, with ``x_block``, SD3.5-medium's MMDiT-X (joint block 0 adds an image-only
    attention); DiscreteFlow sampling with shift 3."""
    depth = 2
    config = _configured(comfy.supported_models.SD3({
        "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": depth, "input_size": None,
        "pos_embed_scaling_factor": None, "pos_embed_max_size": 32, "num_patches": 32 * 32,
        "adm_in_channels": 2 * CLIP_SIZE["projection_dim"], "qk_norm": "rms",
        "context_embedder_config": {"target": "torch.nn.Linear",
                                    "params": {"in_features": SD3_CONTEXT_WIDTH, "out_features": 64 * depth}},
        "x_block_self_attn_layers": [0] if x_block else [],
    }))
    return _patcher(comfy.model_base.SD3(config, device=torch.device("cpu")), generator)


def tiny_auraflow_model(generator: torch.Generator) -> Any:
    """AuraFlow, a DiT the pack does not support (for the error it gives)."""
    config = _configured(comfy.supported_models.AuraFlow({
        "max_seq": 64, "cond_seq_dim": T5_SIZE["d_model"], "n_double_layers": 1, "n_layers": 2, "dim": 64,
        "n_heads": 2, "global_conddim": 64, "patch_size": 2, "in_channels": 4, "out_channels": 4,
    }))
    return _patcher(comfy.model_base.AuraFlow(config, device=torch.device("cpu")), generator)


class _WideT5(comfy.text_encoders.sd3_clip.T5XXLModel):
    """The host's T5-XXL encoder at toy width, its outputs zero-padded to SD3's 4096 context channels so that the
    host's SD3ClipModel concatenates CLIP and T5 tokens exactly as with the real encoders."""

    def encode_token_weights(self, token_weight_pairs: Any) -> tuple:
        out, *rest = super().encode_token_weights(token_weight_pairs)
        return (F.pad(out, (0, SD3_CONTEXT_WIDTH - out.shape[-1])), *rest)


class _TinySD3Clip(comfy.text_encoders.sd3_clip.SD3ClipModel):
    """The host's SD3 text encoder (CLIP-L, CLIP-G, T5-XXL) built from the host's own encoder classes at toy size."""

    def __init__(self, device: str = "cpu", dtype: torch.dtype | None = None, model_options: dict | None = None
                 ) -> None:
        torch.nn.Module.__init__(self)
        options = model_options or {}
        self.clip_l = comfy.sd1_clip.SDClipModel(layer="hidden", layer_idx=-2, device=device, dtype=dtype,
                                                 layer_norm_hidden_state=False, return_projected_pooled=False,
                                                 model_options=options)
        self.clip_g = comfy.sdxl_clip.SDXLClipG(device=device, dtype=dtype, model_options=options)
        self.t5_attention_mask = False
        self.t5xxl = _WideT5(device=device, dtype=dtype, model_options=options)
        self.dtypes = {dtype}


def tiny_text_encoder(family: str) -> Any:
    """The family's CLIP object: the host's tokenizer and text encoder classes, toy-sized encoders."""
    if family == "flux":
        target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.flux.FluxTokenizer,
                                                        comfy.text_encoders.flux.flux_clip())
    elif family == "chroma" or family == "auraflow":
        target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.pixart_t5.PixArtTokenizer,
                                                        comfy.text_encoders.pixart_t5.pixart_te())
    elif family in ("sd3", "sd35_medium"):
        target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.sd3_clip.SD3Tokenizer, _TinySD3Clip)
    else:
        raise ValueError(f"unknown DiT family {family!r}; expected one of {DIT_FAMILIES + UNSUPPORTED_DIT_FAMILIES}")
    clip = comfy.sd.CLIP(target=target, model_options={**ENCODER_OPTIONS, "dtype": torch.float32})
    _randomize(clip.cond_stage_model, torch.Generator().manual_seed(SEED + 1))
    return clip


_MODELS = {
    "flux": tiny_flux_model,
    "chroma": tiny_chroma_model,
    "sd3": lambda generator: tiny_mmdit_model(generator, x_block=False),
    "sd35_medium": lambda generator: tiny_mmdit_model(generator, x_block=True),
    "auraflow": tiny_auraflow_model,
}


def tiny_dit_model(family: str) -> Any:
    """Only the MODEL of ``family``, built outside inference mode (normal tensors, e.g. to convert to fp64)."""
    if family not in _MODELS:
        raise ValueError(f"unknown DiT family {family!r}; expected one of {DIT_FAMILIES + UNSUPPORTED_DIT_FAMILIES}")
    return _MODELS[family](torch.Generator().manual_seed(SEED))


def tiny_dit_checkpoint(family: str) -> TinyCheckpoint:
    """A fresh tiny model, text encoder and 16-channel TAESD-format VAE of a DiT ``family``, deterministic."""
    if family not in _MODELS:
        raise ValueError(f"unknown DiT family {family!r}; expected one of {DIT_FAMILIES + UNSUPPORTED_DIT_FAMILIES}")
    generator = torch.Generator().manual_seed(SEED)
    with torch.inference_mode():
        model = _MODELS[family](generator)
        clip = tiny_text_encoder(family)
        vae = tiny_vae(generator, latent_channels=16)
    return TinyCheckpoint(family, model, clip, vae)


def token_grid(latent_height: int, latent_width: int) -> tuple[int, int]:
    """The image token grid of a patch-2 DiT for a latent size (the host pads odd sizes)."""
    return math.ceil(latent_height / 2), math.ceil(latent_width / 2)
