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
import os
import time
from pathlib import Path

import pytest

import nodes
from devkit import REPO_ROOT, comfy_host
from devkit import workflow as wf
from devkit.comfy_server import ComfyServer, frontend_unavailable

HOST = Path(nodes.__file__).resolve().parent
LEGACY_FRONTEND = (HOST / "web" / "index.html").is_file()  # the 2024 host's own frontend, before it moved to PyPI
CHROMIUM = Path(os.environ.get("AG_CHROMIUM", "/usr/bin/chromium"))
SHIPPED = sorted((REPO_ROOT / "workflows").glob("*.json"))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
LEFT, TOP, MARGIN = 80, 100, 30  # px of the page left free for the frontend's side bar and menu

GRAPH_STATE = """() => app.graph._nodes.map(node => ({
    id: String(node.id), type: node.type, registered: node.type in LiteGraph.registered_node_types,
    widgets: (node.widgets || []).map(widget => widget.name)}))"""

FIT_TO_VIEW = """([left, top, margin]) => {
    const canvas = app.canvas;
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const node of app.graph._nodes) {
        x0 = Math.min(x0, node.pos[0]); y0 = Math.min(y0, node.pos[1] - LiteGraph.NODE_TITLE_HEIGHT);
        x1 = Math.max(x1, node.pos[0] + node.size[0]); y1 = Math.max(y1, node.pos[1] + node.size[1]);
    }
    const width = canvas.canvas.clientWidth - left - margin, height = canvas.canvas.clientHeight - top - margin;
    const scale = Math.min(1, width / (x1 - x0), height / (y1 - y0));
    canvas.ds.scale = scale;
    canvas.ds.offset = [left / scale + (width / scale - (x1 - x0)) / 2 - x0,
                        top / scale + (height / scale - (y1 - y0)) / 2 - y0];
    canvas.setDirty(true, true);
    canvas.draw(true, true);
    return scale;
}"""

# Loaders -> the tiny loader (same place, links on its matching outputs), sizes and steps capped like
# devkit.workflow.shrunk.
SWAP_AND_SHRINK = """({swaps, maxSize, maxSteps}) => {
    const graph = app.graph;
    const linkById = id => graph.links instanceof Map ? graph.links.get(id) : graph.links[id];
    for (const [id, [family, slots]] of Object.entries(swaps)) {
        const old = graph.getNodeById(Number(id));
        const tiny = LiteGraph.createNode("AG_TestTinyCheckpoint");
        tiny.pos = [old.pos[0], old.pos[1]];
        graph.add(tiny);
        tiny.widgets.find(widget => widget.name === "family").value = family;
        old.outputs.forEach((output, slot) => {
            for (const link of (output.links || []).map(linkById)) {
                tiny.connect(slots[slot], graph.getNodeById(link.target_id), link.target_slot);
            }
        });
        graph.remove(old);
    }
    for (const node of graph._nodes) {
        const widget = name => (node.widgets || []).find(candidate => candidate.name === name);
        const steps = widget("steps");
        if (steps && typeof steps.value === "number") steps.value = Math.min(steps.value, maxSteps);
        if (node.type === "EmptyLatentImage" || node.type === "EmptySD3LatentImage") {
            const scale = Math.min(1, maxSize / Math.max(widget("width").value, widget("height").value));
            for (const side of ["width", "height"]) {
                widget(side).value = Math.max(64, Math.floor(widget(side).value * scale / 64) * 64);
            }
        }
    }
}"""

SCREEN_POSITION = """([type, widgetName]) => {
    const node = app.graph._nodes.find(candidate => candidate.type === type);
    let y = node.pos[1] - LiteGraph.NODE_TITLE_HEIGHT / 2, x = node.pos[0] + 40;
    if (widgetName) {
        const widget = node.widgets.find(candidate => candidate.name === widgetName);
        y = node.pos[1] + (widget.y ?? widget.last_y) + LiteGraph.NODE_WIDGET_HEIGHT / 2;
        x = node.pos[0] + 60;
    }
    const [left, top] = app.canvas.ds.convertOffsetToCanvas([x, y]);
    const box = app.canvas.canvas.getBoundingClientRect();
    return [box.left + left, box.top + top];
}"""


