// Token view on CLIP Text Encode (with subjects) and Subject Token Picker: while the user types, the prompt's
// tokens with each subject's tokens and attributes highlighted in the subject's colour, the subjects (automatic picks
// included), and why a subject is not found. The pack's tokens route tokenises with the tokenizer family of the
// CLIP the node is connected to; after a run the node shows what the run computed (and the family it used).
import { api } from "../../../scripts/api.js";
import { app } from "../../../scripts/app.js";
import { addStyle, chain, keepOwnValues, pageOnly, subjectColour, TOKEN_NODE_TYPES, upstreamNode,
         widgetNamed } from "./common.js";

const ROUTE = "/attention_guidance/tokens";
const DEBOUNCE_MS = 250;
const FAMILY_NAMES = { sd1: "SD1.x", sd2: "SD2.x", sdxl: "SDXL", flux: "FLUX (T5)", chroma: "Chroma (T5)", sd3: "SD3" };

addStyle("ag-token-view-style", `
.ag-token-view { box-sizing: border-box; overflow: auto; font: 12px sans-serif; color: var(--input-text, #ddd);
                 background: var(--comfy-input-bg, #222); border-radius: 4px; padding: 4px 6px; }
.ag-token-view .ag-note { opacity: 0.7; font-size: 11px; margin-bottom: 3px; }
.ag-token-view .ag-error { color: #ff7a6b; margin-bottom: 4px; white-space: pre-wrap; }
.ag-token-view .ag-words { display: flex; flex-wrap: wrap; gap: 3px; }
.ag-token-view .ag-word { border: 1px solid #555; border-radius: 3px; padding: 0 3px; white-space: nowrap; }
.ag-token-view .ag-word sub { font-size: 9px; opacity: 0.75; margin-left: 1px; }
.ag-token-view .ag-word[data-role="subject"] { color: #000; font-weight: bold; }
.ag-token-view .ag-word[data-role="attribute"] { border-style: dashed; border-width: 2px; }
.ag-token-view .ag-subjects { margin-top: 4px; display: flex; flex-wrap: wrap; gap: 6px; }
.ag-token-view .ag-subject { border-left: 8px solid; padding-left: 3px; }
`);

/** The loader the CLIP comes from, looking through nodes that pass a CLIP on (LoRA loaders, CLIP Set Last Layer). */
function clipSource(node) {
    let source = upstreamNode(node, "clip");
    while (source && source.findInputSlot("clip") >= 0) source = upstreamNode(source, "clip");
    return source;
}

/** The tokenizer family of a loader, from what its widgets say, before any run tells. */
function guessedFamily(source) {
    const checkpoint = widgetNamed(source, "ckpt_name")?.value;
    if (checkpoint != null) {
        const name = String(checkpoint).toLowerCase();
        const family = /xl/.test(name) ? "sdxl" : /(^|[^a-z0-9])(sd-?2|v2-|768-v)/.test(name) ? "sd2" : "sd1";
        return { family, how: "guessed from the checkpoint name" };
    }
    if (source.type === "TripleCLIPLoader") return { family: "sd3", how: "from the CLIP loader" };
    const clipType = widgetNamed(source, "type")?.value;
    if (typeof clipType === "string") {
        return { family: clipType === "stable_diffusion" ? "sd1" : clipType, how: "from the CLIP loader's type" };
    }
    return { family: "sd1", how: "assumed; a run tells the node's own" };
}

function sourceKey(source) {
    return JSON.stringify([source.id, source.type, (source.widgets || []).map((widget) => widget.value)]);
}

class TokenView {
    constructor(node) {
        this.node = node;
        this.requested = null; // [text, subjects, family] of the last request
        this.ticket = 0; // answers to older requests are dropped
        this.timer = null;
        this.lastRun = null; // {view, source}: what the last run showed, and from which loader
        this.element = document.createElement("div");
        this.element.className = "ag-token-view";
    }

    wanted() {
        const source = clipSource(this.node);
        if (!source) return null;
        const learned = this.lastRun?.source === sourceKey(source) && this.lastRun.view.family;
        const { family, how } = learned ? { family: learned, how: "as in the last run" } : guessedFamily(source);
        const text = String(widgetNamed(this.node, "text")?.value ?? "");
        const subjects = String(widgetNamed(this.node, "subjects")?.value ?? "");
        return { text, subjects, family, how };
    }

    /** On every draw of the node and on every edit: ask again when the prompt, subjects or family changed. */
    refresh() {
        const wanted = this.wanted();
        if (!wanted) {
            if (this.requested !== "no clip") this.show(this.lastRun?.view, "Connect a CLIP to see the tokens.");
            this.requested = "no clip";
            return;
        }
        const key = JSON.stringify([wanted.text, wanted.subjects, wanted.family]);
        if (key === this.requested) return;
        this.requested = key;
        clearTimeout(this.timer);
        this.timer = setTimeout(() => this.request(wanted), DEBOUNCE_MS);
    }

