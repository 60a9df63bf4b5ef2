"""The host's web page in headless Chromium, for the browser tests: the server and page fixtures (import them into a
test module: each module gets its own server and page), and helpers that load, frame and queue workflows through the
frontend's own graph API, as a user's actions end up doing.

The server runs as a subprocess on loopback (``devkit.comfy_server``) with this pack installed and the test-only
tiny loader registered. Playwright drives Debian's ``/usr/bin/chromium`` (``AG_CHROMIUM`` overrides the path).
Import only after a host is active.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import nodes
from devkit import workflow as wf
from devkit.comfy_server import ComfyServer, frontend_unavailable

HOST = Path(nodes.__file__).resolve().parent
LEGACY_FRONTEND = (HOST / "web" / "index.html").is_file()  # the 2024 host's own frontend, before it moved to PyPI
CHROMIUM = Path(os.environ.get("AG_CHROMIUM", "/usr/bin/chromium"))
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

# Loaders -> the tiny loader (same place, links on its matching outputs), sizes, steps and refinement capped like
# devkit.workflow.shrunk.
SWAP_AND_SHRINK = """({swaps, maxSize, maxSteps, maxRefinement, refinementCaps}) => {
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
        for (const cap of refinementCaps.map(widget).filter(Boolean)) cap.value = Math.min(cap.value, maxRefinement);
        if (["EmptyLatentImage", "EmptySD3LatentImage", "AG_BoxLayout"].includes(node.type)) {
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


@pytest.fixture(scope="module")
def screenshot_dir(tmp_path_factory):
    """Where the tests' screenshots go: ``AG_SCREENSHOTS`` when set (``make screenshots``), else a temporary folder."""
    folder = os.environ.get("AG_SCREENSHOTS")
    return Path(folder) if folder else tmp_path_factory.mktemp("screenshots")


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


def swap_to_tiny_models(page, workflow: dict) -> list[dict]:
    """Replace, in the loaded graph, each model, text encoder and VAE loader of ``workflow`` by the tiny loader of its
    family (``devkit.workflow.tiny_swaps``) and cap sizes, steps and refinement; the graph as the frontend then
    holds it."""
    swaps = wf.tiny_swaps(wf.to_prompt(workflow))
    page.evaluate(SWAP_AND_SHRINK, {"swaps": swaps, "maxSize": wf.MAX_TEST_SIZE, "maxSteps": wf.MAX_TEST_STEPS,
                                    "maxRefinement": wf.MAX_TEST_REFINEMENT,
                                    "refinementCaps": list(wf.REFINEMENT_CAPS)})
    return page.evaluate(GRAPH_STATE)


def queue_and_wait(page, server, timeout: float = 540) -> dict:
    """Queue the loaded graph from the page; the server's history entry of the prompt once it has finished."""
    known = set(server.get("/history"))
    page.evaluate("async () => { await app.queuePrompt(0, 1); }")
    return server.wait_for_history(known, timeout=timeout)[1]
