// Box editor on Subject Layout (boxes): draw, move, resize and delete one box per subject on a canvas of the
// layout's aspect ratio. The boxes text widget stays the saved and queued form: the editor draws what the text says
// and writes the text back after every edit, so workflows and API prompts are the same with or without the editor.
import { app } from "../../../scripts/app.js";
import { formatBoxes, parseBoxes, snapped } from "./boxes.js";
import { addStyle, chain, keepOwnValues, pageOnly, subjectColour, subjectLabels, upstreamNode,
         widgetNamed } from "./common.js";

const NODE_TYPE = "AG_BoxLayout";
const LATENT_GRID = 8; // px of the image per latent cell: what "snap" snaps to
const SNAP_PROPERTY = "ag_snap_to_latent_grid";
const GRAB = 7; // screen px around a handle that grab it
const MIN_DRAG = 4; // screen px a drag must cover to draw a box; less is a click
const MIN_SIZE = 0.01; // smallest side of a box, as a fraction of the image
const BACKGROUND = "#1b1b1b";
const FILL_ALPHA = 0.3;
const HANDLES = ["nw", "n", "ne", "e", "se", "s", "sw", "w"];
const CURSORS = { nw: "nwse-resize", se: "nwse-resize", ne: "nesw-resize", sw: "nesw-resize", n: "ns-resize",
                  s: "ns-resize", e: "ew-resize", w: "ew-resize" };

addStyle("ag-box-editor-style", `
.ag-box-editor { display: flex; flex-direction: column; gap: 4px; box-sizing: border-box; font: 12px sans-serif;
                 color: var(--input-text, #ddd); }
.ag-box-editor .ag-bar { display: flex; align-items: center; gap: 8px; flex: none; white-space: nowrap; }
.ag-box-editor .ag-bar label { display: flex; align-items: center; gap: 3px; cursor: pointer; }
.ag-box-editor .ag-bar button { font: inherit; padding: 1px 6px; cursor: pointer; }
.ag-box-editor .ag-status { overflow: hidden; text-overflow: ellipsis; opacity: 0.85; }
.ag-box-editor .ag-status.ag-warn { color: #f0a050; opacity: 1; }
.ag-box-editor .ag-stage { position: relative; flex: 1; min-height: 0; }
.ag-box-editor canvas { position: absolute; outline: none; touch-action: none; cursor: crosshair; }
`);

function handlePoints(box) {
    const xm = (box.x0 + box.x1) / 2, ym = (box.y0 + box.y1) / 2;
    return { nw: [box.x0, box.y0], n: [xm, box.y0], ne: [box.x1, box.y0], e: [box.x1, ym], se: [box.x1, box.y1],
             s: [xm, box.y1], sw: [box.x0, box.y1], w: [box.x0, ym] };
}

function clamp(value, low, high) {
    return Math.min(high, Math.max(low, value));
}

class BoxEditor {
    constructor(node) {
        this.node = node;
        this.selected = -1;
        this.drag = null; // {mode: "draw" | "move" | "resize", ...} while the pointer is down
        this.draft = null; // the boxes being edited during a drag; the text is written when it ends
        this.drawn = ""; // what the canvas shows, to redraw only on a change
        this.build();
    }

    build() {
        this.element = document.createElement("div");
        this.element.className = "ag-box-editor";
        const bar = document.createElement("div");
        bar.className = "ag-bar";
        const snapLabel = document.createElement("label");
        snapLabel.title = `Snap box edges to the latent grid (${LATENT_GRID} px of the image)`;
        this.snapBox = document.createElement("input");
        this.snapBox.type = "checkbox";
        this.snapBox.addEventListener("change", () => {
            this.node.properties ??= {};
            this.node.properties[SNAP_PROPERTY] = this.snapBox.checked;
        });
        snapLabel.append(this.snapBox, `snap to ${LATENT_GRID} px`);
        this.deleteButton = document.createElement("button");
        this.deleteButton.textContent = "delete box";
        this.deleteButton.title = "Delete the selected box (or press Delete)";
        this.deleteButton.addEventListener("click", () => this.deleteSelected());
        this.status = document.createElement("span");
        this.status.className = "ag-status";
        bar.append(snapLabel, this.deleteButton, this.status);

        this.stage = document.createElement("div");
        this.stage.className = "ag-stage";
        this.canvas = document.createElement("canvas");
        this.canvas.tabIndex = 0;
        this.canvas.title = "Drag to draw a box; drag a box to move it, its handles to resize it; Delete removes it";
        this.stage.append(this.canvas);
        this.element.append(bar, this.stage);

        this.canvas.addEventListener("pointerdown", (event) => this.pointerDown(event));
        this.canvas.addEventListener("pointermove", (event) => this.pointerMove(event));
        this.canvas.addEventListener("pointerup", (event) => this.pointerUp(event));
        this.canvas.addEventListener("keydown", (event) => this.keyDown(event));
        new ResizeObserver(() => this.fit()).observe(this.stage);
    }

