"""AG_ATTENTION: what each subject attended to, step by step, in a guided (or recording) sampling run."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepMaps:
    """One sampling step's aggregated conditional maps, ``[B, h, w, T]`` at latent/4, detached: from the guidance
    pass on guided steps (what the loss saw), from the sampling pass's positive half otherwise."""

    step: int
    sigma: float
    maps: torch.Tensor
    guided: bool = False


@dataclass(frozen=True)
class AttentionHistory:
    """Per-subject cross-attention over the sampling steps.

    ``maps`` is ``[steps, B, S, h, w]``: for subject s, the attention probability summed over its tokens and
    averaged over the heads and layers at latent/4 (rows of the full map sum to 1 over all 77·k tokens). On guided
    steps the maps are those the loss saw at the step start; on other steps they come from the positive half of
    the sampling pass. ``steps`` are 0-based loop indices, ``sigmas`` their noise levels, ``labels`` the subjects.
    """

    labels: tuple[str, ...]
    steps: tuple[int, ...]
    sigmas: tuple[float, ...]
    guided: tuple[bool, ...]
    maps: torch.Tensor


def subject_history(step_maps: Sequence[StepMaps], labels: Sequence[str], subjects: Sequence[Sequence[int]]
                   ) -> AttentionHistory:
    """Each subject's maps (summed over its token positions) from a run's per-step maps."""
    per_step = [torch.stack([entry.maps[..., list(positions)].sum(-1) for positions in subjects], dim=1)
                for entry in step_maps]
    maps = torch.stack(per_step) if per_step else torch.empty(0)
    return AttentionHistory(tuple(labels), tuple(e.step for e in step_maps), tuple(e.sigma for e in step_maps),
                           tuple(e.guided for e in step_maps), maps)


HISTORY_FORMAT = "attention-guidance.attention-record.v1"  # saved files name it so


def history_tensors(history: AttentionHistory) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The history as a ``.safetensors`` payload: the tensor ``maps`` (float32 ``[steps, B, S, h, w]``) and string
    metadata (JSON lists ``labels``, ``steps``, ``sigmas``, ``guided``; ``shape`` names the axes)."""
    metadata = {
        "format": HISTORY_FORMAT,
        "shape": "steps, batch, subjects, height, width",
        "labels": json.dumps(list(history.labels)),
        "steps": json.dumps(list(history.steps)),
        "sigmas": json.dumps(list(history.sigmas)),
        "guided": json.dumps(list(history.guided)),
    }
    return {"maps": history.maps.detach().float().cpu().contiguous()}, metadata


def history_from_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> AttentionHistory:
    """Inverse of ``history_tensors``."""
    if metadata.get("format") != HISTORY_FORMAT:
        raise ValueError(f"not an attention history (format {metadata.get('format')!r}, expected {HISTORY_FORMAT!r})")
    fields = {name: tuple(json.loads(metadata[name])) for name in ("labels", "steps", "sigmas", "guided")}
    return AttentionHistory(maps=tensors["maps"], **fields)
