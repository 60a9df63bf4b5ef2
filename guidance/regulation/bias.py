"""Search for the additive bias on the target logits (Eqs. 9, 11, 13; docs/methods.md, "AR bias search").

Shapes (N = images · heads rows of one layer call, K basis functions, S targets, T tokens):
    logits   ``[N, h, w, T]`` unedited pre-softmax scores (fp32)
    targets  ``[S]`` token positions (int64), distinct
    basis    ``[K, h, w]`` (``basis.gaussian_basis``)
    weights  ``[N, K, S]`` basis weights θ
    bias     ``[N, h, w, S]`` ``Σ_k W[:, k, s] · G_k``, added to the target columns only

Each row moves as if optimised alone with step ``learning_rate`` (docs/methods.md AR-ROWS): the coded step ``N · lr`` on
a loss averaged over the N rows, or ``lr`` on the sum of per-row losses. Rows are coupled only through the choice
of the best iterate, which one group of rows shares: the whole layer call in reference mode, one image otherwise.

The search runs ``iterations`` forward and backward passes per layer call, so its cost is kept to the S target
columns in default mode: the other columns enter the softmax only through their log-sum-exp, which the bias never
changes, and the bias is one matrix product. Reference mode keeps the coded arithmetic (full softmax, broadcast
sum), whose rounding the fixture's late iterates depend on.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .config import RegulationConfig


class LossTerms(NamedTuple):
    """The unweighted terms of Eq. 9 (as coded): ``L = γ·mean(quantile) + δ·mean(coverage) + ε·mean(weights)``.

    Per element: ``quantile`` and ``coverage`` ``[N, S]``, ``weights`` ``[N, K, S]``; ``group_means`` turns
    each into ``[G]``.
    """

    quantile: torch.Tensor
    coverage: torch.Tensor
    weights: torch.Tensor


@dataclass(frozen=True)
class BiasSearch:
    """Outcome of the gradient descent on one layer call (G groups share a best iterate).

    best_bias       ``[N, h, w, S]`` bias of each group's best iterate (zero if no loss was finite)
    initial_bias    ``[N, h, w, S]`` the random initial pattern ``Σ_k W0_k G_k``
    losses          ``[iterations, G]`` loss of each iterate, evaluated before its update
    best_iteration  ``[G]`` int64, −1 if no loss was finite
    initial_terms   ``LossTerms`` of ``[G]`` group means at iteration 0
    first_gradient  ``[N, K, S]`` gradient of the descended objective at iteration 0
    iterates        ``[iterations, N, K, S]`` the weights each loss was evaluated at
    """

    best_bias: torch.Tensor
    initial_bias: torch.Tensor
    losses: torch.Tensor
    best_iteration: torch.Tensor
    initial_terms: LossTerms
    first_gradient: torch.Tensor
    iterates: torch.Tensor


def basis_bias(basis: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``Σ_k W[:, k, s] · G_k``: ``[K, h, w]``, ``[N, K, S] -> [N, h, w, S]``.

    A broadcast product summed over the basis axis, as coded: with an effective step of 100 the later iterates
    depend on the summation order (an einsum shifts late losses by about 1e-4, docs/methods.md, "AR bias search").
    """
    return (basis[None, :, :, :, None] * weights[:, :, None, None, :]).sum(dim=1)


