"""Node registry: every node module exports NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS."""
import os

from . import astar, attention_maps, combine, divide_bind, guided, layout, regulation, tokens, toyworld

_NODE_MODULES = (tokens, guided, divide_bind, astar, layout, combine, regulation, attention_maps, toyworld)

if os.environ.get("AG_TEST_NODES") == "1":  # test-only loader of tiny models, set by the test harness
    from ..tests.testkit import tiny_loader_node

    _NODE_MODULES += (tiny_loader_node,)

NODE_CLASS_MAPPINGS = {node_id: cls for module in _NODE_MODULES for node_id, cls in module.NODE_CLASS_MAPPINGS.items()}
NODE_DISPLAY_NAME_MAPPINGS = {
    node_id: name for module in _NODE_MODULES for node_id, name in module.NODE_DISPLAY_NAME_MAPPINGS.items()
}