    async request({ text, subjects, family, how }) {
        const ticket = ++this.ticket;
        let status, body;
        try {
            const response = await api.fetchApi(ROUTE, {
                method: "POST", headers: { "Content-Type": "application/json" },
                body: JSON.stringify({ text, subjects, family }),
            });
            status = response.status;
            body = await response.json();
        } catch (error) {
            body = { error: `the tokens route did not answer (${error.message})` };
        }
        if (ticket !== this.ticket) return;
        if (status === 200) {
            this.show(body, `${FAMILY_NAMES[family] ?? family} tokenizer, ${how}`);
        } else {
            const fallback = this.lastRun ? " Shown: the last run." : " Run the graph to see the tokens.";
            this.show(this.lastRun?.view, `No live view: ${body.error}.${fallback}`);
        }
    }

    showRun(view) {
        const source = clipSource(this.node);
        this.lastRun = { view, source: source && sourceKey(source) };
        this.requested = null; // the next draw asks the route with the family the run reported
        this.show(view, `${FAMILY_NAMES[view.family] ?? "this CLIP's"} tokenizer, from the last run`);
    }

    show(view, note) {
        this.node.agTokenView = view; // the box editor labels its boxes from it
        const parts = [element("div", "ag-note", note)];
        if (view?.error) parts.push(element("div", "ag-error", view.error));
        if (view) parts.push(wordsOf(view), subjectsOf(view));
        this.element.replaceChildren(...parts);
        app.graph?.setDirtyCanvas(true, false);
    }
}

function element(tag, className, text) {
    const made = document.createElement(tag);
    made.className = className;
    if (text != null) made.textContent = text;
    return made;
}

/** Every word of the prompt with its token positions; subject words filled and attribute words framed in the
 * subject's colour. */
function wordsOf(view) {
    const roles = new Map(); // position -> {role, subject}
    view.subjects.forEach((subject, index) => {
        for (const attribute of subject.attributes) {
            for (const position of attribute.positions) roles.set(position, { role: "attribute", subject: index });
        }
    });
    view.subjects.forEach((subject, index) => {
        for (const position of subject.positions) roles.set(position, { role: "subject", subject: index });
    });
    const words = element("div", "ag-words");
    for (const word of view.words) {
        const text = word.pieces.every((piece) => piece !== null) ? word.pieces.join("·") : word.text;
        const chip = element("span", "ag-word", text);
        chip.dataset.positions = word.positions.join(",");
        chip.title = `tokens ${word.positions.join(", ")}`;
        chip.append(element("sub", "", word.positions.join(",")));
        const role = roles.get(word.positions[0]);
        if (role) {
            const colour = subjectColour(role.subject);
            chip.dataset.role = role.role;
            chip.dataset.subject = String(role.subject);
            chip.style.borderColor = colour;
            chip.style.background = role.role === "subject" ? colour : `${colour}33`;
        }
        words.append(chip);
    }
    return words;
}

/** The subjects in order, numbered as the box editor numbers its boxes, with their attributes. */
function subjectsOf(view) {
    const list = element("div", "ag-subjects");
    view.subjects.forEach((subject, index) => {
        const attributes = subject.attributes.map((attribute) => attribute.text).join(" ");
        const name = `${index + 1} ${subject.label}${attributes ? ` (${attributes})` : ""}`;
        const item = element("span", "ag-subject", name);
        item.style.borderColor = subjectColour(index);
        item.dataset.subject = String(index);
        list.append(item);
    });
    if (view.auto_picked) list.append(element("span", "ag-note", "picked automatically"));
    return list;
}

app.registerExtension({
    name: "attention_guidance.token_view",
    beforeRegisterNodeDef(nodeType, nodeData) {
        if (!TOKEN_NODE_TYPES.includes(nodeData.name)) return;
        chain(nodeType.prototype, "onNodeCreated", function () {
            const view = new TokenView(this);
            this.agTokenViewer = view;
            pageOnly(this.addDOMWidget("token_view", "ag_token_view", view.element, {
                getMinHeight: () => 90,
                onDraw: () => view.refresh(),
            }));
            for (const name of ["text", "subjects"]) {
                const widget = widgetNamed(this, name);
                if (widget) chain(widget, "callback", () => view.refresh());
            }
        });
        keepOwnValues(nodeType.prototype);
        chain(nodeType.prototype, "onExecuted", function (output) {
            const view = output?.ag_token_view?.[0];
            if (view) this.agTokenViewer?.showRun(view);
        });
    },
});