def target_attention(logits: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Target columns of ``softmax_T(logits + bias on the target columns)``: ``[N, h, w, T] -> [N, h, w, S]``.

    The softmax runs over all T tokens, ``<sot>`` and ``<eot>`` included (Eq. 10 as coded).
    """
    return logits.index_add(-1, targets, bias).softmax(dim=-1).index_select(-1, targets)


# weights [N, K, S] -> (bias [N, h, w, S], target attention [N, h, w, S])
BiasedAttention = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def coded_biased_attention(logits: torch.Tensor, targets: torch.Tensor, basis: torch.Tensor) -> BiasedAttention:
    """The bias and target attention as coded: broadcast basis sum, softmax over all T columns."""

    def biased(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bias = basis_bias(basis, weights)
        return bias, target_attention(logits, bias, targets)

    return biased


def target_only_biased_attention(logits: torch.Tensor, targets: torch.Tensor, basis: torch.Tensor) -> BiasedAttention:
    """The same values from the S target columns alone: ``softmax`` over ``[lse(other columns), target + bias]``."""
    rows, height, width, tokens = logits.shape
    others = torch.ones(tokens, dtype=torch.bool, device=logits.device)
    others[targets] = False
    rest = logits[..., others].logsumexp(dim=-1, keepdim=True)  # [N, h, w, 1], fixed during the search
    target_logits = logits.index_select(-1, targets)
    flat_basis = basis.flatten(1)  # [K, h·w]

    def biased(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bias = (weights.transpose(1, 2) @ flat_basis).transpose(1, 2).reshape(rows, height, width, -1)
        scores = target_logits + bias
        log_total = torch.logaddexp(rest, scores.logsumexp(dim=-1, keepdim=True))
        return bias, (scores - log_total).exp()

    return biased


def pixel_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Quantile ``q`` over axis 1 with linear interpolation, like ``torch.quantile``: ``[N, P, S] -> [N, S]``.

    The interpolation position ``q · (P − 1)`` is taken in double precision, which gives the fixture's values on
    every torch version: torch 2.14 forms it in fp32 (weight 0.4999939 instead of 0.5 at q = 0.9, P = 256), and
    the GD step of 100 turns that into loss differences of about 1e-4 after 20 iterations. Only the top
    ``P − below`` values are ordered (``topk``), which gives the same two order statistics as a full sort.
    """
    pixels = values.shape[1]
    position = q * (pixels - 1)
    below = min(math.floor(position), pixels - 2)
    top = values.topk(pixels - below, dim=1, sorted=True).values  # descending: ordered[below] is the last
    return torch.lerp(top[:, -1], top[:, -2], position - below)


def loss_terms(attention: torch.Tensor, weights: torch.Tensor, config: RegulationConfig) -> LossTerms:
    """Per-element terms of Eq. 9 for target attention ``[N, h, w, S]`` and weights ``[N, K, S]``.

    ``quantile``: ``(q_0.9(A_s) − 0.9)²`` over the h·w pixels (``pixel_quantile``). ``coverage``:
    ``(mean_pixels(A_s) − τ/S)²`` with ``τ = min(1, 0.2·S)``, the pixel mean taken as a sum of ``A / (h·w)``
    as coded. ``weights``: ``W²``.
    """
    rows, height, width, count = attention.shape
    peak = pixel_quantile(attention.reshape(rows, height * width, count), config.quantile)
    coverage = torch.sum(attention / (height * width), dim=(-2, -3))
    share = config.total_share(count) / count
    return LossTerms((peak - config.quantile_target) ** 2, (coverage - share) ** 2, weights**2)


def group_means(terms: LossTerms, groups: int) -> LossTerms:
    """Mean of each term over the rows (and targets, basis functions) of each of ``groups`` row blocks: ``[G]``."""
    return LossTerms(*(term.reshape(groups, -1).mean(dim=-1) for term in terms))


def _objective(terms: LossTerms, groups: int, config: RegulationConfig) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(value to differentiate, selection loss [G], step size)`` for the configured mode."""
    rows = terms.quantile.shape[0]
    if config.mode == "reference":
        loss = (
            config.gamma * terms.quantile.mean()
            + config.delta * terms.coverage.mean()
            + config.epsilon * terms.weights.mean()
        )
        return loss, loss.reshape(1), rows * config.learning_rate
    per_row = (
        config.gamma * terms.quantile.mean(dim=-1)
        + config.delta * terms.coverage.mean(dim=-1)
        + config.epsilon * terms.weights.mean(dim=(-2, -1))
    )
    return per_row.sum(), per_row.reshape(groups, -1).mean(dim=-1), config.learning_rate


class _Evaluation(NamedTuple):
    bias: torch.Tensor
    terms: LossTerms
    group_loss: torch.Tensor
    gradient: torch.Tensor
    step: float


def _evaluate(biased: BiasedAttention, weights: torch.Tensor, groups: int, config: RegulationConfig) -> _Evaluation:
    """Loss, selection loss and gradient at ``weights`` (detached results)."""
    weights = weights.detach().requires_grad_(True)
    bias, attention = biased(weights)
    terms = loss_terms(attention, weights, config)
    objective, group_loss, step = _objective(terms, groups, config)
    gradient = torch.autograd.grad(objective, weights)[0]
    return _Evaluation(bias.detach(), LossTerms(*(t.detach() for t in terms)), group_loss.detach(), gradient, step)


def optimise_bias(
    logits: torch.Tensor,
    targets: torch.Tensor,
    basis: torch.Tensor,
    weights: torch.Tensor,
    images: int,
    config: RegulationConfig,
) -> BiasSearch:
    """Plain gradient descent on W from ``weights`` for ``config.iterations`` steps, keeping the best iterate.

    Each iterate's loss is taken before its update, so the weights after the last update are never evaluated;
    an iterate replaces the best one only if its loss is strictly lower (as coded). Needs autograd enabled.
    """
    rows, height, width, _ = logits.shape
    groups = 1 if config.mode == "reference" else images
    rows_per_group = rows // groups
    best_bias = logits.new_zeros(rows, height, width, targets.numel())
    best_loss = logits.new_full((groups,), float("inf"))
    best_iteration = torch.full((groups,), -1, dtype=torch.int64, device=logits.device)
    weights = weights.detach()
    losses: list[torch.Tensor] = []
    iterates: list[torch.Tensor] = []
    biased = (coded_biased_attention if config.mode == "reference" else target_only_biased_attention)(
        logits, targets, basis
    )
    first = _evaluate(biased, weights, groups, config)
    evaluation = first
    for iteration in range(config.iterations):
        if iteration > 0:
            evaluation = _evaluate(biased, weights, groups, config)
        improved = evaluation.group_loss < best_loss
        row_improved = improved.repeat_interleave(rows_per_group)[:, None, None, None]
        best_bias = torch.where(row_improved, evaluation.bias, best_bias)
        best_loss = torch.where(improved, evaluation.group_loss, best_loss)
        best_iteration = best_iteration.masked_fill(improved, iteration)
        losses.append(evaluation.group_loss)
        iterates.append(weights)
        weights = weights - evaluation.step * evaluation.gradient
    return BiasSearch(
        best_bias=best_bias,
        initial_bias=first.bias,
        losses=torch.stack(losses),
        best_iteration=best_iteration,
        initial_terms=group_means(first.terms, groups),
        first_gradient=first.gradient,
        iterates=torch.stack(iterates),
    )
