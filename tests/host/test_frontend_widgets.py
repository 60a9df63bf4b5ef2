"""The pack's own widgets in the host's web page (``web/js``), driven with the mouse and keyboard in headless Chromium:
the box editor of Subject Layout (boxes), the token view of the subject nodes and the picture stepper of Visualize
Attention. Both frontends run them: the current one (comfyui-frontend-package) and the 2024 one (the host's web/).

The box editor's text is checked exactly: the edges the mouse drew, in fractions of the editor's canvas, rounded to
thousandths (``box_text`` does what the editor does, from the same pointer positions). ``make screenshots`` also
keeps this module's pictures of the editor and the token view (``docs/screenshots/box_editor.png``,
``token_view.png``).
"""
import io
import json
import math
import time
from pathlib import Path
from urllib.parse import urlencode
from urllib.request import urlopen

import numpy as np
from PIL import Image

from devkit import REPO_ROOT
from devkit import workflow as wf
from devkit.browser import load, queue_and_wait, swap_to_tiny_models
from devkit.browser import browser_page, page, screenshot_dir, server  # noqa: F401  (fixtures)
from devkit.comfy_host import ag
from devkit.token_cases import CASES

layout = ag("guidance.subjects.layout")

LAYOUT_WORKFLOW = REPO_ROOT / "workflows" / "astar_layout_sd15.json"
INSPECT_WORKFLOW = REPO_ROOT / "workflows" / "inspect_attention_sd15.json"
ENCODER, BOX_LAYOUT, MASK_PREVIEW = 2, 5, 7  # node ids in the layout workflow
VISUALIZE = 9  # in the inspect workflow
SHIPPED_BOXES = "0.05,0.2,0.4,0.7; 0.55,0.3,0.4,0.6"

FOCUS = """([id, scale]) => {
    const node = app.graph.getNodeById(id);
    app.canvas.ds.scale = scale;
    app.canvas.ds.offset = [140 / scale - node.pos[0], 160 / scale - node.pos[1]];
    app.canvas.setDirty(true, true);
    app.canvas.draw(true, true);
}"""
WIDGET = "([id, name]) => app.graph.getNodeById(id).widgets.find(widget => widget.name === name)"
VALUE = f"args => ({WIDGET})(args).value"
# What the frontend does when the user commits a widget edit: the new value, then the widget's callback.
SET_VALUE = f"""([id, name, value]) => {{
    const widget = ({WIDGET})([id, name]);
    widget.value = value;
    widget.callback?.(value, app.canvas, app.graph.getNodeById(id));
    app.graph.setDirtyCanvas(true, true);
}}"""
EDITOR_RECT = f"""id => {{
    const rect = ({WIDGET})([id, "box_editor"]).element.querySelector("canvas").getBoundingClientRect();
    return [rect.left, rect.top, rect.width, rect.height];
}}"""
EDITOR_STATUS = f"""id => ({WIDGET})([id, "box_editor"]).element.querySelector(".ag-status").textContent"""
EDITOR_PIXELS = f"""([id, points]) => {{
    const canvas = ({WIDGET})([id, "box_editor"]).element.querySelector("canvas");
    const context = canvas.getContext("2d");
    return points.map(([x, y]) => Array.from(context.getImageData(Math.floor(x * canvas.width),
                                                                  Math.floor(y * canvas.height), 1, 1).data));
}}"""
TOKEN_VIEW = f"""id => {{
    const view = ({WIDGET})([id, "token_view"]).element;
    return {{
        note: view.querySelector(".ag-note")?.textContent ?? null,
        error: view.querySelector(".ag-error")?.textContent ?? null,
        words: [...view.querySelectorAll(".ag-word")].map(chip => ({{
            text: chip.firstChild.textContent, positions: chip.dataset.positions.split(",").map(Number),
            role: chip.dataset.role ?? null,
            subject: chip.dataset.subject == null ? null : Number(chip.dataset.subject),
        }})),
        subjects: [...view.querySelectorAll(".ag-subject")].map(item => item.textContent),
        picked: [...view.querySelectorAll(".ag-subjects .ag-note")].map(item => item.textContent),
    }};
}}"""
# A point of a canvas-drawn widget on the page: ``inset`` px from the node's left edge (negative: from its right).
WIDGET_POINT = f"""([id, name, inset]) => {{
    const node = app.graph.getNodeById(id), widget = ({WIDGET})([id, name]);
    const x = node.pos[0] + (inset >= 0 ? inset : node.size[0] + inset);
    const y = node.pos[1] + (widget.y ?? widget.last_y) + LiteGraph.NODE_WIDGET_HEIGHT / 2;
    const [left, top] = app.canvas.ds.convertOffsetToCanvas([x, y]);
    const box = app.canvas.canvas.getBoundingClientRect();
    return [box.left + left, box.top + top];
}}"""
NODE_RECT = """id => {
    const node = app.graph.getNodeById(id), box = app.canvas.canvas.getBoundingClientRect();
    const [x0, y0] = app.canvas.ds.convertOffsetToCanvas([node.pos[0], node.pos[1] - LiteGraph.NODE_TITLE_HEIGHT]);
    const [x1, y1] = app.canvas.ds.convertOffsetToCanvas([node.pos[0] + node.size[0], node.pos[1] + node.size[1]]);
    return [box.left + x0, box.top + y0, x1 - x0, y1 - y0];
}"""
ROUTE_VIEW = """async body => {
    const response = await api.fetchApi("/attention_guidance/tokens", {method: "POST",
        headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    return await response.json();
}"""


