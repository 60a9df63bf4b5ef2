"""AG_ATTENTION: what each subject attended to, step by step, in a guided (or recording) sampling run."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionRecord:
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


def subject_record(step_maps: Sequence, labels: Sequence[str], subjects: Sequence[Sequence[int]]) -> AttentionRecord:
    """Build the record from per-step maps ``[B, h, w, T]`` (objects with step, sigma, guided, maps)."""
    per_step = [torch.stack([entry.maps[..., list(positions)].sum(-1) for positions in subjects], dim=1)
                for entry in step_maps]
    maps = torch.stack(per_step) if per_step else torch.empty(0)
    return AttentionRecord(tuple(labels), tuple(e.step for e in step_maps), tuple(e.sigma for e in step_maps),
                           tuple(e.guided for e in step_maps), maps)


RECORD_FORMAT = "attention-guidance.attention-record.v1"


def record_tensors(record: AttentionRecord) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The record as a ``.safetensors`` payload: the tensor ``maps`` (float32 ``[steps, B, S, h, w]``) and string
    metadata (JSON lists ``labels``, ``steps``, ``sigmas``, ``guided``; ``shape`` names the axes)."""
    metadata = {
        "format": RECORD_FORMAT,
        "shape": "steps, batch, subjects, height, width",
        "labels": json.dumps(list(record.labels)),
        "steps": json.dumps(list(record.steps)),
        "sigmas": json.dumps(list(record.sigmas)),
        "guided": json.dumps(list(record.guided)),
    }
    return {"maps": record.maps.detach().float().cpu().contiguous()}, metadata


def record_from_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> AttentionRecord:
    """Inverse of ``record_tensors``."""
    if metadata.get("format") != RECORD_FORMAT:
        raise ValueError(f"not an attention record (format {metadata.get('format')!r}, expected {RECORD_FORMAT!r})")
    fields = {name: tuple(json.loads(metadata[name])) for name in ("labels", "steps", "sigmas", "guided")}
    return AttentionRecord(maps=tensors["maps"], **fields)
