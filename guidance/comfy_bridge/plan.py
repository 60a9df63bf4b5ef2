"""What a guidance pass records, as a capture (UNet layers or transformer blocks) sets it up."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GuidancePlan:
    """A guidance pass's model ``options``, the ``levels`` whose maps it returns, and ``calls_per_image``: how many
    recordings one image adds to the store in a full pass (the early stop waits for all of them)."""

    options: dict
    levels: list[int]
    calls_per_image: int
