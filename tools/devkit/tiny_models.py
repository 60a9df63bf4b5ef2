"""Tiny random-weight SD1.x, SD2.x (v-prediction) and SDXL models (and, for them, a ControlNet and a GLIGEN model)
built with the host's own classes.

The UNets keep the real block layout of their family (so the real layer keys, depths and down-sampling levels
hold, e.g. SD1.x cross-attention at ``input 7, 8`` / ``output 3, 4, 5`` on the latent/4 level) with 32 base
channels. The CLIP objects use the tokenizers ComfyUI ships over small text encoders, and the VAE is a
TAESD-format model the host recognises from its keys. Everything is built under ``torch.inference_mode()``, as
ComfyUI loads real checkpoints, so weights are inference tensors. Import only after a host is active.
"""
from __future__ import annotations

import functools
import inspect
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import comfy.cldm.cldm
import comfy.controlnet
import comfy.gligen
import comfy.ldm.modules.attention
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.sdxl_clip
import comfy.supported_models
import comfy.taesd.taesd
import torch

try:  # the module moved in 2024
    from comfy.text_encoders import sd2_clip
except ImportError:
    from comfy import sd2_clip

FAMILIES = ("sd1", "sd2", "sdxl")
CONTEXT_DIM = 64
SEED = 20240322

_UNET_COMMON: dict[str, Any] = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 32,
    "use_spatial_transformer": True, "legacy": False, "context_dim": CONTEXT_DIM,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
_SD_LAYOUT: dict[str, Any] = {  # SD1.x / SD2.x: four levels, attention on the first three
    "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1, "adm_in_channels": None,  # output depths: shallowest level first, as the host lists them
}
_SDXL_LAYOUT: dict[str, Any] = {  # SDXL: three levels, no attention at full latent size, stacks of 2 at latent/4
    "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
    "transformer_depth": [0, 0, 1, 1, 2, 2], "transformer_depth_output": [0, 0, 0, 1, 1, 1, 2, 2, 2],
    "transformer_depth_middle": 2, "use_linear_in_transformer": True, "num_classes": "sequential",
}
_CLIP_TEXT_CONFIG: dict[str, Any] = {
    "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
    "eos_token_id": 49407, "hidden_act": "quick_gelu", "initializer_factor": 1.0, "initializer_range": 0.02,
    "intermediate_size": 64, "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "model_type": "clip_text_model",
    "num_attention_heads": 2, "num_hidden_layers": 3, "pad_token_id": 1, "vocab_size": 49408,
}


@dataclass
class TinyCheckpoint:
    """What ``CheckpointLoaderSimple`` returns, for one family."""

    family: str
    model: Any  # comfy.model_patcher.ModelPatcher
    clip: Any  # comfy.sd.CLIP
    vae: Any  # comfy.sd.VAE