    get boxesWidget() {
        return widgetNamed(this.node, "boxes");
    }

    get aspect() {
        const width = Number(widgetNamed(this.node, "width")?.value);
        const height = Number(widgetNamed(this.node, "height")?.value);
        return width > 0 && height > 0 ? { width, height } : { width: 1, height: 1 };
    }

    get snap() {
        return !!this.node.properties?.[SNAP_PROPERTY]; // saved with the workflow (loads after the node is made)
    }

    parsed() {
        return parseBoxes(this.boxesWidget?.value);
    }

    boxes() {
        return this.draft ?? this.parsed().boxes;
    }

    labels() {
        return subjectLabels(upstreamNode(this.node, "tokens"));
    }

    /** The canvas as large as the stage allows, in the image's aspect ratio. */
    fit() {
        const { width, height } = this.aspect;
        const room = { width: this.stage.clientWidth, height: this.stage.clientHeight };
        if (room.width <= 0 || room.height <= 0) return;
        const scale = Math.min(room.width / width, room.height / height);
        const css = { width: Math.max(1, Math.floor(width * scale)), height: Math.max(1, Math.floor(height * scale)) };
        const ratio = 2 * (window.devicePixelRatio || 1); // sharp when the graph is zoomed in
        Object.assign(this.canvas.style, { width: `${css.width}px`, height: `${css.height}px`,
                                           left: `${(room.width - css.width) / 2}px`,
                                           top: `${(room.height - css.height) / 2}px` });
        this.canvas.width = css.width * ratio;
        this.canvas.height = css.height * ratio;
        this.fitted = `${width}x${height}`;
        this.render();
    }

    /** Called whenever the graph draws the node: redraw when the text, size, labels or selection changed. */
    refresh() {
        const { width, height } = this.aspect;
        if (this.fitted !== `${width}x${height}`) this.fit();
        else if (this.drawn !== this.signature()) this.render();
    }

    signature() {
        return JSON.stringify([this.boxesWidget?.value, this.labels(), this.selected, this.draft, this.snap]);
    }

    render() {
        const context = this.canvas.getContext("2d");
        const { width, height } = this.canvas;
        const unit = width / Math.max(1, this.canvas.clientWidth); // canvas px per CSS px
        const labels = this.labels();
        const { boxes, problem } = this.draft ? { boxes: this.draft, problem: null } : this.parsed();
        context.fillStyle = BACKGROUND;
        context.fillRect(0, 0, width, height);
        context.font = `bold ${11 * unit}px sans-serif`;
        context.textBaseline = "top";
        boxes.forEach((box, index) => {
            const colour = subjectColour(index);
            const [x, y] = [box.x0 * width, box.y0 * height];
            const [w, h] = [(box.x1 - box.x0) * width, (box.y1 - box.y0) * height];
            context.globalAlpha = FILL_ALPHA;
            context.fillStyle = colour;
            context.fillRect(x, y, w, h);
            context.globalAlpha = 1;
            context.strokeStyle = colour;
            context.lineWidth = (index === this.selected ? 3 : 1.5) * unit;
            context.strokeRect(x, y, w, h);
            const label = labels[index] ? `${index + 1} ${labels[index]}` : `${index + 1}`;
            const labelWidth = context.measureText(label).width + 6 * unit;
            context.fillStyle = colour;
            context.fillRect(x, y, Math.min(labelWidth, w), 15 * unit);
            context.fillStyle = "#000";
            context.save();
            context.beginPath();
            context.rect(x, y, w, h);
            context.clip();
            context.fillText(label, x + 3 * unit, y + 2 * unit);
            context.restore();
        });
        const chosen = boxes[this.selected];
        if (chosen) {
            for (const [hx, hy] of Object.values(handlePoints(chosen))) {
                context.fillStyle = "#fff";
                context.strokeStyle = subjectColour(this.selected);
                context.lineWidth = 1.5 * unit;
                context.fillRect(hx * width - 4 * unit, hy * height - 4 * unit, 8 * unit, 8 * unit);
                context.strokeRect(hx * width - 4 * unit, hy * height - 4 * unit, 8 * unit, 8 * unit);
            }
        }
        this.snapBox.checked = this.snap;
        this.showStatus(boxes.length, labels, problem);
        this.deleteButton.disabled = !chosen;
        this.drawn = this.signature();
    }

