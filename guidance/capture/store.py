"""Per-run record of cross-attention maps, aggregated as the A&E code does it.

A store belongs to one sampling run: the sampler creates it, attaches it to that run's ``transformer_options``
and drops it afterwards, so nothing leaks between runs or between clones of a model.
"""
from __future__ import annotations

import torch


class AttentionStore:
    """Sums of conditional-branch attention probabilities per down-sampling level.

    ``add`` takes ``[B, heads, h·w, T]`` probabilities; ``aggregate`` returns their mean over all heads of all
    layers recorded at one level, ``[B, h, w, T]`` (not renormalised, like the reference aggregation).
    Recording happens only while ``recording`` is on; tensors keep their autograd graph.

    In a guidance pass (``guidance_pass``) recorded layers compute their output from the recorded probabilities, so
    gradients flow through one attention computation, and ``expected_rows`` (rows x recorded layers of one full
    forward) tells the recorder when every map the loss needs is in, so the rest of the UNet can be skipped.
    """

    def __init__(self, token_count: int, guidance_pass: bool = False, expected_rows: int | None = None) -> None:
        self.token_count = token_count
        self.guidance_pass = guidance_pass
        self.expected_rows = expected_rows
        self.recording = False
        self._rows = 0
        self._sums: dict[int, torch.Tensor] = {}
        self._map_counts: dict[int, int] = {}
        self._shapes: dict[int, tuple[int, int]] = {}
        self._joint_sums: dict[int, torch.Tensor] = {}

    def __deepcopy__(self, memo: dict) -> "AttentionStore":
        # Model options holding a store are deep-copied by the host; the run must keep talking to one store.
        return self

    def add(self, level: int, probabilities: torch.Tensor, height: int, width: int) -> None:
        self.add_summed(level, probabilities.sum(dim=1), probabilities.shape[1], height, width)

    def add_summed(self, level: int, summed: torch.Tensor, heads: int, height: int, width: int) -> None:
        """Like :meth:`add`, with the probabilities already summed over their ``heads`` head maps: ``[B, h·w, T]``."""
        batch, pixels, tokens = summed.shape
        if pixels != height * width:
            raise ValueError(f"{pixels} attention rows do not form a {height}x{width} map")
        if tokens % self.token_count:
            raise ValueError(f"attention over {tokens} tokens does not fit a prompt of {self.token_count} tokens")
        if tokens != self.token_count:
            # CFG batches repeat a shorter context to a common length: token j sits at j, j + T, ...
            summed = summed.reshape(batch, pixels, tokens // self.token_count, self.token_count).sum(dim=-2)
        if level in self._sums:
            if self._shapes[level] != (height, width) or self._sums[level].shape != summed.shape:
                raise ValueError(f"layers at level {level} disagree on map shape")
            self._sums[level] = self._sums[level] + summed
        else:
            self._sums[level] = summed
            self._shapes[level] = (height, width)
            self._map_counts[level] = 0
        self._map_counts[level] += heads
        self._rows += batch

    @property
    def complete(self) -> bool:
        return self.expected_rows is not None and self._rows >= self.expected_rows

    def levels(self) -> list[int]:
        return sorted(self._sums)

    def head_count(self, level: int) -> int:
        """Head maps summed at ``level`` in one pass (heads x layers), the weight of its mean among levels."""
        return self._map_counts[level]

    def aggregate(self, level: int) -> torch.Tensor:
        if level not in self._sums:
            raise KeyError(f"no attention was recorded at level {level} (recorded: {self.levels()})")
        height, width = self._shapes[level]
        mean = self._sums[level] / self._map_counts[level]
        return mean.reshape(mean.shape[0], height, width, self.token_count)

    def clear(self) -> None:
        self._rows = 0
        self._sums.clear()
        self._map_counts.clear()
        self._shapes.clear()
        self._joint_sums.clear()

    def add_joint(self, level: int, summed: torch.Tensor) -> None:
        """A diffusion transformer's exact joint-softmax text probabilities ``[B, h·w, T]`` (summed over heads) of
        the layer whose text-normalised maps :meth:`add_summed` just took; they share its head count and shape."""
        tokens = summed.shape[-1]
        if tokens != self.token_count:
            summed = summed.reshape(*summed.shape[:-1], tokens // self.token_count, self.token_count).sum(dim=-2)
        self._joint_sums[level] = self._joint_sums[level] + summed if level in self._joint_sums else summed

    def aggregate_joint(self, level: int) -> torch.Tensor | None:
        """The mean joint-softmax maps ``[B, h, w, T]`` at ``level``, None when none were recorded."""
        if level not in self._joint_sums:
            return None
        height, width = self._shapes[level]
        mean = self._joint_sums[level] / self._map_counts[level]
        return mean.reshape(mean.shape[0], height, width, self.token_count)

