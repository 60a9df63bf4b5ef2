"""Reading a diffusion transformer's attention in a sampling run: joint-block patches for the sampling passes
(AG_ATTENTION) and the guidance passes (the loss's maps, the early stop, the autograd-safe blocks)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...capture.blocks import resolve_blocks
from ...capture.sites import GUIDANCE_LEVEL
from ...capture.store import AttentionStore
from ...engine.spec import GuidanceSpec, LevelMaps
from ...subjects.tokens import SubjectTokens
from ..plan import GuidancePlan
from ..recorder import options_with_store
from .blocks import CHECKPOINTED, STOCK, BlockPlan, JointBlockPatch
from .families import GRID_TO_LEVEL, DiTFamily


class TokenLayoutError(ValueError):
    """Subject tokens made by a text encoder the model does not read."""


def check_token_layout(family: DiTFamily, tokens: SubjectTokens) -> None:
    if not family.accepts(tokens.encoders):
        made = " + ".join(encoder.upper() for encoder in tokens.encoders)
        reads = " or ".join(" + ".join(e.upper() for e in layout) for layout in family.encoder_layouts)
        raise TokenLayoutError(
            f"the subject tokens come from a {made} text encoder, but this {family.name} model reads {reads} tokens. "
            f"Encode the prompt with CLIP Text Encode (with subjects) or Subject Token Picker fed by the CLIP that "
            f"belongs to this model (its checkpoint's, or DualCLIPLoader / TripleCLIPLoader / CLIPLoader for "
            f"{family.name})"
        )


def with_block_patches(model_options: dict, make: dict[int, Callable[[Callable | None], JointBlockPatch]]) -> dict:
    """Copy-on-write ``model_options`` with ``make[i](wrapped)`` in the ``("double_block", i)`` replace slots; a
    patch of the pack already there is replaced (keeping what it wrapped), another pack's is wrapped."""
    transformer_options = dict(model_options.get("transformer_options", {}))
    patches_replace = dict(transformer_options.get("patches_replace", {}))
    dit = dict(patches_replace.get("dit", {}))
    for index, build in make.items():
        wrapped = dit.get(("double_block", index))
        if isinstance(wrapped, JointBlockPatch):
            wrapped = wrapped.wrapped
        dit[("double_block", index)] = build(wrapped)
    patches_replace["dit"] = dit
    transformer_options["patches_replace"] = patches_replace
    return {**model_options, "transformer_options": transformer_options}


class DiTCapture:
    """A diffusion transformer's joint blocks ``blocks`` (None: all) on this run's image token ``grid``."""

    def __init__(self, diffusion_model: Any, family: DiTFamily, grid: tuple[int, int],
                 tokens: SubjectTokens | None, blocks: tuple[int, ...] | None) -> None:
        if tokens is not None:
            check_token_layout(family, tokens)
        self.family = family
        self.grid = grid
        self.blocks = resolve_blocks(blocks, family.blocks)
        self._modules = diffusion_model.joint_blocks if family.block == "mmdit" else diffusion_model.double_blocks

    def _patches(self, model_options: dict, plans: dict[int, BlockPlan]) -> dict:
        return with_block_patches(model_options, {
            index: (lambda wrapped, index=index, plan=plan:
                    JointBlockPatch(self._modules[index], plan, self.family.text_offset, self.grid, wrapped))
            for index, plan in plans.items()
        })

    def recording_options(self, model_options: dict, store: AttentionStore, entries: frozenset | None = None
                          ) -> dict:
        plans = {index: BlockPlan(record=True, levels=(GUIDANCE_LEVEL,)) for index in self.blocks}
        return options_with_store(self._patches(model_options, plans), store, entries)

    def guidance_plan(self, model_options: dict, store: AttentionStore, spec: GuidanceSpec | None,
                      block_mode: str | None = None) -> GuidancePlan:
        """Every block up to the deepest read one is patched (later blocks never run): read blocks record, the
        deepest stops the model, all use a differentiable attention backend. ``block_mode`` (a
        :class:`~.blocks.BlockPlan` mode) defaults to checkpointed out-of-place copies for FLUX / Chroma and the stock
        (host-checkpointed) block for SD3. Extra levels: latent/2 (the token grid) when a term asks for it."""
        levels = [GUIDANCE_LEVEL] + [level for level in (spec.levels if spec else ()) if level == GRID_TO_LEVEL]
        if block_mode is None:
            block_mode = CHECKPOINTED if self.family.block in ("flux", "chroma") else STOCK
        deepest = max(self.blocks)
        joint = spec is not None and spec.joint_attention
        plans = {index: BlockPlan(record=index in self.blocks, levels=tuple(levels), joint=joint,
                                  stop=index == deepest, mode=block_mode, differentiable=True)
                 for index in range(deepest + 1)}
        options = options_with_store(self._patches(model_options, plans), store)
        return GuidancePlan(options, levels, len(self.blocks) * len(levels))

    def level_maps(self, store: AttentionStore, levels: list[int]) -> dict[int, LevelMaps]:
        return {level: LevelMaps(store.aggregate(level), store.head_count(level), store.aggregate_joint(level))
                for level in levels}