# --- the box editor's arithmetic, from pointer positions (integer page px) -------------------------------------

def fraction(pixel: float, origin: float, length: float) -> float:
    return min(1.0, max(0.0, (pixel - origin) / length))


def thousandths(value: float) -> int:
    return math.floor(value * 1000 + 0.5)  # JavaScript's Math.round


def box_text(x0: float, y0: float, x1: float, y1: float) -> str:
    """Edges -> ``x,y,w,h`` as the editor writes them: edges rounded to thousandths, then the sizes."""
    left, top, right, bottom = map(thousandths, (x0, y0, x1, y1))
    return ",".join(f"{value / 1000:g}" for value in (left, top, right - left, bottom - top))


def edges(text: str) -> tuple[float, float, float, float]:
    x, y, w, h = map(float, text.split(","))
    return x, y, x + w, y + h


def focus(page, node_id: int, scale: float) -> None:
    """Zoom to ``scale`` with the node near the page's top left."""
    page.evaluate(FOCUS, [node_id, scale])
    page.wait_for_timeout(400)  # the frontend places its DOM widgets on its next frames


def node_screenshot(page, node_id: int, path: Path, margin: int = 16) -> None:
    x, y, width, height = page.evaluate(NODE_RECT, node_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), clip={"x": x - margin, "y": y - margin, "width": width + 2 * margin,
                                          "height": height + 2 * margin})


class Editor:
    """The box editor of node ``node_id`` on the page, at page scale ``scale``."""

    def __init__(self, page, node_id: int, scale: float = 1.5) -> None:
        self.page, self.node_id = page, node_id
        focus(page, node_id, scale)
        self.left, self.top, self.width, self.height = page.evaluate(EDITOR_RECT, node_id)
        assert self.width > 100 and self.height > 60, "the editor is not on the page"

    def at(self, x: float, y: float) -> tuple[int, int]:
        """The page pixel nearest to the fractions ``x, y`` of the image."""
        return round(self.left + x * self.width), round(self.top + y * self.height)

    def fractions(self, point: tuple[int, int]) -> tuple[float, float]:
        return fraction(point[0], self.left, self.width), fraction(point[1], self.top, self.height)

    def drag(self, start: tuple[int, int], end: tuple[int, int]) -> None:
        self.page.mouse.move(*start)
        self.page.mouse.down()
        self.page.mouse.move(*end, steps=6)
        self.page.mouse.up()

    @property
    def text(self) -> str:
        return self.page.evaluate(VALUE, [self.node_id, "boxes"])

    @property
    def status(self) -> str:
        return self.page.evaluate(EDITOR_STATUS, self.node_id)


def set_value(page, node_id: int, name: str, value) -> None:
    page.evaluate(SET_VALUE, [node_id, name, value])


