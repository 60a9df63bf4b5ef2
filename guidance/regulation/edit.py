"""Attention Regulation on the conditional rows of one cross-attention call (docs/methods.md, "AR inside one layer
call").

Shapes (S = len(targets), K = ``basis_size(h, w)``, T tokens):
    logits         ``[images, heads, h·w, T]`` pre-softmax scores ``Q Kᵀ / √d`` of the conditional rows
    init_weights   ``[images, heads, K, S]`` initial basis weights W0 (``initial_weights``)
    previous/state ``[images, heads, h, w, S]`` raw best bias of the previous edited step of the same layer and
                   branch; the caller keys it by layer identity (docs/methods.md AR-STATE-KEY)
    probabilities  ``[images, heads, h·w, T]`` fp32

The step: search the bias (``bias.optimise_bias``), blend it with the previous step's bias
(``M = 0.25·M_prev + 0.75·M_best``, Eq. 14, the step-0 partner being the random initial pattern ``Σ W0 G`` as
coded, docs/methods.md AR-EMA-START), scale by ``0.99^step`` (Eq. 15), add to the target logits, softmax.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .basis import basis_size, gaussian_basis
from .bias import LossTerms, optimise_bias
from .config import RegulationConfig


@dataclass(frozen=True)
class RegulationDiagnostics:
    """What one call did. G groups share a best iterate: 1 in reference mode, ``images`` in default mode.

    losses          ``[iterations, G]`` loss of each iterate before its update
    best_iteration  ``[G]`` int64 (−1: no finite loss, no new bias)
    initial_terms   ``LossTerms`` of ``[G]``: the unweighted terms of Eq. 9 at iteration 0
    first_gradient  ``[images, heads, K, S]`` gradient of the descended objective at iteration 0 (reference mode:
                    of the loss averaged over all rows; default mode: of the sum of per-row losses)
    iterates        ``[iterations, images, heads, K, S]`` the weights each loss was evaluated at
    ema_partner     ``[images, heads, h, w, S]`` the bias blended with this step's best one
    applied_bias    ``[images, heads, h, w, S]`` ``0.99^step · (0.25·partner + 0.75·best)``, added to the targets
    """

    losses: torch.Tensor
    best_iteration: torch.Tensor
    initial_terms: LossTerms
    first_gradient: torch.Tensor
    iterates: torch.Tensor
    ema_partner: torch.Tensor
    applied_bias: torch.Tensor

    @property
    def best_loss(self) -> torch.Tensor:
        """``[G]`` loss of each group's best iterate."""
        index = self.best_iteration.clamp(min=0)
        return self.losses.gather(0, index[None]).squeeze(0)


class RegulationOutput(NamedTuple):
    """``probabilities`` ``[images, heads, h·w, T]``, ``state`` ``[images, heads, h, w, S]`` for the next step."""

    probabilities: torch.Tensor
    state: torch.Tensor
    diagnostics: RegulationDiagnostics


def initial_weights(
    generator: torch.Generator, images: int, heads: int, height: int, width: int, target_count: int
) -> torch.Tensor:
    """W0 ``~ U[0, 1)`` of shape ``[images, heads, K, S]`` drawn from ``generator``, on its device.

    The authors draw from the global RNG (docs/methods.md AR-RNG); the caller owns a dedicated generator instead.
    """
    shape = (images, heads, basis_size(height, width), target_count)
    return torch.rand(shape, generator=generator, device=generator.device)


def blend_bias(best: torch.Tensor, partner: torch.Tensor, step: int, config: RegulationConfig) -> torch.Tensor:
    """``global_decay^step · (ema_decay · partner + (1 − ema_decay) · best)`` (Eqs. 14-15, op order as coded)."""
    return config.global_decay**step * (partner * config.ema_decay + best * (1 - config.ema_decay))


def edited_logits(
    logits: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor, config: RegulationConfig
) -> torch.Tensor:
    """``logits`` ``[..., T]`` with ``bias`` ``[..., S]`` added to the target columns; reference mode rounds the
    result to fp16 as coded (docs/methods.md AR-FP16) and returns it as fp32."""
    edited = logits.index_add(-1, targets, bias)
    return edited.half().float() if config.mode == "reference" else edited


