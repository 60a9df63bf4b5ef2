"""Toy World Loader node: the pack's small model of coloured shapes, to see and measure what guidance does on CPU."""
from __future__ import annotations

from typing import Any

from ..toyworld.comfy_model import WEIGHTS_DIR, load
from ..toyworld.world import COLOURS, IMAGE_SIZE, SHAPES
from .common import CATEGORY, NodeInputError

NODE_ID = "AG_ToyWorldLoader"


def weight_files() -> list[str]:
    return sorted(path.name for path in WEIGHTS_DIR.glob("*.safetensors"))


class ToyWorldLoader:
    DISPLAY_NAME = "Load Toy World Model"
    DESCRIPTION = (
        "Loads the pack's toy world model: a small SD1.x-family model trained on CPU to draw one to three flat "
        f"coloured shapes on grey ({', '.join(COLOURS)} x {', '.join(SHAPES)}), prompted like 'a red circle and a "
        f"blue square'. It draws {IMAGE_SIZE}x{IMAGE_SIZE} images in a few seconds on CPU; with two subjects it "
        "leaves one out or draws it in another shape in about a quarter of images and paints one in the other's "
        "colour in another quarter, the failures attention guidance is meant to fix (the README's `make eval` "
        "measures how far it does). Use it with the stock KSampler, CLIP Text Encode and VAE Decode like any "
        "checkpoint."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    RETURN_NAMES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = (
        "The diffusion model (SD1.x family, epsilon prediction, the SD1 noise schedule).",
        "Its text encoder, with the SD1 tokenizer: words outside the world's colours and shapes mean nothing to it.",
        f"Its TAESD-format VAE: decodes {IMAGE_SIZE // 8}x{IMAGE_SIZE // 8} latents to {IMAGE_SIZE}x{IMAGE_SIZE} px.",
    )
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "weights": (weight_files() or ["toyworld.safetensors"], {
                    "tooltip": "The weights file, from the pack's toyworld/weights folder "
                               "(tools/train_toyworld.py trains it).",
                }),
            }
        }

    def load(self, weights: str) -> tuple[Any, Any, Any]:
        path = WEIGHTS_DIR / weights
        if not path.is_file():
            raise NodeInputError(self.DISPLAY_NAME, "weights",
                                 f"{weights} is not in {WEIGHTS_DIR}; pick one of {weight_files()} or train it "
                                 "with tools/train_toyworld.py")
        checkpoint = load(path)
        return checkpoint.model, checkpoint.clip, checkpoint.vae


NODE_CLASS_MAPPINGS = {NODE_ID: ToyWorldLoader}
NODE_DISPLAY_NAME_MAPPINGS = {NODE_ID: ToyWorldLoader.DISPLAY_NAME}