@torch.no_grad()
def _randomize(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Weights drawn with std 1/sqrt(fan_in) so activations and attention logits are O(1); norms start at 1."""
    for name, parameter in module.named_parameters():
        if parameter.ndim >= 2:
            fan_in = math.prod(parameter.shape[1:])
            parameter.copy_(torch.randn(parameter.shape, generator=generator) / math.sqrt(fan_in))
        elif name.endswith("weight"):
            parameter.fill_(1.0)
        else:
            parameter.copy_(0.02 * torch.randn(parameter.shape, generator=generator))


def _unet_config(family: str) -> tuple[Any, comfy.model_base.ModelType]:
    if family == "sd1":
        config = comfy.supported_models.SD15({**_UNET_COMMON, **_SD_LAYOUT, "use_linear_in_transformer": False})
        config.unet_config.update(num_heads=-1, num_head_channels=16)  # 2/4/8 heads: cheap full-size attention
        return config, comfy.model_base.ModelType.EPS
    if family == "sd2":
        config = comfy.supported_models.SD20({**_UNET_COMMON, **_SD_LAYOUT, "use_linear_in_transformer": True})
        config.unet_config["num_head_channels"] = 16
        return config, comfy.model_base.ModelType.V_PREDICTION
    if family == "sdxl":
        pooled_and_size_embeddings = CONTEXT_DIM // 2 + 6 * 256
        config = comfy.supported_models.SDXL(
            {**_UNET_COMMON, **_SDXL_LAYOUT, "adm_in_channels": pooled_and_size_embeddings}
        )
        config.unet_config["num_head_channels"] = 16
        return config, comfy.model_base.ModelType.EPS
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def tiny_unet(family: str, generator: torch.Generator, dtype: torch.dtype = torch.float32,
              manual_cast_dtype: torch.dtype | None = None) -> Any:
    """The family's tiny UNet with weights stored in ``dtype``; ``manual_cast_dtype`` makes the host compute in
    that dtype instead, casting the weights at every call (ComfyUI's manual-cast path)."""
    config, model_type = _unet_config(family)
    config.set_inference_dtype(dtype, manual_cast_dtype)
    model_class = comfy.model_base.SDXL if family == "sdxl" else comfy.model_base.BaseModel
    model = model_class(config, model_type=model_type, device=torch.device("cpu"))
    _randomize(model.diffusion_model, generator)
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def _text_config_file(directory: Path, name: str, hidden_size: int) -> str:
    path = directory / f"{name}.json"
    path.write_text(json.dumps({**_CLIP_TEXT_CONFIG, "hidden_size": hidden_size, "projection_dim": hidden_size}))
    return str(path)


def _text_encoder(**kwargs: Any) -> comfy.sd1_clip.SDClipModel:
    """The host's SDClipModel with only the keyword arguments this host's version knows."""
    known = inspect.signature(comfy.sd1_clip.SDClipModel.__init__).parameters
    return comfy.sd1_clip.SDClipModel(**{key: value for key, value in kwargs.items() if key in known})


class _TinySDXLClip(comfy.sdxl_clip.SDXLClipModel):
    """The host's SDXL dual encoder (clip_l + clip_g, channel-concatenated), built from small configs."""

    config_files: tuple[str, str] = ("", "")

    def __init__(self, device: str = "cpu", dtype: torch.dtype | None = None, **_: Any) -> None:
        torch.nn.Module.__init__(self)
        l_config, g_config = self.config_files
        common = {"device": device, "dtype": dtype, "layer": "hidden", "layer_idx": -2, "layer_norm_hidden_state": False}
        self.clip_l = _text_encoder(textmodel_json_config=l_config, **common)
        self.clip_g = _text_encoder(
            textmodel_json_config=g_config, special_tokens={"start": 49406, "end": 49407, "pad": 0},
            return_projected_pooled=True, model_options={"model_name": "clip_g"}, **common,
        )
        self.dtypes = {dtype}


def tiny_clip(family: str, directory: Path, embedding_directory: str | None = None) -> Any:
    if family == "sd1":
        encoder = functools.partial(
            comfy.sd1_clip.SD1ClipModel, clip_model=_text_encoder,
            textmodel_json_config=_text_config_file(directory, "clip_l", CONTEXT_DIM),
        )
        tokenizer = comfy.sd1_clip.SD1Tokenizer
    elif family == "sd2":
        encoder = functools.partial(
            comfy.sd1_clip.SD1ClipModel, clip_name="h", clip_model=_text_encoder, layer="hidden", layer_idx=-2,
            special_tokens={"start": 49406, "end": 49407, "pad": 0},
            textmodel_json_config=_text_config_file(directory, "clip_h", CONTEXT_DIM),
        )
        tokenizer = sd2_clip.SD2Tokenizer
    else:
        half = CONTEXT_DIM // 2
        encoder = type("TinySDXLClip", (_TinySDXLClip,), {
            "config_files": (_text_config_file(directory, "clip_l", half), _text_config_file(directory, "clip_g", half)),
        })
        tokenizer = comfy.sdxl_clip.SDXLTokenizer
    target = comfy.supported_models_base.ClipTarget(tokenizer, encoder)
    clip = comfy.sd.CLIP(target=target, embedding_directory=embedding_directory)
    generator = torch.Generator().manual_seed(SEED + 1)
    _randomize(clip.cond_stage_model, generator)
    return clip


def tiny_vae(generator: torch.Generator, latent_channels: int = 4) -> Any:
    """A TAESD-format VAE (the 2024 host's TAESD has 4 latent channels only)."""
    taesd = comfy.taesd.taesd.TAESD(latent_channels=latent_channels) if latent_channels != 4 else comfy.taesd.taesd.TAESD()
    _randomize(taesd, generator)
    return comfy.sd.VAE(sd=taesd.state_dict())


def tiny_model(family: str, dtype: torch.dtype = torch.float32, manual_cast_dtype: torch.dtype | None = None) -> Any:
    """The UNet of :func:`tiny_checkpoint` (the same weights, rounded to ``dtype``) in another precision."""
    with torch.inference_mode():
        return tiny_unet(family, torch.Generator().manual_seed(SEED), dtype, manual_cast_dtype)


def tiny_checkpoint(family: str) -> TinyCheckpoint:
    """A fresh tiny model, CLIP and VAE of ``family`` ("sd1", "sd2" or "sdxl"), deterministic across calls."""
    generator = torch.Generator().manual_seed(SEED)
    with torch.inference_mode(), tempfile.TemporaryDirectory(prefix="ag-tiny-clip-") as config_directory:
        model = tiny_unet(family, generator)
        clip = tiny_clip(family, Path(config_directory))  # the encoders read their configs while being built
        vae = tiny_vae(generator)
    return TinyCheckpoint(family, model, clip, vae)


def tiny_controlnet(family: str = "sd1") -> Any:
    """A CONTROL_NET for the tiny ``family`` model, as ``ControlNetLoader`` returns it: the host's ControlNet UNet
    (same layout, 3-channel hint) with random weights, its output convolutions included (a trained ControlNet's are
    not zero either), built under ``torch.inference_mode()`` as the host loads one."""
    config, _ = _unet_config(family)
    unet_config = {key: value for key, value in config.unet_config.items() if key != "out_channels"}
    generator = torch.Generator().manual_seed(SEED + 2)
    with torch.inference_mode():
        control_model = comfy.cldm.cldm.ControlNet(**unet_config, hint_channels=3, dtype=torch.float32,
                                                   device=torch.device("cpu"))
        _randomize(control_model, generator)
    return comfy.controlnet.ControlNet(control_model, load_device=comfy.model_management.get_torch_device())


def tiny_gligen(model: Any) -> Any:
    """A GLIGEN model for the tiny ``model`` (a MODEL), as ``GLIGENLoader`` returns it: the host's Gligen with a gated
    self-attention fuser per SpatialTransformer of the UNet (in the order the UNet counts them) and a position net
    over the tiny CLIP's pooled output, random weights and open gates (a trained model's are not closed either)."""
    unet = model.model.diffusion_model
    blocks = [*unet.input_blocks, unet.middle_block, *unet.output_blocks]
    widths = [layer.transformer_blocks[0].norm1.normalized_shape[0] for block in blocks for layer in block
              if isinstance(layer, comfy.ldm.modules.attention.SpatialTransformer)]
    generator = torch.Generator().manual_seed(SEED + 3)
    with torch.inference_mode():
        fusers = [comfy.gligen.GatedSelfAttentionDense(width, CONTEXT_DIM, width // 16, 16) for width in widths]
        gligen = comfy.gligen.Gligen(fusers, comfy.gligen.PositionNet(CONTEXT_DIM, CONTEXT_DIM), CONTEXT_DIM)
        _randomize(gligen, generator)
        for name, parameter in gligen.named_parameters():
            if name.endswith(("alpha_attn", "alpha_dense")):
                parameter.fill_(1.0)
    return comfy.model_patcher.ModelPatcher(gligen, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())