    showStatus(count, labels, problem) {
        let text, warn = true;
        if (problem) text = `${problem}: fix the text below to edit here`;
        else if (!count) text = "drag on the picture to draw a box";
        else if (labels.length && count !== labels.length) {
            const subjects = `${labels.length} subject${labels.length === 1 ? "" : "s"}`;
            text = `${count} box${count === 1 ? "" : "es"} for ${subjects} (${labels.join(", ")}): ` +
                   "draw one box per subject, in subject order";
        } else {
            warn = false;
            text = `${count} box${count === 1 ? "" : "es"}` + (labels.length ? ` for ${labels.join(", ")}` : "");
        }
        this.status.textContent = text;
        this.status.title = text;
        this.status.classList.toggle("ag-warn", warn && !!count || !!problem);
    }

    /** The pointer in fractions of the image, within 0..1. */
    point(event) {
        const rect = this.canvas.getBoundingClientRect();
        return { x: clamp((event.clientX - rect.left) / rect.width, 0, 1),
                 y: clamp((event.clientY - rect.top) / rect.height, 0, 1), rect };
    }

    snapPoint(point) {
        if (!this.snap) return point;
        const { width, height } = this.aspect;
        return { ...point, x: snapped(point.x, width, LATENT_GRID), y: snapped(point.y, height, LATENT_GRID) };
    }

    /** What is under the pointer: a handle of the selected box, else the topmost box, else nothing. */
    hit(point) {
        const boxes = this.boxes();
        const grabX = GRAB / point.rect.width, grabY = GRAB / point.rect.height;
        const chosen = boxes[this.selected];
        if (chosen) {
            for (const [handle, [hx, hy]] of Object.entries(handlePoints(chosen))) {
                if (Math.abs(point.x - hx) <= grabX && Math.abs(point.y - hy) <= grabY) {
                    return { index: this.selected, handle };
                }
            }
        }
        for (let index = boxes.length - 1; index >= 0; index--) {
            const box = boxes[index];
            if (point.x >= box.x0 && point.x <= box.x1 && point.y >= box.y0 && point.y <= box.y1) return { index };
        }
        return null;
    }

    pointerDown(event) {
        if (event.button !== 0 || this.parsed().problem) return;
        event.preventDefault();
        event.stopPropagation();
        this.canvas.focus();
        this.canvas.setPointerCapture(event.pointerId);
        const point = this.point(event);
        const hit = this.hit(point);
        const boxes = this.parsed().boxes.map((box) => ({ ...box }));
        if (hit?.handle) {
            this.drag = { mode: "resize", index: hit.index, handle: hit.handle };
        } else if (hit) {
            this.selected = hit.index;
            this.drag = { mode: "move", index: hit.index, start: point, original: { ...boxes[hit.index] } };
        } else {
            this.selected = -1;
            this.drag = { mode: "draw", start: this.snapPoint(point), screen: [event.clientX, event.clientY] };
        }
        this.draft = boxes;
        this.render();
    }

