"""Gaussian basis of the additive logit bias (Eqs. 11-12; docs/methods.md, "AR bias search", docs/methods.md
AR-MAP-SIZE).

Per axis of an ``h × w`` map: ``σ = size // 16`` and centres ``2σ, 4σ, … < size``. Basis function ``k`` is
``G_k[y, x] = exp(−((x − x0)² / (2σ_x²) + (y − y0)² / (2σ_y²)))`` (peak 1, not normalised), with ``x0`` in the
outer loop: ``k = a · len(y-centres) + b`` for ``x0 = centres_x[a]``, ``y0 = centres_y[b]``. Square maps give
the coded basis bit for bit (49 functions at 16, 32 and 64). An axis shorter than 16 has ``σ = 0`` and no basis:
callers skip such layers (``supports_map``).
"""
from __future__ import annotations

import torch

MIN_MAP_SIZE = 16


def supports_map(height: int, width: int) -> bool:
    """Whether a ``height × width`` attention map can be edited (both sides at least 16)."""
    return min(height, width) >= MIN_MAP_SIZE


def axis_centres(size: int) -> tuple[int, list[int]]:
    """``(σ, centres)`` of an axis of ``size`` pixels, as coded: ``σ = size // 16``, centres ``range(2σ, size, 2σ)``."""
    if size < MIN_MAP_SIZE:
        raise ValueError(
            f"attention maps need at least {MIN_MAP_SIZE} pixels per side for the regulation basis, got {size}; "
            "skip this layer"
        )
    sigma = size // MIN_MAP_SIZE
    return sigma, list(range(2 * sigma, size, 2 * sigma))


def basis_size(height: int, width: int) -> int:
    """Number K of basis functions on an ``height × width`` map."""
    return len(axis_centres(height)[1]) * len(axis_centres(width)[1])


def gaussian_basis(height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The basis ``[K, height, width]`` (fp32)."""
    sigma_y, centres_y = axis_centres(height)
    sigma_x, centres_x = axis_centres(width)
    x0 = torch.tensor(centres_x, dtype=torch.float32, device=device).repeat_interleave(len(centres_y))
    y0 = torch.tensor(centres_y, dtype=torch.float32, device=device).repeat(len(centres_x))
    xs = torch.arange(width, dtype=torch.float32, device=device)
    ys = torch.arange(height, dtype=torch.float32, device=device)
    dx2 = (xs[None, None, :] - x0[:, None, None]) ** 2
    dy2 = (ys[None, :, None] - y0[:, None, None]) ** 2
    # One division of an exact integer numerator: for σ_x = σ_y this rounds exactly like the coded
    # ``(dx² + dy²) / (2σ²)``, so square maps reproduce the authors' basis bit for bit.
    exponent = -(dx2 * sigma_y**2 + dy2 * sigma_x**2) / (2 * sigma_x**2 * sigma_y**2)
    return torch.exp(exponent)
