"""Node registry: every node module exports NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS."""
from . import (astar, attend_excite, attention_maps, combine, divide_bind, focus, layout, regulation, samplers, tokens,
               toyworld)

_NODE_MODULES = (tokens, attend_excite, samplers, divide_bind, astar, focus, layout, combine, regulation,
                 attention_maps, toyworld)

NODE_CLASS_MAPPINGS = {node_id: cls for module in _NODE_MODULES for node_id, cls in module.NODE_CLASS_MAPPINGS.items()}
NODE_DISPLAY_NAME_MAPPINGS = {
    node_id: name for module in _NODE_MODULES for node_id, name in module.NODE_DISPLAY_NAME_MAPPINGS.items()
}
