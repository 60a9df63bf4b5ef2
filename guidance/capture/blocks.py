"""Which joint blocks of a diffusion transformer are read (pure): the ``dit_blocks`` input of the method nodes.

``auto`` (or empty) reads every joint block: FLUX's 19 double blocks (its 38 single blocks come after them and are
never read), SD3.5's 24 or 38 joint blocks. That is what FOCUS reads; a guidance pass stops after the deepest block
read, so fewer, earlier blocks (``0-9``) make guided steps cheaper. ``0-9``, ``0, 2, 4-7``: block indices from 0.
"""
from __future__ import annotations

AUTO = "auto"


class BlockSelectionError(ValueError):
    pass


def parse_blocks(text: str) -> tuple[int, ...] | None:
    """``"0-3, 7"`` -> ``(0, 1, 2, 3, 7)``; ``"auto"`` or empty -> None (every block)."""
    cleaned = text.strip().lower()
    if cleaned in ("", AUTO):
        return None
    indices: set[int] = set()
    for part in (part.strip() for part in cleaned.replace(";", ",").split(",")):
        if not part:
            continue
        first, _, last = part.partition("-")
        try:
            start, stop = int(first), int(last or first)
        except ValueError:
            raise BlockSelectionError(f"{part!r} is not a block index or range; write e.g. 'auto', '0-9' or "
                                      f"'0, 2, 4-7'") from None
        if start < 0 or stop < start:
            raise BlockSelectionError(f"{part!r}: block ranges go from a lower to a higher index, from 0")
        indices.update(range(start, stop + 1))
    return tuple(sorted(indices)) if indices else None


def resolve_blocks(selection: tuple[int, ...] | None, block_count: int) -> tuple[int, ...]:
    """The blocks to read of a model with ``block_count`` joint blocks."""
    if selection is None:
        return tuple(range(block_count))
    beyond = [index for index in selection if index >= block_count]
    if beyond:
        raise BlockSelectionError(f"blocks {beyond} do not exist: this model has {block_count} joint blocks "
                                  f"(0-{block_count - 1})")
    return selection


def describe_blocks(selection: tuple[int, ...] | None) -> str:
    return AUTO if selection is None else ", ".join(map(str, selection))
