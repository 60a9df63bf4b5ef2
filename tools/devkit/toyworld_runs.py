"""Sampling the toy world model through the pack's nodes, as a graph would: for the eval, the demo, the bench, the
training report and the host tests. Import only after a host is active.

Every node is reached through the host's registry (``nodes.NODE_CLASS_MAPPINGS``) and called with its declared
function and its declared defaults for every input not given, so these runs follow the nodes, not the pack's
internals.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import nodes
from devkit.workflow import input_specs

LOADER = "AG_ToyWorldLoader"
ENCODER = "AG_TextEncodeWithTokens"
SAMPLER = "AG_GuidedKSampler"
RECORDER = "AG_RecordAttention"


@dataclass(frozen=True)
class SampleSettings:
    steps: int = 20
    cfg: float = 5.0
    sampler: str = "euler"
    scheduler: str = "normal"
    size: int = 192


@dataclass
class Run:
    """One sampling call: ``images`` uint8 ``[B, H, W, 3]``, ``attention`` the AG_ATTENTION record, ``seconds``
    the sampling and decoding time."""

    images: np.ndarray
    attention: Any
    seconds: float


def defaults(node_id: str) -> dict[str, Any]:
    """The default of every widget input of a node (a combo's first choice when it names none)."""
    required, optional = input_specs(nodes.NODE_CLASS_MAPPINGS[node_id])
    found = {}
    for name, kind, options in required + optional:
        if "default" in options:
            found[name] = options["default"]
        elif isinstance(kind, (list, tuple)) and kind:
            found[name] = kind[0]
    return found


def run_node(node_id: str, **inputs: Any) -> tuple:
    """The node's outputs for ``inputs``, its defaults filling every widget input not given."""
    node_class = nodes.NODE_CLASS_MAPPINGS[node_id]
    with torch.inference_mode():
        result = getattr(node_class(), node_class.FUNCTION)(**{**defaults(node_id), **inputs})
    return tuple(result["result"]) if isinstance(result, dict) else tuple(result)


def load_model(weights: str | None = None) -> tuple[Any, Any, Any]:
    """MODEL, CLIP and VAE from the Toy World Loader (its default weights file unless ``weights`` names one)."""
    return run_node(LOADER, **({"weights": weights} if weights else {}))


def encode(clip: Any, prompt: str, subjects: str) -> tuple[Any, Any]:
    """Positive conditioning and AG_TOKENS from CLIP Text Encode (with subjects)."""
    positive, tokens = run_node(ENCODER, clip=clip, text=prompt, subjects=subjects)
    return positive, tokens


def negative(clip: Any) -> Any:
    with torch.inference_mode():
        return nodes.CLIPTextEncode().encode(clip, "")[0]


def sample(model: Any, vae: Any, positive: Any, negative_conditioning: Any, guidance: Any, seed: int, batch: int,
           settings: SampleSettings) -> Run:
    """The Guided KSampler with ``guidance`` (Record Attention for an unguided run: bit-identical to the stock
    KSampler), then VAE Decode. Batch image ``i`` gets the host's noise for ``seed`` at batch index ``i``."""
    start = time.perf_counter()
    with torch.inference_mode():
        latent = nodes.EmptyLatentImage().generate(settings.size, settings.size, batch)[0]
    sampled, attention = run_node(SAMPLER, model=model, seed=seed, steps=settings.steps, cfg=settings.cfg,
                                  sampler_name=settings.sampler, scheduler=settings.scheduler, positive=positive,
                                  negative=negative_conditioning, latent_image=latent, denoise=1.0, guidance=guidance)
    with torch.inference_mode():
        decoded = nodes.VAEDecode().decode(vae, sampled)[0]
    images = (decoded.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return Run(images, attention, time.perf_counter() - start)


def peak_attention(attention: Any, last_percent: float = 50.0) -> np.ndarray:
    """Each image's and subject's strongest attention (the map's maximum), averaged over the first
    ``last_percent`` % of the steps, the window in which the methods guide: ``[B, S]``."""
    maps = attention.maps.float()  # [steps, B, S, h, w]
    steps = max(1, round(maps.shape[0] * last_percent / 100))
    return maps[:steps].amax(dim=(-2, -1)).mean(dim=0).cpu().numpy()
