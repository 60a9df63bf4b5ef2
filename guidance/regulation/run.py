"""What Attention Regulation keeps for one sampling run: the edit's targets, each layer's bias memory across steps,
and the random initial patterns (pure core; the bridge's patch drives it)."""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..subjects.tokens import END_OF_TEXT, SubjectTokens
from .config import RegulationConfig
from .edit import RegulationDiagnostics

logger = logging.getLogger("attention_guidance")


@dataclass(frozen=True)
class RegulationSpec:
    """What the regulation patch edits: every subject token position, the first ``<|endoftext|>`` position (used in
    reference mode), the prompt's token count and the settings."""

    targets: tuple[int, ...]
    eos_position: int | None
    token_count: int
    config: RegulationConfig
    tokens: SubjectTokens | None = field(default=None, compare=False, repr=False)
    """The subject tokens the spec was made from, to check the sampled prompt against."""

    @classmethod
    def from_tokens(cls, tokens: SubjectTokens, config: RegulationConfig) -> RegulationSpec:
        targets = tuple(sorted({position for positions in tokens.subject_positions for position in positions}))
        if not targets:
            raise ValueError("the tokens name no subject; list the subjects in the text encoder's subjects input")
        eos_position = next((i for i, piece in enumerate(tokens.pieces) if piece == END_OF_TEXT), None)
        if config.mode == "reference" and eos_position is None:
            raise ValueError("reference mode restores the <|endoftext|> column, but this prompt has no such token")
        return cls(targets, eos_position, tokens.token_count, config, tokens)


@dataclass(frozen=True)
class RegulationEvent:
    """One edited layer call, for diagnostics: ``before`` and ``after`` are the conditional rows' probabilities
    ``[images, heads, h·w, T]`` without and with the edit (fp32); ``state`` ``[images, heads, h, w, S]`` is the
    raw best bias the next step blends with, ``diagnostics`` what the search did (its ``ema_partner`` is the bias
    this step blended with)."""

    layer: tuple[str, int, int]
    branch: int
    step: int
    height: int
    width: int
    targets: tuple[int, ...]
    before: torch.Tensor
    after: torch.Tensor
    state: torch.Tensor
    diagnostics: RegulationDiagnostics


@dataclass(frozen=True)
class _LayerMemory:
    step: int
    partner: torch.Tensor | None  # what this step blended with (None: the random initial pattern)
    state: torch.Tensor  # this step's raw best bias: the next step's partner


class RegulationRun:
    """State of one sampling run: each edited layer's bias memory for the EMA across steps.

    ``step_of`` gives the step index of a model call at a noise level (the run's :class:`~..engine.steps.StepClock`
    where the host reports steps), ``edits`` whether a call at a noise level falls in the edit window. Memory is
    keyed by layer ``(block, id, block_index)``, conditional branch and map size, never by call order. A layer called
    again at the same step (heun's correction, split CFG batches) blends with the same partner as its first call and
    replaces that call's state.

    Initial weights come from a generator per (noise seed, step, layer, branch, image), never the global RNG, so
    each image's edit is independent of its batch and of other packs' random draws. ``seed`` is the run's noise
    seed (None where the host does not say it). ``image_keys`` name the batch's images by something of their own
    (their initial noise, which is the same whether an image is sampled alone or in a batch); without them an
    image is known by its place in the batch. ``on_warning`` also receives each warning (besides the log).
    """

    def __init__(self, seed: int | None, step_of: Callable[[float], int], edits: Callable[[float], bool],
                 image_keys: Sequence[str] = (), on_warning: Callable[[str], None] | None = None) -> None:
        self.seed = seed
        self.step_of = step_of
        self.edits = edits
        self.image_keys = tuple(image_keys)
        self.on_warning = on_warning
        self._memory: dict[tuple, _LayerMemory] = {}
        self._warned: set[str] = set()

    def __deepcopy__(self, memo: dict) -> RegulationRun:
        # The host may deep-copy the model options that carry the run; every copy must reach this one run.
        return self

    def partner(self, key: tuple, step: int) -> torch.Tensor | None:
        """The bias to blend with at ``step``: the last earlier step's state, or None (the random initial pattern)."""
        memory = self._memory.get(key)
        if memory is None or memory.step > step:
            return None
        return memory.partner if memory.step == step else memory.state

    def remember(self, key: tuple, step: int, partner: torch.Tensor | None, state: torch.Tensor) -> None:
        self._memory[key] = _LayerMemory(step, partner, state)

    def image_key(self, image: int) -> str | int:
        """What names batch image ``image`` in the random draws: its key, else its index."""
        return self.image_keys[image] if image < len(self.image_keys) else image

    def generator(self, *parts: Any) -> torch.Generator:
        """A CPU generator seeded from the run's noise seed and ``parts`` (same draws on every device)."""
        digest = hashlib.blake2b(repr((self.seed, *parts)).encode(), digest_size=8).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest, "little"))

    def warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            logger.warning(message)
            if self.on_warning is not None:
                self.on_warning(message)