    pointerMove(event) {
        const point = this.point(event);
        if (!this.drag) {
            const hit = this.hit(point);
            this.canvas.style.cursor = hit?.handle ? CURSORS[hit.handle] : hit ? "move" : "crosshair";
            return;
        }
        event.preventDefault();
        event.stopPropagation();
        const drag = this.drag;
        if (drag.mode === "draw") {
            const end = this.snapPoint(point);
            const box = { x0: Math.min(drag.start.x, end.x), y0: Math.min(drag.start.y, end.y),
                          x1: Math.max(drag.start.x, end.x), y1: Math.max(drag.start.y, end.y) };
            drag.box = box;
            this.draft = [...this.parsed().boxes, box];
            this.selected = this.draft.length - 1;
        } else if (drag.mode === "move") {
            const { original, start } = drag;
            const [w, h] = [original.x1 - original.x0, original.y1 - original.y0];
            let corner = { x: clamp(original.x0 + point.x - start.x, 0, 1 - w),
                           y: clamp(original.y0 + point.y - start.y, 0, 1 - h) };
            corner = this.snapPoint(corner);
            const x0 = clamp(corner.x, 0, 1 - w), y0 = clamp(corner.y, 0, 1 - h);
            this.draft[drag.index] = { x0, y0, x1: x0 + w, y1: y0 + h };
        } else {
            const box = { ...this.draft[drag.index] };
            const at = this.snapPoint(point);
            if (drag.handle.includes("w")) box.x0 = Math.min(at.x, box.x1 - MIN_SIZE);
            if (drag.handle.includes("e")) box.x1 = Math.max(at.x, box.x0 + MIN_SIZE);
            if (drag.handle.includes("n")) box.y0 = Math.min(at.y, box.y1 - MIN_SIZE);
            if (drag.handle.includes("s")) box.y1 = Math.max(at.y, box.y0 + MIN_SIZE);
            this.draft[drag.index] = box;
        }
        this.render();
    }

    pointerUp(event) {
        const drag = this.drag;
        if (!drag) return;
        event.stopPropagation();
        this.canvas.releasePointerCapture(event.pointerId);
        this.drag = null;
        let boxes = this.draft;
        this.draft = null;
        if (drag.mode === "draw") {
            const moved = Math.max(Math.abs(event.clientX - drag.screen[0]), Math.abs(event.clientY - drag.screen[1]));
            const box = drag.box;
            if (moved < MIN_DRAG || !box || box.x1 - box.x0 < MIN_SIZE || box.y1 - box.y0 < MIN_SIZE) {
                boxes = null; // a click on the background: nothing drawn, nothing selected
                this.selected = -1;
            }
        }
        if (boxes) this.write(boxes);
        this.render();
    }

    keyDown(event) {
        if ((event.key === "Delete" || event.key === "Backspace") && this.selected >= 0) {
            this.deleteSelected();
        } else if (event.key === "Escape") {
            this.selected = -1;
            this.render();
        } else {
            return;
        }
        event.preventDefault();
        event.stopPropagation(); // the page would otherwise delete the selected node
    }

    deleteSelected() {
        const boxes = this.parsed().boxes;
        if (this.selected < 0 || this.selected >= boxes.length || this.parsed().problem) return;
        boxes.splice(this.selected, 1);
        this.selected = -1;
        this.write(boxes);
        this.render();
    }

    write(boxes) {
        const widget = this.boxesWidget;
        const text = formatBoxes(boxes);
        if (!widget || widget.value === text) return;
        widget.value = text;
        widget.callback?.(text, app.canvas, this.node);
        this.node.setDirtyCanvas?.(true, true);
    }
}

app.registerExtension({
    name: "attention_guidance.box_editor",
    beforeRegisterNodeDef(nodeType, nodeData) {
        if (nodeData.name !== NODE_TYPE) return;
        chain(nodeType.prototype, "onNodeCreated", function () {
            const editor = new BoxEditor(this);
            this.agBoxEditor = editor;
            pageOnly(this.addDOMWidget("box_editor", "ag_box_editor", editor.element, {
                getMinHeight: () => 200,
                onDraw: () => editor.refresh(),
            }));
            this.setSize([Math.max(this.size[0], 340), Math.max(this.size[1], 330)]);
        });
        keepOwnValues(nodeType.prototype);
    },
});
