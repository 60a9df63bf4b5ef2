"""The toy model as ComfyUI objects (MODEL, CLIP, VAE), built with the host's own classes from a weights file.

The only module of ``toyworld`` that touches ComfyUI; it imports the host lazily, inside its functions, so the
rest of the package (and the unit tests) run without one.

Weights file (safetensors): ``unet.*`` the UNet's state dict, ``text.*`` the CLIP text model's, except its token
embedding table, which is stored as the rows of the words the world uses (``text_vocabulary.ids`` int64 ``[V]``,
``text_vocabulary.rows`` ``[V, width]``; every other row is zero, as in training), and ``vae.*`` the TAESD
state dict. The metadata holds the UNet and text configurations as JSON (``unet_config``, ``text_config``), so a
file built with other settings loads as it was trained.
"""
from __future__ import annotations

import functools
import inspect
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .architecture import ATTENTION_HEAD_CHANNELS

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "toyworld.safetensors"
FORMAT = "toyworld-1"
_TOKEN_TABLE = "text_model.embeddings.token_embedding.weight"


@dataclass
class ToyCheckpoint:
    """What a checkpoint loader returns: ``model`` a ModelPatcher (MODEL), ``clip`` a comfy.sd.CLIP, ``vae`` a
    comfy.sd.VAE."""

    model: Any
    clip: Any
    vae: Any


def new_base_model(unet_config: dict[str, Any]) -> Any:
    """An SD1.x-family ``BaseModel`` (EPS, the SD1 discrete schedule) with this UNet configuration, fp32, weights
    not initialised (ComfyUI's layers skip initialisation; load a state dict or initialise them)."""
    import comfy.model_base
    import comfy.supported_models

    config = comfy.supported_models.SD15(dict(unet_config))
    config.unet_config.update(num_heads=-1, num_head_channels=ATTENTION_HEAD_CHANNELS)
    config.set_inference_dtype(torch.float32, None)
    return comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.EPS, device=torch.device("cpu"))


def _text_encoder_class(**kwargs: Any) -> Any:
    """The host's SDClipModel with only the keyword arguments this host's version knows."""
    import comfy.sd1_clip

    known = inspect.signature(comfy.sd1_clip.SDClipModel.__init__).parameters
    return comfy.sd1_clip.SDClipModel(**{key: value for key, value in kwargs.items() if key in known})


def new_clip(text_config: dict[str, Any]) -> Any:
    """A ``comfy.sd.CLIP`` of the SD1 family (the SD1 tokenizer) over a CLIP text model of this configuration."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    with tempfile.TemporaryDirectory(prefix="toyworld-text-") as directory:
        config_path = Path(directory) / "text_config.json"  # the 2024 host reads the configuration from a file
        config_path.write_text(json.dumps(text_config))
        encoder = functools.partial(comfy.sd1_clip.SD1ClipModel, clip_model=_text_encoder_class,
                                    textmodel_json_config=str(config_path))
        target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, encoder)
        return comfy.sd.CLIP(target=target, embedding_directory=None)


def text_encoder(clip: Any) -> Any:
    """The CLIP object's SD1 text encoder (``SDClipModel``): its forward maps token id lists to ``[B, 77, width]``."""
    return clip.cond_stage_model.clip_l


def pack_weights(unet: dict[str, torch.Tensor], text: dict[str, torch.Tensor], vae: dict[str, torch.Tensor],
                 vocabulary: list[int], dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The weights file's tensors from the three state dicts; ``vocabulary``: the token ids whose embedding rows
    are kept."""
    ids = torch.tensor(sorted(set(vocabulary)), dtype=torch.int64)
    packed = {f"unet.{key}": value for key, value in unet.items()}
    packed |= {f"text.{key}": value for key, value in text.items() if key != _TOKEN_TABLE}
    packed |= {"text_vocabulary.ids": ids, "text_vocabulary.rows": text[_TOKEN_TABLE][ids]}
    packed |= {f"vae.{key}": value for key, value in vae.items()}
    return {key: (value.to(dtype) if value.is_floating_point() else value).contiguous() for key, value in packed.items()}


def unpack_weights(tensors: dict[str, torch.Tensor], text_config: dict[str, Any]) -> tuple[dict, dict, dict]:
    """UNet, text and VAE state dicts (fp32) from the weights file's tensors."""
    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {key[len(prefix):]: value.float() for key, value in tensors.items() if key.startswith(prefix)}

    text = part("text.")
    table = torch.zeros(text_config["vocab_size"], text_config["hidden_size"])
    table[tensors["text_vocabulary.ids"]] = tensors["text_vocabulary.rows"].float()
    text[_TOKEN_TABLE] = table
    return part("unet."), text, part("vae.")


def save(path: Path, tensors: dict[str, torch.Tensor], unet_config: dict[str, Any], text_config: dict[str, Any],
         extra_metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    metadata = {"format": FORMAT, "unet_config": json.dumps(unet_config), "text_config": json.dumps(text_config),
                **(extra_metadata or {})}
    save_file(tensors, str(path), metadata=metadata)


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path} is not a toy world weights file (format {metadata.get('format')!r}, "
                             f"expected {FORMAT!r})")
        return {key: handle.get_tensor(key) for key in handle.keys()}, metadata


def load(path: Path = DEFAULT_WEIGHTS) -> ToyCheckpoint:
    """MODEL, CLIP and VAE from a weights file, as ComfyUI's checkpoint loader builds them (weights are inference
    tensors on the offload device; ComfyUI moves them when it samples)."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sd

    tensors, metadata = read(Path(path))
    unet_config, text_config = json.loads(metadata["unet_config"]), json.loads(metadata["text_config"])
    unet, text, vae = unpack_weights(tensors, text_config)
    with torch.inference_mode():
        base = new_base_model(unet_config)
        base.diffusion_model.load_state_dict(unet, strict=True)
        base.eval()
        model = comfy.model_patcher.ModelPatcher(base, load_device=comfy.model_management.get_torch_device(),
                                                 offload_device=comfy.model_management.unet_offload_device())
        clip = new_clip(text_config)
        missing, unexpected = text_encoder(clip).load_sd(text)
        if missing or unexpected:
            raise ValueError(f"{path}: text encoder keys do not fit (missing {missing}, unexpected {unexpected})")
        vae_object = comfy.sd.VAE(sd=vae)
    return ToyCheckpoint(model, clip, vae_object)
