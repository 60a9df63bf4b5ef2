"""The README's node reference matches the node definitions (``make node-reference`` regenerates it)."""
import importlib.util

from devkit import REPO_ROOT
from devkit.comfy_host import ag

_spec = importlib.util.spec_from_file_location("node_reference", REPO_ROOT / "tools" / "node_reference.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)
PACK_NODES = ag("nodes").NODE_CLASS_MAPPINGS


def test_readme_node_reference_is_up_to_date():
    generated = reference.render(PACK_NODES, *reference.host_context())
    in_readme = reference.current_section(reference.README.read_text())
    assert in_readme == generated, f"README.md's node reference is out of date: run `{reference.COMMAND}`"


def test_reference_covers_every_node_and_input_tooltip():
    stock_inputs, host_lists = reference.host_context()
    generated = reference.render(PACK_NODES, stock_inputs, host_lists)
    for node_id, cls in PACK_NODES.items():
        if node_id == "AG_TestTinyCheckpoint":
            assert node_id not in generated  # test-only
            continue
        assert f"(`{node_id}`)" in generated and cls.DESCRIPTION in generated
        for section in cls.INPUT_TYPES().values():
            for name, spec in section.items():
                tooltip = spec[1].get("tooltip") if len(spec) > 1 and isinstance(spec[1], dict) else None
                if tooltip and stock_inputs.get(name) != spec:  # the stock KSampler's inputs are only named
                    assert reference._cell(tooltip) in generated, (node_id, name)
