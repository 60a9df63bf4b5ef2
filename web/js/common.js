// Helpers shared by the pack's frontend extensions. Plain litegraph node API, so that they run on the current
// frontend and on the 2024 one (ComfyUI's web/ folder).

// One colour per subject, the same in the token view and the box editor (Okabe-Ito, distinct for colour-blind eyes).
const SUBJECT_COLOURS = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#CC79A7", "#D55E00", "#0072B2", "#999999"];

export const TOKEN_NODE_TYPES = ["AG_TextEncodeWithTokens", "AG_TokenPicker"];

export function subjectColour(index) {
    return SUBJECT_COLOURS[index % SUBJECT_COLOURS.length];
}

export function widgetNamed(node, name) {
    return (node.widgets || []).find((widget) => widget.name === name);
}

/** The node whose output feeds ``node``'s input ``inputName``, looking through reroutes; null if not connected. */
export function upstreamNode(node, inputName) {
    let current = node;
    let slot = current.findInputSlot(inputName);
    while (current && slot >= 0) {
        const source = current.getInputNode(slot);
        if (!source || source.type !== "Reroute") return source;
        current = source;
        slot = 0;
    }
    return null;
}

/** A widget that only the page uses, added after the node's own: left out of the API prompt and of the saved widget
 * values, so workflows and prompts stay exactly what the node defines (a frontend without this pack's extensions
 * loads them unchanged). The node type needs ``keepOwnValues``. */
export function pageOnly(widget) {
    widget.serialize = false;
    widget.options ??= {};
    widget.options.serialize = false;
    return widget;
}

/** Save only the values of a node type's own widgets: the current frontend leaves page-only widgets out by itself,
 * the 2024 one saves every widget's value, so the trailing ones of page-only widgets are cut. */
export function keepOwnValues(prototype) {
    chain(prototype, "onSerialize", function (serialised) {
        const values = serialised.widgets_values;
        if (!Array.isArray(values)) return;
        let end = values.length;
        while (end > 0 && this.widgets?.[end - 1]?.serialize === false) end--;
        values.length = end;
    });
}

/** The subjects a token node names, as the box editor labels them: from its latest token view when it has one
 * (automatic picks included), else from its subjects text (the last word of each phrase); [] when unknown. */
export function subjectLabels(tokenNode) {
    if (!tokenNode || !TOKEN_NODE_TYPES.includes(tokenNode.type)) return [];
    const view = tokenNode.agTokenView;
    if (view && !view.error) return view.subjects.map((subject) => subject.label);
    const subjects = widgetNamed(tokenNode, "subjects")?.value ?? "";
    return String(subjects).split(",").map((phrase) => phrase.trim().split(/\s+/).pop()).filter(Boolean);
}

/** Add ``css`` to the page once, under ``id``. */
export function addStyle(id, css) {
    if (document.getElementById(id)) return;
    const style = document.createElement("style");
    style.id = id;
    style.textContent = css;
    document.head.append(style);
}

/** Call ``extra`` after the prototype's own ``method`` (if any), with the same arguments. */
export function chain(prototype, method, extra) {
    const original = prototype[method];
    prototype[method] = function (...args) {
        const result = original?.apply(this, args);
        extra.apply(this, args);
        return result;
    };
}
