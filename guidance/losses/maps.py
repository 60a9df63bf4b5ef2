"""Per-subject attention maps as the A&E, D&B and A-STAR losses see them (docs/methods.md, "Token preprocessing" and
"Smoothing").

Shapes:
    maps      ``[B, H, W, T]`` head- and layer-averaged cross-attention probabilities over the prompt's
              T = 77·k token positions (position 0 of each 77-chunk is ``<sot>``).
    subjects  one sequence of token positions per subject (a word split into pieces has several).
    result    ``[B, S, H, W]``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

CHUNK_LENGTH = 77
RESOFTMAX_SCALE = 100.0


def gaussian_kernel(kernel_size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """``[k, k]`` smoothing kernel exactly as the authors build it: ``exp(-((x - mu) / (2 sigma))^2)``.

    That is a Gaussian of standard deviation ``sqrt(2)·sigma``; ``sigma`` keeps the authors' meaning
    (docs/methods.md SHARED-KERNEL).
    """
    grid = torch.arange(kernel_size, dtype=torch.float32)
    mean = (kernel_size - 1) / 2
    line = torch.exp(-(((grid - mean) / (2 * sigma)) ** 2))
    kernel = line[:, None] * line[None, :]
    return kernel / kernel.sum()


def default_token_columns(token_count: int) -> torch.Tensor:
    """Positions the re-softmax runs over: every chunk without its ``<sot>`` and its last slot.

    For one 77-chunk this is the authors' ``[1:-1]`` slice (``<eot>`` and padding stay in).
    """
    return torch.tensor([p for p in range(token_count) if p % CHUNK_LENGTH not in (0, CHUNK_LENGTH - 1)])


def prompt_token_columns(word_positions: Sequence[int]) -> torch.Tensor:
    """Columns for A&E's ``normalize_eot`` variant: the prompt's word tokens only, no ``<eot>`` or padding."""
    return torch.tensor(sorted(word_positions))


def resoftmax(maps: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``softmax(100 · maps[..., columns])`` over the kept columns: ``[B, H, W, T] -> [B, H, W, len(columns)]``.

    Out of place, unlike the reference's ``*= 100`` on a view (docs/methods.md SHARED-INPLACE).
    """
    return torch.softmax(maps[..., columns.to(maps.device)].float() * RESOFTMAX_SCALE, dim=-1)


def smooth(maps: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Reflect-pad by ``k // 2`` and apply ``kernel`` to each map: ``[B, S, H, W] -> [B, S, H, W]``."""
    batch, count, height, width = maps.shape
    pad = kernel.shape[-1] // 2
    flat = F.pad(maps.reshape(batch * count, 1, height, width), (pad, pad, pad, pad), mode="reflect")
    weight = kernel.to(device=maps.device, dtype=maps.dtype)[None, None]
    return F.conv2d(flat, weight).reshape(batch, count, height, width)


def subject_maps(
    maps: torch.Tensor,
    subjects: Sequence[Sequence[int]],
    columns: torch.Tensor | None = None,
    kernel: torch.Tensor | None = None,
) -> torch.Tensor:
    """Re-softmaxed (and, with ``kernel``, smoothed) maps of each subject: ``[B, H, W, T] -> [B, S, H, W]``.

    A subject of several token pieces gets the sum of its pieces' maps: the attention mass on the whole word.
    ``columns`` defaults to :func:`default_token_columns`; every subject position must be among them.
    """
    if columns is None:
        columns = default_token_columns(maps.shape[-1])
    column_of = {int(position): index for index, position in enumerate(columns.tolist())}
    missing = [p for positions in subjects for p in positions if p not in column_of]
    if missing:
        raise ValueError(f"token positions {missing} are outside the attention columns {columns.tolist()}")
    probabilities = resoftmax(maps, columns)
    per_subject = torch.stack(
        [probabilities[..., [column_of[p] for p in positions]].sum(dim=-1) for positions in subjects], dim=1
    )
    return per_subject if kernel is None else smooth(per_subject, kernel)