def widget_inputs(definition: dict) -> set[str]:
    """Names of the inputs the frontend draws as widgets, from a node's ``/object_info`` entry."""
    names = set()
    for section in ("required", "optional"):
        for name, spec in (definition["input"].get(section) or {}).items():
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if (isinstance(spec[0], list) or spec[0] in WIDGET_TYPES) and not options.get("forceInput"):
                names.add(name)
    return names


def graph_bounds(workflow: dict) -> tuple[float, float]:
    xs = [node["pos"][0] for node in workflow["nodes"]] + [n["pos"][0] + n["size"][0] for n in workflow["nodes"]]
    ys = [node["pos"][1] - 40 for node in workflow["nodes"]] + [n["pos"][1] + n["size"][1] for n in workflow["nodes"]]
    return max(xs) - min(xs), max(ys) - min(ys)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    reason = frontend_unavailable(HOST)
    if reason:
        pytest.skip(reason)
    with ComfyServer(HOST, tmp_path_factory.mktemp("comfy_server")) as running:
        yield running


@pytest.fixture(scope="module")
def browser_page(server):
    """One page of the frontend for the module; ``page.errors`` collects the page's uncaught errors."""
    if not CHROMIUM.is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium (or set AG_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: `pip install -r requirements-test.txt`")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.goto(server.url)
        page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        yield page
        browser.close()


@pytest.fixture
def page(browser_page):
    browser_page.errors.clear()
    yield browser_page
    browser_page.keyboard.press("Escape")  # close a dialog a test left open
    if LEGACY_FRONTEND:
        browser_page.evaluate("() => app.ui.dialog.close()")


def load(page, workflow: dict, name: str = "workflow") -> list[dict]:
    """Load ``workflow`` as the user does (a file dropped on the page ends in ``app.loadGraphData``; the current
    frontend names the tab ``name``); the graph as the frontend then holds it."""
    page.evaluate("async ([workflow, name]) => { await app.loadGraphData(workflow, true, true, name); }",
                  [workflow, name])
    return page.evaluate(GRAPH_STATE)


def show_whole_graph(page, workflow: dict) -> None:
    """Size the page to the graph and fit it in: the 2024 frontend loads a node's images only when it draws it."""
    width, height = graph_bounds(workflow)
    page.set_viewport_size({"width": max(1280, int(width) + LEFT + 2 * MARGIN),
                            "height": max(720, int(height) + TOP + 2 * MARGIN)})
    page.evaluate(FIT_TO_VIEW, [LEFT, TOP, MARGIN])
    page.wait_for_timeout(500)  # let the frontend draw the new view


def screenshot(page, workflow: dict, path: Path) -> None:
    show_whole_graph(page, workflow)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))


@pytest.fixture(scope="module")
def screenshot_dir(tmp_path_factory):
    folder = os.environ.get("AG_SCREENSHOTS")
    return Path(folder) if folder else tmp_path_factory.mktemp("screenshots")


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
    swaps = wf.tiny_swaps(wf.to_prompt(workflow))
    load(page, workflow)
    page.evaluate(SWAP_AND_SHRINK, {"swaps": swaps, "maxSize": wf.MAX_TEST_SIZE, "maxSteps": wf.MAX_TEST_STEPS})
    graph = page.evaluate(GRAPH_STATE)
    assert [node["type"] for node in graph].count(wf.TINY_LOADER) == len(swaps)
    assert not set(wf.LOADER_OUTPUTS) & {node["type"] for node in graph}

    known = set(server.get("/history"))
    start = time.monotonic()
    page.evaluate("async () => { await app.queuePrompt(0, 1); }")
    prompt_id, entry = server.wait_for_history(known, timeout=540)
    status = entry.get("status") or {}
    assert status.get("status_str") == "success", json.dumps(status.get("messages"), indent=1)[-3000:]

    sent = entry["prompt"][2]  # what the frontend queued: (number, id, prompt, extra data, outputs)
    assert {node["class_type"] for node in sent.values()} >= {wf.TINY_LOADER}
    assert all(node["inputs"]["steps"] <= wf.MAX_TEST_STEPS for node in sent.values()
               if isinstance(node["inputs"].get("steps"), int))
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
