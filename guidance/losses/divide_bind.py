"""Divide & Bind loss (Li et al., BMVC 2023) as the authors' latest pipeline computes it (docs/methods.md, "Divide &
Bind").

Shapes:
    maps            ``[B, H, W, T]`` head- and layer-averaged cross-attention of the latent/4 layers.
    attribute_maps  ``[B, H, W, T]`` attention of the latent/1 and latent/2 layers on the same grid
                    (:func:`aggregate_attribute_maps`), used by the binding term only.
    subjects        one sequence of token positions per subject.
    attributes      per subject, a sequence of attribute words, each a sequence of token positions;
                    an empty sequence means "no attribute" (the authors' sentinel 0).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..engine.schedule import percent_to_step
from . import maps as M

Mode = Literal["tv", "tv_bind", "max"]
TvVariant = Literal["coded", "textbook"]

@dataclass(frozen=True)
class DivideBindConfig:
    """Divide & Bind settings; defaults are the authors' latest pipeline (docs/methods.md, "D&B defaults").

    ``mode``: ``"tv"`` (attendance only, the latest pipeline's default), ``"tv_bind"`` (attendance + binding, used
    for the paper's examples) or ``"max"`` (A&E-like maximum attention).

    ``tv_variant``: ``"coded"`` (default) reproduces the authors' code, whose vertical term compares every row with
    the last row (docs/methods.md D&B-TV); the refinement thresholds 0.05 / 0.2 / 0.3 and the binding quantile
    cut-off 0.1 were tuned by the authors on it. ``"textbook"`` is the paper's total variation, the mean absolute
    horizontal plus the mean absolute vertical neighbour difference; it is smaller on the same map (0.032 vs 0.050
    in the fixture) and the thresholds are not recalibrated for it.

    ``bind_coefficients``: ``(percent of the steps, coefficient)``: the binding weight from that point on
    (1 / 5 / 10 from loop index 0 / 10 / 20 of 50).
    ``attribute_layer_divisors``: attribute maps come from the latent/1 and latent/2 layers (64 and 32 at 512 px).
    The refinement schedule the authors use with these settings is :func:`~..methods.divide_bind.paper_schedule`.
    """

    mode: Mode = "tv"
    tv_variant: TvVariant = "coded"
    kernel_size: int = 3
    sigma: float = 0.5
    bind_coefficients: tuple[tuple[float, float], ...] = ((0.0, 1.0), (20.0, 5.0), (40.0, 10.0))
    bind_quantile_low_tv: float = 0.3
    bind_quantile_high_tv: float = 0.2
    bind_tv_cutoff: float = 0.1
    bind_epsilon: float = 1e-5
    attribute_layer_divisors: tuple[int, ...] = (1, 2)

    def __post_init__(self) -> None:
        if self.mode not in ("tv", "tv_bind", "max"):
            raise ValueError(f"DivideBindConfig.mode must be 'tv', 'tv_bind' or 'max', got {self.mode!r}")
        if self.tv_variant not in ("coded", "textbook"):
            raise ValueError(f"DivideBindConfig.tv_variant must be 'coded' or 'textbook', got {self.tv_variant!r}")
        if not self.bind_coefficients or self.bind_coefficients[0][0] != 0.0:
            raise ValueError(f"bind_coefficients must start at 0 %, got {self.bind_coefficients}")

    def binding_coefficient(self, step: int, steps: int) -> float:
        """``coef(i)`` at loop index ``step`` of a ``steps``-step run: the last entry that starts at or before it."""
        return next(
            value for percent, value in reversed(self.bind_coefficients) if step >= percent_to_step(percent, steps)
        )


def needs_refinement(indicator: torch.Tensor, threshold: float) -> torch.Tensor:
    """D&B's refinement criterion ``indicator < threshold``, per image ``[B] -> [B]`` bool (§3.5)."""
    return indicator < threshold


@dataclass(frozen=True)
class DivideBindResult:
    """``loss [B]``: Eq. ``L = -min_j T_j``; ``indicator [B]``: refinement indicator (§3.5);
    ``terms``, ``tv``, ``max_attention``, ``jsd``: per-subject ``[B, S]`` (``jsd`` summed over the subject's
    attributes, 0 without any)."""

    loss: torch.Tensor
    indicator: torch.Tensor
    terms: torch.Tensor
    tv: torch.Tensor
    max_attention: torch.Tensor
    jsd: torch.Tensor


def total_variation(maps: torch.Tensor, variant: TvVariant) -> torch.Tensor:
    """Attendance term ``TV``: ``[..., H, W] -> [...]``.

    ``textbook``: ``mean|A[y, x] - A[y, x+1]| + mean|A[y, x] - A[y+1, x]|``.
    ``coded``: the same horizontal term plus ``mean_{y >= 1, x} |A[H-1, x] - A[y, x]|`` (docs/methods.md D&B-TV).
    """
    horizontal = (maps[..., :, :-1] - maps[..., :, 1:]).abs().mean(dim=(-2, -1))
    if variant == "coded":
        vertical = (maps[..., -1:, :] - maps[..., 1:, :]).abs().mean(dim=(-2, -1))
    else:
        vertical = (maps[..., :-1, :] - maps[..., 1:, :]).abs().mean(dim=(-2, -1))
    return horizontal + vertical


def binding_distributions(
    objects: torch.Tensor, attributes: torch.Tensor, quantile: torch.Tensor, epsilon: float = 1e-5
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two pixel distributions the binding JSD compares (§3.3): ``[N, H, W], [N, H, W], [N] -> 2 × [N, H·W]``.

    As coded: the attribute map is rescaled to the object's maximum, both maps go through a temperature-1
    softmax over pixels, the object-derived threshold ``quantile · max p`` is cut from both, ``epsilon`` is
    added and nothing is renormalised (docs/methods.md D&B-JSD).
    """
    rescaled = attributes / attributes.amax(dim=(-2, -1), keepdim=True) * objects.amax(dim=(-2, -1), keepdim=True)
    p = torch.softmax(objects.flatten(-2), dim=-1)
    q = torch.softmax(rescaled.flatten(-2), dim=-1)
    threshold = quantile[:, None] * p.amax(dim=-1, keepdim=True)
    return F.relu(p - threshold) + epsilon, F.relu(q - threshold) + epsilon


def jensen_shannon(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``JSD = ½[KL(p‖m) + KL(q‖m)]`` with ``m = (p + q) / 2`` and natural logs, over the last axis.

    Shapes: ``[..., P], [..., P] -> [...]``.

    ``p`` and ``q`` are positive but need not sum to 1 (the binding term does not renormalise).
    """
    log_m = (0.5 * (p + q)).log()
    kl_p = F.kl_div(log_m, p.log(), reduction="none", log_target=True).sum(dim=-1)
    kl_q = F.kl_div(log_m, q.log(), reduction="none", log_target=True).sum(dim=-1)
    return 0.5 * (kl_p + kl_q)


def divide_bind_loss(
    maps: torch.Tensor,
    subjects: Sequence[Sequence[int]],
    step: int,
    steps: int,
    config: DivideBindConfig = DivideBindConfig(),
    attributes: Sequence[Sequence[Sequence[int]]] | None = None,
    attribute_maps: torch.Tensor | None = None,
    columns: torch.Tensor | None = None,
) -> DivideBindResult:
    """Per-image Divide & Bind loss (docs/methods.md, "D&B loss and refinement").

    Per subject ``j`` with smoothed map ``Â_j``: ``T_j = TV_j`` (``tv``),
    ``T_j = TV_j - coef(i)·Σ_k JSD(Â_j, Ĉ_jk)`` over its attributes ``k`` (``tv_bind``),
    or ``T_j = max Â_j`` (``max``). The loss is ``-min_j T_j``, with no ``1 -`` and no clamp (docs/methods.md D&B-MAX).
    ``attributes`` and ``attribute_maps`` are used in ``tv_bind`` mode only.

    maps, attribute_maps: ``[B, H, W, T]``; ``step``: the loop index ``i`` of a ``steps``-step run (sets
    ``coef``); ``columns``: the re-softmax columns (default: each chunk's ``[1:-1]``).
    Returns :class:`DivideBindResult` with ``[B]`` losses.
    """
    if not subjects:
        raise ValueError("Divide & Bind needs at least one subject")
    kernel = M.gaussian_kernel(config.kernel_size, config.sigma)
    objects = M.subject_maps(maps.float(), subjects, columns, kernel)
    tv = total_variation(objects, config.tv_variant)
    peaks = objects.amax(dim=(-2, -1))
    jsd = torch.zeros_like(tv)
    if config.mode == "max":
        terms, indicator = peaks, peaks.amin(dim=1)
    else:
        if config.mode == "tv_bind" and attributes is not None:
            jsd = _attribute_divergence(objects, tv, subjects, attributes, attribute_maps, columns, kernel, config)
        terms = tv - config.binding_coefficient(step, steps) * jsd
        indicator = tv.amin(dim=1)
    loss = (-terms).amax(dim=1)
    return DivideBindResult(loss, indicator.detach(), terms, tv, peaks, jsd)


def _attribute_divergence(
    objects: torch.Tensor,
    tv: torch.Tensor,
    subjects: Sequence[Sequence[int]],
    attributes: Sequence[Sequence[Sequence[int]]],
    attribute_maps: torch.Tensor | None,
    columns: torch.Tensor | None,
    kernel: torch.Tensor,
    config: DivideBindConfig,
) -> torch.Tensor:
    """JSD summed over each subject's attributes: ``[B, S, H, W], [B, S] -> [B, S]``."""
    if len(attributes) != len(subjects):
        raise ValueError(f"attributes has {len(attributes)} entries for {len(subjects)} subjects")
    owners = [j for j, groups in enumerate(attributes) for _ in groups]
    if not owners:
        return torch.zeros_like(tv)
    if attribute_maps is None:
        raise ValueError("tv_bind with attributes needs attribute_maps (build them with aggregate_attribute_maps)")
    if attribute_maps.shape[:-1] != objects.shape[:1] + objects.shape[2:]:
        raise ValueError(f"attribute_maps {tuple(attribute_maps.shape)} do not match the object grid")
    groups = [group for subject_groups in attributes for group in subject_groups]
    colours = M.subject_maps(attribute_maps.float(), groups, columns, kernel)
    batch = objects.shape[0]
    owner = torch.tensor(owners, device=objects.device)
    low_tv = tv[:, owner] < config.bind_tv_cutoff
    quantile = torch.where(low_tv, config.bind_quantile_low_tv, config.bind_quantile_high_tv)
    p, q = binding_distributions(
        objects[:, owner].flatten(0, 1), colours.flatten(0, 1), quantile.flatten(), config.bind_epsilon
    )
    divergence = jensen_shannon(p, q).reshape(batch, len(owners))
    return torch.zeros_like(tv).index_add(1, owner, divergence)


def aggregate_attribute_maps(
    layer_maps: Sequence[torch.Tensor], head_counts: Sequence[int], size: tuple[int, int]
) -> torch.Tensor:
    """Attribute attention on the loss grid, as D&B's ``aggregate_attention_intermediate`` builds it
    (docs/methods.md D&B-ATTR-MAPS).

    Each layer's head-averaged map ``[B, h_k, w_k, T]`` is nearest-resampled to ``size = (H, W)`` (stride sampling
    ``(y·h_k/H, x·w_k/W)`` for integer ratios), then the layers are averaged weighted by ``head_counts``, which
    equals the authors' plain mean over every head of every layer. Returns ``[B, H, W, T]``.
    """
    if not layer_maps or len(layer_maps) != len(head_counts):
        raise ValueError(
            f"need one head count per layer map, got {len(layer_maps)} maps and {len(head_counts)} counts"
        )
    total = sum(
        heads * F.interpolate(layer.float().permute(0, 3, 1, 2), size=size, mode="nearest")
        for layer, heads in zip(layer_maps, head_counts)
    )
    return (total / sum(head_counts)).permute(0, 2, 3, 1)
