"""ComfyUI Attention Guidance: cross-attention guidance so that every subject of a prompt gets drawn.

Registers the pack's nodes (ComfyUI's V1 node API, which both the current and the 2024 ComfyUI load), its frontend
extensions (``web/``: the box editor, the token view, stepping through attention pictures) and, when ComfyUI runs its
web server, the tokens route the token view calls.
"""
from .guidance.comfy_bridge.token_route import register_token_route
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"
register_token_route()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
