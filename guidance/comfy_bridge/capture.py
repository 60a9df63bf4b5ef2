"""Where a sampling run reads attention: the UNet's cross-attention layers or a diffusion transformer's joint blocks.

A capture gives the model options that record into a run's store, for the sampling passes (AG_ATTENTION) and for
the guidance passes (the maps the loss reads, with the early stop), and turns a store into the levels' maps.
"""
from __future__ import annotations

import math
from typing import Any, Protocol

import torch

from ..capture.sites import GUIDANCE_LEVEL, sites_at_level
from ..capture.store import AttentionStore
from ..engine.spec import GuidanceSpec, LevelMaps
from ..subjects.tokens import SubjectTokens
from .compat import is_flow_model, with_differentiable_attention
from .dit.capture import DiTCapture
from .dit.families import DIT_FAMILIES, dit_family, is_transformer
from .plan import GuidancePlan
from .recorder import options_with_recorder, options_with_store
from .sites import SUPPORTED_FAMILIES, UnsupportedModelError, attention_sites, guidance_sites


class AttentionCapture(Protocol):
    def recording_options(self, model_options: dict, store: AttentionStore, entries: frozenset | None = None
                          ) -> dict:
        """Options with which the sampling passes record the latent/4 maps of the positive ``entries`` (uuids;
        None: every positive entry) into ``store``."""

    def guidance_plan(self, model_options: dict, store: AttentionStore, spec: GuidanceSpec | None) -> GuidancePlan:
        """Options with which a subject pass records what ``spec``'s terms read (None: the latent/4 maps alone)
        into ``store``, every attention call differentiable."""

    def level_maps(self, store: AttentionStore, levels: list[int]) -> dict[int, LevelMaps]:
        """The recorded maps per level."""


class UNetCapture:
    """Cross-attention (attn2) replace patches on the UNet's SpatialTransformer blocks."""

    def __init__(self, base_model: Any) -> None:
        self.base_model = base_model
        self.sites = guidance_sites(base_model)

    def recording_options(self, model_options: dict, store: AttentionStore, entries: frozenset | None = None
                          ) -> dict:
        return options_with_store(options_with_recorder(model_options, self.sites), store, entries)

    def guidance_plan(self, model_options: dict, store: AttentionStore, spec: GuidanceSpec | None) -> GuidancePlan:
        # The subject pass records latent/4 and the extra levels the terms read (those this UNet has).
        all_sites = attention_sites(self.base_model)
        levels = [GUIDANCE_LEVEL] + [level for level in (spec.levels if spec else ())
                                     if level != GUIDANCE_LEVEL and sites_at_level(all_sites, level)]
        pass_sites = [site for level in levels for site in sites_at_level(all_sites, level)]
        options = with_differentiable_attention(
            options_with_store(options_with_recorder(model_options, pass_sites), store))
        return GuidancePlan(options, levels, sum(site.depth for site in pass_sites))

    def level_maps(self, store: AttentionStore, levels: list[int]) -> dict[int, LevelMaps]:
        return {level: LevelMaps(store.aggregate(level), store.head_count(level)) for level in levels}


def attention_capture(base_model: Any, latent: torch.Tensor, tokens: SubjectTokens | None,
                      dit_blocks: tuple[int, ...] | None) -> AttentionCapture:
    """The capture for ``base_model``'s family; raises :class:`UnsupportedModelError` for other models and
    ``TokenLayoutError`` for tokens another family's text encoder made."""
    diffusion_model = base_model.diffusion_model
    family = dit_family(diffusion_model)
    if family is not None:
        grid = (math.ceil(latent.shape[-2] / 2), math.ceil(latent.shape[-1] / 2))
        return DiTCapture(diffusion_model, family, grid, tokens, dit_blocks)
    if is_transformer(diffusion_model):
        raise UnsupportedModelError(
            f"this model is a {type(diffusion_model).__name__} transformer, which attention guidance does not read; "
            f"it supports {SUPPORTED_FAMILIES}. Use one of those models."
        )
    return UNetCapture(base_model)


def check_guidance(model: Any, spec: GuidanceSpec) -> None:
    """What sampling ``model`` with ``spec`` would refuse, raised before sampling: :class:`UnsupportedModelError`
    (the model), ``TokenLayoutError`` or ``BlockSelectionError`` (the tokens or blocks of the guidance), ValueError
    (a SOC step size on a model that is not a flow)."""
    base_model = getattr(model, "model", model)
    attention_capture(base_model, torch.zeros(1, 1, 2, 2), spec.tokens, spec.dit_blocks)
    spec.for_run([1.0, 0.0], is_flow_model(base_model))


__all__ = ["DIT_FAMILIES", "AttentionCapture", "GuidancePlan", "UNetCapture", "attention_capture", "check_guidance"]
