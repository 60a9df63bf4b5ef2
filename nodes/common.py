"""Names shared by the node adapters: categories, custom socket types, error wording."""
from __future__ import annotations

CATEGORY = "attention_guidance"
TOKENS_TYPE = "AG_TOKENS"
GUIDANCE_TYPE = "AG_GUIDANCE"
ATTENTION_TYPE = "AG_ATTENTION"
LAYOUT_TYPE = "AG_LAYOUT"


class NodeInputError(ValueError):
    """A bad node input, worded as ``<node>: input '<name>': <what is wrong and how to fix it>``."""

    def __init__(self, node: str, input_name: str, message: str) -> None:
        super().__init__(f"{node}: input '{input_name}': {message}")


class GuidanceNode:
    """What every node that builds an AG_GUIDANCE from subject tokens declares alike (its ``build`` makes it)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (GUIDANCE_TYPE,)
    RETURN_NAMES = ("guidance",)
    OUTPUT_TOOLTIPS = ("The guidance to sample with.",)
    FUNCTION = "build"
