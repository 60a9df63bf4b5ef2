"""Names shared by the node adapters: categories, custom socket types, error wording, warnings on the node."""
from __future__ import annotations

import logging

from ..guidance.comfy_bridge.compat import show_on_node

logger = logging.getLogger("attention_guidance")

CATEGORY = "attention_guidance"
TOKENS_TYPE = "AG_TOKENS"
GUIDANCE_TYPE = "AG_GUIDANCE"
ATTENTION_TYPE = "AG_ATTENTION"
LAYOUT_TYPE = "AG_LAYOUT"


class NodeInputError(ValueError):
    """A bad node input, worded as ``<node>: input '<name>': <what is wrong and how to fix it>``.

    ComfyUI's error dialog names the class by its module: the pack's own name reads better there than the module
    path ComfyUI gives custom node folders (``/path/to/custom_nodes/<folder>.nodes.common``).
    """

    __module__ = "attention_guidance"

    def __init__(self, node: str, input_name: str, message: str) -> None:
        super().__init__(f"{node}: input '{input_name}': {message}")


class GuidanceNode:
    """What every node that builds an AG_GUIDANCE from subject tokens declares alike (its ``build`` makes it)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = (GUIDANCE_TYPE,)
    RETURN_NAMES = ("guidance",)
    OUTPUT_TOOLTIPS = ("The guidance to sample with.",)
    FUNCTION = "build"


UNIQUE_ID = {"unique_id": "UNIQUE_ID"}  # hidden input: the node's id in the graph, to show warnings on it


def warn_on_node(node: str, node_id: str | None, warnings: list[str], notes: str = "") -> dict:
    """Log each warning, show ``notes`` and the warnings under the node in the page (blanking an earlier run's),
    and return the node's ``ui`` text."""
    for warning in warnings:
        logger.warning("%s: %s", node, warning)
    lines = ([notes] if notes else []) + [f"Warning: {warning}" for warning in warnings]
    text = "\n".join(lines)
    show_on_node(node_id, text)
    return {"text": [text]} if text else {}
