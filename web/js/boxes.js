// The boxes text of Subject Layout (boxes) <-> box edges, as the box editor reads and writes it.
// Text: "x,y,w,h; x,y,w,h" in fractions of the image (guidance/layout.py parses it at run time).
// Edges: {x0, y0, x1, y1} in fractions, x0 < x1, y0 < y1.

/** Parse ``text``: {boxes: [edges...], problem: null | "why a part is not a box"}; the parts that parse are kept. */
export function parseBoxes(text) {
    const boxes = [];
    let problem = null;
    String(text ?? "").split(";").map((part) => part.trim()).forEach((part, index) => {
        if (!part) return;
        const values = part.split(",").map((value) => (value.trim() === "" ? NaN : Number(value)));
        if (values.length !== 4 || !values.every(Number.isFinite)) {
            problem ??= `box ${index + 1} ('${part}') is not four numbers x,y,w,h`;
            return;
        }
        const [x, y, w, h] = values;
        if (w <= 0 || h <= 0 || x < 0 || y < 0 || x + w > 1 || y + h > 1) {
            problem ??= `box ${index + 1} ('${part}') leaves the image or has no area`;
        }
        boxes.push({ x0: x, y0: y, x1: x + w, y1: y + h });
    });
    return { boxes, problem };
}

const THOUSANDTHS = 1000;

/** Edges -> text, 3 decimals: the edges are rounded to thousandths first, so x + w never passes the right edge. */
export function formatBoxes(boxes) {
    return boxes.map((box) => {
        const [x0, y0, x1, y1] = [box.x0, box.y0, box.x1, box.y1].map((v) => Math.round(v * THOUSANDTHS));
        return [x0, y0, x1 - x0, y1 - y0].map((v) => String(v / THOUSANDTHS)).join(",");
    }).join("; ");
}

/** ``value`` (a fraction of a side of ``pixels`` px) moved to the nearest multiple of ``grid`` px, within 0..1. */
export function snapped(value, pixels, grid) {
    const step = grid / pixels;
    return Math.min(1, Math.max(0, Math.round(value / step) * step));
}
