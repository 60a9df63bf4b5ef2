"""ComfyUI Attention Guidance: cross-attention guidance so that every subject of a prompt gets drawn.

Registers the pack's nodes (ComfyUI's V1 node API, which both the current and the 2024 ComfyUI load).
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
