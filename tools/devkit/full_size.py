"""Full-size SD1.5- and SDXL-shaped checkpoints with random weights, for tests of what only real shapes show (the
16x16 layers at 512 px, real head counts and widths, the stock loader's model detection, memory).

The key names and shapes come from the active host itself: its UNet, text encoder and VAE classes built on the meta
device (no memory), turned into a checkpoint's state dict by the host's own saving code (``state_dict_for_saving``),
so the file has exactly the names a real checkpoint of that family has and ``CheckpointLoaderSimple`` must
recognise it by them. The weights are random (std 1/sqrt(fan_in), norms 1), written tensor by tensor in the
safetensors format into the host cache (never the repository) and reused while the generator's version and the
tensors' names and shapes stay the same. Import only after a host is active.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path

import comfy.ldm.models.autoencoder
import comfy.model_base
import comfy.sd1_clip
import comfy.sdxl_clip
import comfy.supported_models
import folder_paths
import torch

from devkit.hosts import host_cache

GENERATOR_VERSION = "1"
CHECKPOINT_FOLDER = "ag-full-size"  # inside the host cache
SEED = 20240322
_SAFETENSORS_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}
_COMMON_UNET = {"use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
                "use_spatial_transformer": True, "legacy": False, "model_channels": 320,
                "use_temporal_attention": False, "use_temporal_resblock": False}
# The families' UNet settings (the published architectures, as ComfyUI spells them).
UNETS = {
    "sd15": {**_COMMON_UNET, "adm_in_channels": None, "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
             "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
             "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_linear_in_transformer": False,
             "context_dim": 768, "num_heads": 8, "num_head_channels": -1},
    "sdxl": {**_COMMON_UNET, "num_classes": "sequential", "adm_in_channels": 2816, "num_res_blocks": [2, 2, 2],
             "channel_mult": [1, 2, 4], "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
             "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "use_linear_in_transformer": True,
             "context_dim": 2048, "num_head_channels": 64},
}
VAE = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
       "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
FAMILIES = tuple(UNETS)


def checkpoint_shapes(family: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``{checkpoint key: (shape, dtype)}`` of a ``family`` checkpoint (``"sd15"`` or ``"sdxl"``), from the host."""
    meta = torch.device("meta")
    with torch.device(meta), torch.no_grad():  # as the host builds models (no autograd for init copies)
        if family == "sd15":
            config = comfy.supported_models.SD15(dict(UNETS[family]))
            model = comfy.model_base.BaseModel(config, device=meta)
            clip = comfy.sd1_clip.SD1ClipModel(device=meta)
        elif family == "sdxl":
            config = comfy.supported_models.SDXL(dict(UNETS[family]))
            model = comfy.model_base.SDXL(config, device=meta)
            clip = comfy.sdxl_clip.SDXLClipModel(device=meta)
        else:
            raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
        vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=VAE, embed_dim=4)
    state = model.state_dict_for_saving(clip.state_dict(), vae.state_dict())  # converts each part's key names
    return {key: (tuple(value.shape), value.dtype) for key, value in state.items()}


def _random_tensor(key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Random values for one tensor, seeded by its key (the file does not depend on the order of writing)."""
    if not dtype.is_floating_point:  # index buffers (CLIP's position ids)
        return torch.arange(math.prod(shape)).reshape(shape).to(dtype)
    generator = torch.Generator().manual_seed(SEED + int(hashlib.sha1(key.encode()).hexdigest()[:8], 16))
    if len(shape) >= 2:
        return torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))
    if key.endswith("weight"):  # norms' scales
        return torch.ones(shape)
    return 0.02 * torch.randn(shape, generator=generator)


def _tensors(shapes: dict[str, tuple[tuple[int, ...], torch.dtype]], dtype: torch.dtype
             ) -> Iterator[tuple[str, torch.Tensor]]:
    for key, (shape, own_dtype) in shapes.items():
        yield key, _random_tensor(key, shape, own_dtype).to(dtype if own_dtype.is_floating_point else own_dtype)


def _safetensors_dtype(dtype: torch.dtype) -> str:
    return _SAFETENSORS_DTYPES.get(dtype) or {torch.int64: "I64", torch.int32: "I32"}[dtype]


def write_checkpoint(path: Path, family: str, dtype: torch.dtype = torch.float16) -> None:
    """Write a random ``family`` checkpoint to ``path`` in the safetensors format, one tensor at a time (the whole
    file is never held in memory): an 8-byte header length, the JSON header, then each tensor's bytes."""
    shapes = checkpoint_shapes(family)
    out_dtypes = {key: dtype if own.is_floating_point else own for key, (_, own) in shapes.items()}
    header: dict = {"__metadata__": {"generator": f"attention-guidance devkit full_size v{GENERATOR_VERSION}",
                                     "family": family, "seed": str(SEED)}}
    offset = 0
    for key, (shape, _) in shapes.items():
        size = math.prod(shape) * torch.tensor([], dtype=out_dtypes[key]).element_size()
        header[key] = {"dtype": _safetensors_dtype(out_dtypes[key]), "shape": list(shape),
                       "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    partial = path.with_suffix(".partial")
    try:
        with open(partial, "wb") as file:
            file.write(struct.pack("<Q", len(encoded)))
            file.write(encoded)
            for _, tensor in _tensors(shapes, dtype):
                file.write(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def _fingerprint(family: str, dtype: torch.dtype) -> str:
    """What a cached file must have been written from: generator version, dtype, the names and shapes."""
    shapes = sorted((key, shape) for key, (shape, _) in checkpoint_shapes(family).items())
    return hashlib.sha1(repr((GENERATOR_VERSION, str(dtype), shapes)).encode()).hexdigest()[:12]


def full_size_checkpoint(family: str, dtype: torch.dtype = torch.float16) -> str:
    """The file name under which ``CheckpointLoaderSimple`` finds a random full-size ``family`` checkpoint, written
    on first use into the host cache (``<cache>/ag-full-size``, registered as a checkpoints folder)."""
    folder = host_cache() / CHECKPOINT_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    name = f"random-{family}-{str(dtype).removeprefix('torch.')}-{_fingerprint(family, dtype)}.safetensors"
    if not (folder / name).is_file():
        write_checkpoint(folder / name, family, dtype)
    if str(folder) not in folder_paths.get_folder_paths("checkpoints"):
        folder_paths.add_model_folder_path("checkpoints", str(folder))
    return name
