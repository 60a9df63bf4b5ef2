"""The pack as a user meets it: the host's own web page, in headless Chromium, served by the host's own server.

The server runs as a subprocess on loopback (``devkit.comfy_server``) with this pack installed and the test-only
tiny loader registered. Playwright drives Debian's ``/usr/bin/chromium`` (``AG_CHROMIUM`` overrides the path).
Every workflow in ``workflows/`` is loaded through the frontend exactly as shipped: no node type may be missing and
the pack's nodes must show all their widgets. Then, through the frontend's graph API, each model, text encoder and
VAE loader is replaced by the tiny loader, sizes and steps are capped as in the execution tests, and the workflow is
queued from the page; the server's ``/history`` must report success with every output node's results. FLUX and
SD3.5 workflows run on the current host only.

Screenshots of each shipped workflow go to the test's temporary folder, or to ``AG_SCREENSHOTS`` when it names a
folder: ``make screenshots`` writes the README's ``docs/screenshots/<workflow>.png`` from the first host found.
"""
import json
import time
from pathlib import Path

import pytest

import nodes
from devkit import REPO_ROOT, comfy_host
from devkit import workflow as wf
from devkit.browser import (FIT_TO_VIEW, LEFT, LEGACY_FRONTEND, MARGIN, SCREEN_POSITION, TOP, load, queue_and_wait,
                             show_whole_graph, swap_to_tiny_models)
from devkit.browser import browser_page, page, screenshot_dir, server  # noqa: F401  (fixtures)

SHIPPED = sorted((REPO_ROOT / "workflows").glob("*.json"))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def widget_inputs(definition: dict) -> set[str]:
    """Names of the inputs the frontend draws as widgets, from a node's ``/object_info`` entry."""
    names = set()
    for section in ("required", "optional"):
        for name, spec in (definition["input"].get(section) or {}).items():
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if (isinstance(spec[0], list) or spec[0] in WIDGET_TYPES) and not options.get("forceInput"):
                names.add(name)
    return names


def screenshot(page, workflow: dict, path: Path) -> None:
    show_whole_graph(page, workflow)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))


@pytest.mark.parametrize("path", SHIPPED, ids=[path.name for path in SHIPPED])
def test_shipped_workflow_loads_with_all_node_types_and_widgets(path, page, server, screenshot_dir):
    workflow = wf.load(path)
    if wf.dit_workflow(workflow) and not comfy_host.has_dit():
        pytest.skip(comfy_host.NO_DIT_REASON)
    graph = load(page, workflow, path.stem)
    assert sorted(node["id"] for node in graph) == sorted(str(node["id"]) for node in workflow["nodes"])
    assert [node["type"] for node in graph if not node["registered"]] == [], "node types missing in the frontend"
    definitions = server.get("/object_info")
    for node in graph:
        if node["type"].startswith("AG_"):
            expected = widget_inputs(definitions[node["type"]])
            assert expected <= set(node["widgets"]), (node["type"], node["widgets"])
    assert page.errors == []
    screenshot(page, workflow, screenshot_dir / f"{path.stem}.png")
    assert (screenshot_dir / f"{path.stem}.png").stat().st_size > 10_000


def test_a_missing_node_type_is_noticed(page):
    workflow = wf.load(SHIPPED[0])
    workflow["nodes"][-1]["type"] = "AG_NoSuchNode"
    graph = load(page, workflow)
    assert [node["type"] for node in graph if not node["registered"]] == ["AG_NoSuchNode"]


@pytest.mark.parametrize("path", SHIPPED, ids=[path.name for path in SHIPPED])
def test_shipped_workflow_runs_from_the_page_with_the_tiny_model(path, page, server):
    workflow = wf.load(path)
    if wf.dit_workflow(workflow) and not comfy_host.has_dit():
        pytest.skip(comfy_host.NO_DIT_REASON)
    load(page, workflow)
    graph = swap_to_tiny_models(page, workflow)
    loaders = len(wf.tiny_swaps(wf.to_prompt(workflow)))
    assert [node["type"] for node in graph].count(wf.TINY_LOADER) == loaders
    assert not set(wf.LOADER_OUTPUTS) & {node["type"] for node in graph}

    start = time.monotonic()
    entry = queue_and_wait(page, server)
    status = entry.get("status") or {}
    assert status.get("status_str") == "success", json.dumps(status.get("messages"), indent=1)[-3000:]

    sent = entry["prompt"][2]  # what the frontend queued: (number, id, prompt, extra data, outputs)
    assert ({node["class_type"] for node in sent.values()} >= {wf.TINY_LOADER}) == (loaders > 0)  # toy world: none
    assert all(node["inputs"]["steps"] <= wf.MAX_TEST_STEPS for node in sent.values()
               if isinstance(node["inputs"].get("steps"), int))
    assert all(node["inputs"][cap] <= wf.MAX_TEST_REFINEMENT for node in sent.values() for cap in wf.REFINEMENT_CAPS
               if isinstance(node["inputs"].get(cap), int))
    definitions = server.get("/object_info")
    output_nodes = {node_id for node_id, node in sent.items() if definitions[node["class_type"]].get("output_node")}
    assert output_nodes and output_nodes <= set(entry["outputs"]), (output_nodes, set(entry["outputs"]))
    previewed = [node_id for node_id, output in entry["outputs"].items() if output.get("images")]
    assert previewed
    show_whole_graph(page, workflow)
    page.wait_for_function("""ids => ids.every(id => (app.graph.getNodeById(Number(id)).imgs || []).length > 0)""",
                           arg=previewed, timeout=30_000)  # each image output is shown in its node
    assert time.monotonic() - start < 540
    assert page.errors == []


@pytest.mark.skipif(LEGACY_FRONTEND, reason="the 2024 frontend (the host's web/ folder) shows no node tooltips "
                                            "or descriptions")
def test_node_description_and_input_tooltip_show_on_hover(page):
    classes = nodes.NODE_CLASS_MAPPINGS
    load(page, wf.load(REPO_ROOT / "workflows" / "inspect_attention_sd15.json"))
    page.evaluate(FIT_TO_VIEW, [LEFT, TOP, MARGIN])
    expected = {None: classes["AG_VisualizeAttention"].DESCRIPTION,
                "layout": classes["AG_VisualizeAttention"].INPUT_TYPES()["required"]["layout"][1]["tooltip"]}
    for widget, text in expected.items():
        x, y = page.evaluate(SCREEN_POSITION, ["AG_VisualizeAttention", widget])
        page.mouse.move(x - 10, y)
        page.mouse.move(x, y)
        tooltip = page.locator(".node-tooltip")
        tooltip.wait_for(state="visible", timeout=10_000)
        assert tooltip.inner_text().strip() == text
        page.mouse.move(5, 5)
        tooltip.wait_for(state="hidden", timeout=10_000)