def test_box_editor_deletes_draws_moves_and_resizes_boxes_in_the_text(page):
    load(page, wf.load(LAYOUT_WORKFLOW))
    editor = Editor(page, BOX_LAYOUT)
    assert editor.text == SHIPPED_BOXES

    page.mouse.click(*editor.at(0.75, 0.6))  # into the second box: selects it
    page.keyboard.press("Delete")
    assert editor.text == "0.05,0.2,0.4,0.7"
    assert page.evaluate(f"() => !!app.graph.getNodeById({BOX_LAYOUT})"), "Delete removed the node, not the box"

    start, end = editor.at(0.5, 0.3), editor.at(0.9, 0.8)
    editor.drag(start, end)
    drawn = box_text(*editor.fractions(start), *editor.fractions(end))
    assert editor.text == f"0.05,0.2,0.4,0.7; {drawn}"

    grab = editor.at(0.7, 0.55)
    to = (grab[0] - 40, grab[1] + 25)
    editor.drag(grab, to)
    x0, y0, x1, y1 = edges(drawn)
    (px, py), (sx, sy) = editor.fractions(to), editor.fractions(grab)
    w, h = x1 - x0, y1 - y0
    left, top = min(max(x0 + px - sx, 0), 1 - w), min(max(y0 + py - sy, 0), 1 - h)
    moved = box_text(left, top, left + w, top + h)
    assert editor.text == f"0.05,0.2,0.4,0.7; {moved}"
    assert moved != drawn

    x0, y0, x1, y1 = edges(moved)
    corner, to = editor.at(x1, y1), editor.at(0.97, 0.95)  # the selected box's bottom-right handle
    editor.drag(corner, to)
    resized = box_text(x0, y0, *editor.fractions(to))
    assert editor.text == f"0.05,0.2,0.4,0.7; {resized}"

    editor.drag(editor.at(0.1, 0.5), editor.at(0.12, 0.6))  # a drag inside box 1 moves it
    page.locator(".ag-box-editor button").click()  # "delete box": the selected box goes
    assert editor.text == resized
    assert page.errors == []


def test_box_editor_snaps_to_the_latent_grid(page):
    load(page, wf.load(LAYOUT_WORKFLOW))
    set_value(page, BOX_LAYOUT, "width", 512)
    set_value(page, BOX_LAYOUT, "height", 512)
    editor = Editor(page, BOX_LAYOUT)
    assert abs(editor.width - editor.height) <= 1, "the canvas takes the layout's aspect ratio"
    page.locator(".ag-box-editor input[type=checkbox]").check()
    page.mouse.click(*editor.at(0.75, 0.6))
    page.keyboard.press("Delete")

    # off the lattice (1/64 of the side) by less than half a cell: without snapping these would be 0.503, ...
    editor.drag(editor.at(0.503, 0.122), editor.at(0.872, 0.628))
    assert editor.text == "0.05,0.2,0.4,0.7; 0.5,0.125,0.375,0.5"
    editor.drag(editor.at(0.875, 0.625), editor.at(0.94, 0.747))  # the bottom-right handle to 60/64, 48/64
    assert editor.text == "0.05,0.2,0.4,0.7; 0.5,0.125,0.438,0.625"
    saved = page.evaluate(f"() => app.graph.serialize().nodes.find(node => node.id == {BOX_LAYOUT})")
    assert saved["properties"]["ag_snap_to_latent_grid"] is True