def edited_probabilities(
    logits: torch.Tensor, edited: torch.Tensor, eos_position: int | None, config: RegulationConfig
) -> torch.Tensor:
    """``softmax_T(edited)``; reference mode then writes the unedited ``<sot>`` and ``<eot>`` probabilities back
    (docs/methods.md AR-SOT-EOT), so its rows no longer sum to 1."""
    probabilities = edited.softmax(dim=-1)
    if config.mode == "default":
        return probabilities
    columns = torch.tensor([0, eos_position], device=logits.device)
    return probabilities.index_copy(-1, columns, logits.softmax(dim=-1).index_select(-1, columns))


def _check(
    logits: torch.Tensor,
    height: int,
    width: int,
    targets: Sequence[int],
    step: int,
    previous: torch.Tensor | None,
    init_weights: torch.Tensor,
    eos_position: int | None,
    config: RegulationConfig,
) -> None:
    if logits.ndim != 4 or logits.shape[2] != height * width:
        raise ValueError(f"logits must be [images, heads, {height}·{width}, T], got {tuple(logits.shape)}")
    images, heads, _, tokens = logits.shape
    count = len(targets)
    if count == 0 or len(set(targets)) != count or not all(0 <= t < tokens for t in targets):
        raise ValueError(f"targets must be distinct token positions in [0, {tokens}), got {list(targets)}")
    if step < 0:
        raise ValueError(f"step must not be negative, got {step}")
    expected = (images, heads, basis_size(height, width), count)
    if tuple(init_weights.shape) != expected:
        raise ValueError(f"init_weights must have shape {expected}, got {tuple(init_weights.shape)}")
    if previous is not None and tuple(previous.shape) != (images, heads, height, width, count):
        raise ValueError(
            f"previous must have shape {(images, heads, height, width, count)}, got {tuple(previous.shape)}"
        )
    if config.mode == "reference" and (eos_position is None or not 0 <= eos_position < tokens):
        raise ValueError(f"reference mode needs the <eot> position in [0, {tokens}), got {eos_position}")


def regulate(
    logits: torch.Tensor,
    height: int,
    width: int,
    targets: Sequence[int],
    step: int,
    previous: torch.Tensor | None,
    init_weights: torch.Tensor,
    eos_position: int | None = None,
    config: RegulationConfig = RegulationConfig(),
) -> RegulationOutput:
    """Edit one layer call's conditional rows: ``[images, heads, h·w, T]`` logits -> probabilities, state.

    ``targets`` are token positions (shared by all images), ``step`` the edit step (0-based, for the decay),
    ``previous`` the ``state`` this function returned at the previous edited step for the same layer and branch,
    or None to blend with the random initial pattern. ``eos_position`` (first ``<eot>``) is used in reference
    mode only. Maps with a side below 16 are rejected (``supports_map``): callers skip such layers.

    Safe under the host's ``torch.inference_mode()`` and ``no_grad``: inputs are copied, autograd is enabled
    locally for the weights only, and all returned tensors are ordinary tensors without gradient.
    """
    _check(logits, height, width, targets, step, previous, init_weights, eos_position, config)
    images, heads, pixels, tokens = logits.shape
    rows, count = images * heads, len(targets)
    device = logits.device
    with torch.inference_mode(False), torch.enable_grad():
        scores = logits.to(torch.float32, copy=True).detach().reshape(rows, height, width, tokens)
        index = torch.tensor(list(targets), dtype=torch.int64, device=device)
        basis = gaussian_basis(height, width, device)
        start = init_weights.to(device, torch.float32, copy=True).detach().reshape(rows, -1, count)
        search = optimise_bias(scores, index, basis, start, images, config)
        if previous is None:
            partner = search.initial_bias
        else:
            partner = previous.to(device, torch.float32, copy=True).detach().reshape(rows, height, width, count)
        with torch.no_grad():
            applied = blend_bias(search.best_bias, partner, step, config)
            probabilities = edited_probabilities(
                scores, edited_logits(scores, index, applied, config), eos_position, config
            )
    maps = (images, heads, height, width, count)
    diagnostics = RegulationDiagnostics(
        losses=search.losses,
        best_iteration=search.best_iteration,
        initial_terms=search.initial_terms,
        first_gradient=search.first_gradient.reshape(images, heads, -1, count),
        iterates=search.iterates.reshape(-1, images, heads, search.iterates.shape[-2], count),
        ema_partner=partner.reshape(maps),
        applied_bias=applied.reshape(maps),
    )
    probabilities = probabilities.reshape(images, heads, pixels, tokens)
    return RegulationOutput(probabilities, search.best_bias.reshape(maps), diagnostics)
