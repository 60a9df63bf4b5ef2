"""A test-only custom node folder: ComfyUI loads it beside the pack in tests (in process and in the browser test's
server), so the pack itself never registers test nodes.
"""
import sys
from pathlib import Path

_TOOLS = str(Path(__file__).resolve().parents[2])
if _TOOLS not in sys.path:  # the server process starts from the host folder, without the dev kit on its path
    sys.path.insert(0, _TOOLS)

from devkit.tiny_loader_node import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
