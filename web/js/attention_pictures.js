// Visualize Attention: a "picture" widget steps through the node's preview pictures (one per step, with the
// layout "one image per step") with its arrows: 0 shows them all as thumbnails, 1..N one of them, large. It drives
// the frontend's own image preview (node.imageIndex, which its arrow keys and picture buttons also move).
import { app } from "../../../scripts/app.js";
import { chain, keepOwnValues, pageOnly } from "./common.js";

const NODE_TYPE = "AG_VisualizeAttention";
const WIDGET = "picture";

app.registerExtension({
    name: "attention_guidance.attention_pictures",
    beforeRegisterNodeDef(nodeType, nodeData) {
        if (nodeData.name !== NODE_TYPE) return;
        chain(nodeType.prototype, "onNodeCreated", function () {
            const node = this;
            // step 10 is one per arrow click in litegraph's number widgets (their step is in tenths)
            pageOnly(node.addWidget("number", WIDGET, 0, (value) => {
                const count = node.imgs?.length ?? 0;
                const picture = Math.round(Math.min(Math.max(value, 0), count));
                node.imageIndex = node.agPictureShown = picture > 0 ? picture - 1 : null;
                node.setDirtyCanvas?.(true, true);
            }, { min: 0, max: 0, step: 10, precision: 0 }));
        });
        keepOwnValues(nodeType.prototype);
        chain(nodeType.prototype, "onDrawForeground", function () {
            // Follow the count of pictures, and the picture when the preview's own controls (or new pictures)
            // change it; a change of the widget that the widget's callback has not applied yet is left alone.
            const widget = (this.widgets || []).find((candidate) => candidate.name === WIDGET);
            if (!widget) return;
            widget.options.max = this.imgs?.length ?? 0;
            const index = this.imgs?.length ? this.imageIndex ?? null : null;
            if (index !== (this.agPictureShown ?? null)) {
                this.agPictureShown = index;
                widget.value = index == null ? 0 : index + 1;
            }
        });
    },
});
