"""Attention Regulation (Zhang et al., ECCV 2024): on-the-fly edit of cross-attention logits (docs/methods.md,
"Attention Regulation")."""
from .basis import MIN_MAP_SIZE, axis_centres, basis_size, gaussian_basis, supports_map
from .bias import (
    BiasSearch,
    LossTerms,
    basis_bias,
    coded_biased_attention,
    loss_terms,
    optimise_bias,
    target_attention,
    target_only_biased_attention,
)
from .config import RegulationConfig, RegulationMode
from .edit import (
    RegulationDiagnostics,
    RegulationOutput,
    blend_bias,
    edited_logits,
    edited_probabilities,
    initial_weights,
    regulate,
)

__all__ = [
    "MIN_MAP_SIZE",
    "BiasSearch",
    "LossTerms",
    "RegulationConfig",
    "RegulationDiagnostics",
    "RegulationMode",
    "RegulationOutput",
    "axis_centres",
    "basis_bias",
    "basis_size",
    "blend_bias",
    "coded_biased_attention",
    "edited_logits",
    "edited_probabilities",
    "gaussian_basis",
    "initial_weights",
    "loss_terms",
    "optimise_bias",
    "regulate",
    "supports_map",
    "target_attention",
    "target_only_biased_attention",
]