def test_loaded_boxes_are_drawn_where_the_text_puts_them(page):
    load(page, wf.load(LAYOUT_WORKFLOW))
    editor = Editor(page, BOX_LAYOUT)
    assert editor.status == "2 boxes for cat, dog"  # labelled with the connected encoder's subjects
    margin_x, margin_y = 4 / editor.width, 4 / editor.height  # 4 px inside or outside an edge
    boxes = [edges(part) for part in SHIPPED_BOXES.split(";")]
    inside = [((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in boxes] + \
             [(x0 + margin_x, y1 - margin_y) for x0, y0, x1, y1 in boxes] + \
             [(x1 - margin_x, (y0 + y1) / 2) for x0, y0, x1, y1 in boxes]
    outside = [(0.5, 0.1), (0.5, 0.6), (0.03, 0.5), (0.97, 0.5)] + \
              [(x0 - margin_x, (y0 + y1) / 2) for x0, y0, x1, y1 in boxes] + \
              [((x0 + x1) / 2, y0 - margin_y) for x0, y0, x1, y1 in boxes]
    pixels = page.evaluate(EDITOR_PIXELS, [BOX_LAYOUT, inside + outside])
    background = pixels[len(inside)]
    assert all(pixel == background for pixel in pixels[len(inside):]), pixels[len(inside):]
    assert all(pixel != background for pixel in pixels[:len(inside)]), pixels[:len(inside)]
    assert pixels[0] != pixels[1]  # each subject its own colour

    set_value(page, ENCODER, "subjects", "dog, cat")
    page.wait_for_function(f"id => ({EDITOR_STATUS})(id) === '2 boxes for dog, cat'", arg=BOX_LAYOUT, timeout=10_000)
    set_value(page, ENCODER, "subjects", "cat")
    page.wait_for_function(f"id => ({EDITOR_STATUS})(id) === '2 boxes for 1 subject (cat): draw one box per "
                           f"subject, in subject order'", arg=BOX_LAYOUT, timeout=10_000)


def test_saved_workflow_and_queued_prompt_hold_only_the_nodes_own_inputs(page, server):
    workflow = wf.load(LAYOUT_WORKFLOW)
    load(page, workflow)
    editor = Editor(page, BOX_LAYOUT)
    editor.drag(editor.at(0.6, 0.05), editor.at(0.8, 0.2))
    saved_workflow = page.evaluate("() => app.graph.serialize()")
    saved = {node["id"]: node for node in saved_workflow["nodes"]}
    shipped = {node["id"]: node for node in workflow["nodes"]}
    assert saved[BOX_LAYOUT]["widgets_values"] == [editor.text, 768, 512]
    assert saved[ENCODER]["widgets_values"] == shipped[ENCODER]["widgets_values"]
    # The workflow harness reads a saved workflow as a frontend without the pack's extensions does.
    without_extensions = wf.to_prompt(saved_workflow)
    assert without_extensions[str(BOX_LAYOUT)]["inputs"]["boxes"] == editor.text
    prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    definitions = server.get("/object_info")
    for node_id in (BOX_LAYOUT, ENCODER):
        node = prompt[str(node_id)]
        assert set(node["inputs"]) == set(definitions[node["class_type"]]["input"]["required"])
        assert node["inputs"] == without_extensions[str(node_id)]["inputs"]


def test_queueing_after_drawing_uses_the_drawn_boxes(page, server, screenshot_dir):
    workflow = wf.load(LAYOUT_WORKFLOW)
    load(page, workflow)
    editor = Editor(page, BOX_LAYOUT)
    page.mouse.click(*editor.at(0.75, 0.6))
    page.keyboard.press("Delete")
    editor.drag(editor.at(0.5, 0.15), editor.at(0.93, 0.62))
    drawn = editor.text
    assert drawn.startswith("0.05,0.2,0.4,0.7; ") and drawn != SHIPPED_BOXES
    node_screenshot(page, BOX_LAYOUT, screenshot_dir / "box_editor.png")

    swap_to_tiny_models(page, workflow)
    entry = queue_and_wait(page, server)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"].get("messages"))[:3000]
    queued = entry["prompt"][2][str(BOX_LAYOUT)]["inputs"]
    assert queued["boxes"] == drawn
    previews = entry["outputs"][str(MASK_PREVIEW)]["images"]
    shown = np.stack([np.asarray(Image.open(io.BytesIO(fetch_image(server, image))).convert("L")) > 127
                      for image in previews])
    # at the capped size the run samples (the layout's aspect ratio is the image's)
    expected = layout.box_masks(layout.parse_boxes(drawn), queued["width"], queued["height"]).bool().numpy()
    assert shown.shape == expected.shape and (shown == expected).all()


def fetch_image(server, image: dict) -> bytes:
    query = urlencode({key: image[key] for key in ("filename", "subfolder", "type")})
    with urlopen(f"{server.url}/view?{query}", timeout=30) as response:
        return response.read()


# --- the token view --------------------------------------------------------------------------------------------

def shown_subjects(view: dict) -> dict:
    """The view's highlighting as ``{subject: (positions, {attribute: positions})}``, like ``CASES``."""
    labels = [item.split(" ", 1)[1].split(" (")[0].lower() for item in view["subjects"]]
    shown = {}
    for index, label in enumerate(labels):
        positions = tuple(p for word in view["words"] if word["subject"] == index and word["role"] == "subject"
                          for p in word["positions"])
        attributes = {word["text"].replace("·", "").lower(): tuple(word["positions"]) for word in view["words"]
                      if word["subject"] == index and word["role"] == "attribute"}
        shown[label] = (positions, attributes)
    return shown


def wait_for_view(page, node_id: int, done, timeout: float = 15.0) -> dict:
    """Poll the token view of ``node_id`` until ``done(view)``; the last view seen on a timeout."""
    deadline = time.monotonic() + timeout
    while True:
        view = page.evaluate(TOKEN_VIEW, node_id)
        if done(view) or time.monotonic() > deadline:
            return view
        page.wait_for_timeout(100)


def test_token_view_highlights_every_example_of_the_token_tests(page):
    load(page, wf.load(LAYOUT_WORKFLOW))
    for prompt, subjects, expected in CASES:
        set_value(page, ENCODER, "text", prompt)
        set_value(page, ENCODER, "subjects", subjects)
        view = wait_for_view(page, ENCODER, lambda view: shown_subjects(view) == expected and not view["error"])
        assert shown_subjects(view) == expected, (prompt, subjects, view)
        assert view["note"] == "SD1.x tokenizer, guessed from the checkpoint name"
    assert page.errors == []


def test_token_view_follows_typing_and_names_a_missing_subject(page, screenshot_dir):
    load(page, wf.load(LAYOUT_WORKFLOW))
    focus(page, ENCODER, 1.3)
    page.evaluate_handle(f"args => ({WIDGET})(args).inputEl", [ENCODER, "text"]).as_element().click()
    page.keyboard.press("Control+A")
    page.keyboard.type("a red apple and a blue sombrero on a table")
    page.mouse.click(*page.evaluate(WIDGET_POINT, [ENCODER, "subjects", 60]))
    dialog = page.locator(".graphdialog input")
    dialog.fill("red apple, blue sombrero")
    dialog.press("Enter")
    expected = {"apple": ((3,), {"red": (2,)}), "sombrero": ((7, 8), {"blue": (6,)})}
    view = wait_for_view(page, ENCODER, lambda view: shown_subjects(view) == expected)
    assert shown_subjects(view) == expected
    assert [word["text"] for word in view["words"]][5:7] == ["blue", "som·brero"]
    node_screenshot(page, ENCODER, screenshot_dir / "token_view.png")

    set_value(page, ENCODER, "subjects", "apple, dog")
    view = wait_for_view(page, ENCODER, lambda view: view["error"] is not None)
    assert view["error"].startswith("subject 'dog': it is not in the prompt.")
    assert [word["role"] for word in view["words"]] == [None] * 10  # nothing highlighted, every word listed

    set_value(page, ENCODER, "subjects", "")
    view = wait_for_view(page, ENCODER, lambda view: view["picked"] == ["picked automatically"])
    assert shown_subjects(view) == {"apple": ((3,), {"red": (2,)}), "sombrero": ((7, 8), {"blue": (6,)}),
                                    "table": ((11,), {})}


def test_a_run_shows_its_tokens_and_the_route_agrees_and_pictures_step(page, server):
    workflow = wf.load(INSPECT_WORKFLOW)
    load(page, workflow)
    set_value(page, ENCODER, "subjects", "")  # the node picks: the picks must show on the node
    set_value(page, VISUALIZE, "which_steps", "all")
    set_value(page, VISUALIZE, "layout", "one image per step")
    swap_to_tiny_models(page, workflow)
    entry = queue_and_wait(page, server)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"].get("messages"))[:3000]

    at_run = entry["outputs"][str(ENCODER)]["ag_token_view"][0]
    assert at_run["family"] == "sd1" and at_run["auto_picked"]
    sent = entry["prompt"][2][str(ENCODER)]["inputs"]
    live = page.evaluate(f"async body => {{ const {{api}} = await import('/scripts/api.js'); "
                         f"return await ({ROUTE_VIEW})(body); }}",
                         {"text": sent["text"], "subjects": sent["subjects"], "family": "sd1"})
    assert live == at_run
    expected = {s["label"]: (tuple(s["positions"]), {a["text"]: tuple(a["positions"]) for a in s["attributes"]})
                for s in at_run["subjects"]}
    view = wait_for_view(page, ENCODER, lambda view: shown_subjects(view) == expected and view["picked"])
    assert shown_subjects(view) == expected and view["picked"] == ["picked automatically"]

    pictures = len(entry["outputs"][str(VISUALIZE)]["images"])
    assert pictures == wf.MAX_TEST_STEPS
    focus(page, VISUALIZE, 1.0)
    page.wait_for_function(f"() => (app.graph.getNodeById({VISUALIZE}).imgs || []).length === {pictures}",
                           timeout=30_000)
    right = page.evaluate(WIDGET_POINT, [VISUALIZE, "picture", -20])
    left = page.evaluate(WIDGET_POINT, [VISUALIZE, "picture", 20])
    shown = []
    for point in [right, right, right, left, left, left]:
        page.mouse.click(*point)
        page.wait_for_timeout(100)
        shown.append(page.evaluate(f"() => app.graph.getNodeById({VISUALIZE}).imageIndex"))
    assert shown == [0, 1, 2, 1, 0, None]  # picture 1, 2, 3, back, back, then all as thumbnails
    saved = page.evaluate(f"() => app.graph.serialize().nodes.find(node => node.id == {VISUALIZE})")
    shipped = next(node for node in workflow["nodes"] if node["id"] == VISUALIZE)
    assert len(saved["widgets_values"]) == len(shipped["widgets_values"])  # the picture widget is not saved
    assert page.errors == []
