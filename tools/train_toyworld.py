"""Trains the toy world model on CPU and writes ``toyworld/weights/toyworld.safetensors`` and its training report.

Three phases, every batch drawn from the world generator (fresh scenes, never a fixed data set), seeded per step:

1. VAE: TAESD's decoder learns to draw scenes from their world code (``toyworld.latent``), on crops, with noise
   on the code so that it draws clean shapes from a sampler's slightly-off latents; then the encoder learns to read
   the code back from images.
2. Diffusion: the UNet (SD1 family, EPS, the SD1 discrete schedule, exactly ComfyUI's model input scaling and
   timesteps) and the text encoder (trainable token and position embeddings) learn together
   from captions, a tenth of them dropped for classifier-free guidance. A quarter of the scenes of two or three
   objects are drawn without one of them, their captions unchanged (``unseen_object_rate``), so that the model
   leaves a named subject out as Stable Diffusion does. bf16 autocast, AdamW, an exponential moving average of the
   weights (the EMA is what ships).
3. Export: fp16 weights (fp16 keeps every value these models hold) and ``training_report.json`` / ``.md``
   beside them, with the losses, the time and threads of each phase, the process CPU time and a check that the VAE
   draws what the detector reads back. With ``--measure N`` the report also gets the model's quality measured through
   the pack's nodes (``tools/eval.py --measure-model``).

Resumable: a checkpoint goes to ``--work-dir`` every few minutes and at the end of each phase; running the same
command again continues from it (``--fresh`` starts over). Needs the current ComfyUI (the model is built with its
classes): ``COMFYUI_PATH``, else ``<repo>/../shared/hosts/comfyui-0.3.64``, else the first host found by the test
kit that is a current ComfyUI. Runs with ``--threads`` torch threads (default 2).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Waiting OpenMP threads sleep instead of spinning: on a CPU that other work shares, spinning threads burn two to
# three times the CPU time of the work itself. Must be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO_ROOT = Path(__file__).resolve().parents[1]
from devkit import comfy_host, hosts  # noqa: E402

CURRENT_HOST_NAME = "comfyui-0.3.64"
PHASES = ("decoder", "encoder", "diffusion", "done")


@dataclass
class Settings:
    seed: int = 0
    decoder_steps: int = 700
    encoder_steps: int = 300
    vae_batch: int = 16
    vae_crop: int = 10  # latent cells per side of a training crop (80 px)
    vae_lr: float = 1e-3
    diffusion_steps: int = 6500
    batch: int = 32
    lr: float = 5e-4
    warmup_steps: int = 100
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    # "v": each step's epsilon error weighted by 1 + sigma^2 (the v-prediction loss; normalised to mean 1 over
    # the schedule), "eps": unweighted. Unweighted, the high-noise steps where the text decides what goes where
    # carry almost no weight (an x0 error counts 1/sigma^2) and the model learns to ignore the text.
    loss_weighting: str = "v"
    count_weights: tuple[float, float, float] = (0.65, 0.25, 0.10)
    # Chance that a scene of two or three objects is drawn without one of them while its caption still names it,
    # as web captions name things their image lacks. The model learns to leave a named subject out about this
    # often: the catastrophic neglect the guidance is meant to undo.
    unseen_object_rate: float = 0.25
    latent_noise: float = 0.3  # the decoder's input noise: std drawn uniformly from [0, this]


@dataclass
class Progress:
    phase: str = "decoder"
    step: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per phase
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # process CPU time per phase
    losses: dict[str, list[float]] = field(default_factory=dict)  # mean loss per LOSS_WINDOW steps
    fastest_step_s: dict[str, float] = field(default_factory=dict)
    threads: dict[str, int] = field(default_factory=dict)  # torch threads of the session that last ran each phase
    sessions: list[dict[str, Any]] = field(default_factory=list)  # each start or resume: where, with how many threads


LOSS_WINDOW = 50
# A checkpoint taken when the diffusion phase begins (kept as checkpoint_diffusion_start.pt) resumes with other
# diffusion settings as long as these are unchanged.
VAE_SETTINGS = ("seed", "decoder_steps", "encoder_steps", "vae_batch", "vae_crop", "vae_lr", "latent_noise")
# Settings a run may change when it resumes: a shorter or longer diffusion phase only rescales the rest of the
# learning-rate schedule from the current step.
RESUMABLE_CHANGES = ("diffusion_steps",)


def find_current_host() -> Path:
    candidates = [Path(os.environ["COMFYUI_PATH"])] if os.environ.get("COMFYUI_PATH") else []
    candidates.append(REPO_ROOT.parent / "shared" / "hosts" / CURRENT_HOST_NAME)
    candidates += [host.path for host in hosts.discover()]
    for path in candidates:
        if hosts.is_comfyui(path) and (path / "comfyui_version.py").is_file():
            return path.resolve()
    sys.exit("train_toyworld: no current ComfyUI found; set COMFYUI_PATH to a ComfyUI 0.3.x folder "
             f"(looked at {', '.join(str(path) for path in candidates)})")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Trainer:
    def __init__(self, settings: Settings, work_dir: Path, out: Path, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.torch, self.threads = torch, threads
        self.settings, self.work_dir, self.out = settings, work_dir, out
        self.world = comfy_host.ag("toyworld.world")
        self.latent = comfy_host.ag("toyworld.latent")
        self.architecture = comfy_host.ag("toyworld.architecture")
        self.comfy_model = comfy_host.ag("toyworld.comfy_model")
        import comfy.taesd.taesd

        self.base = self.comfy_model.new_base_model(self.architecture.UNET_CONFIG)
        self.unet = self.base.diffusion_model
        self.sampling = self.base.model_sampling
        self.clip = self.comfy_model.new_clip(self.architecture.TEXT_CONFIG)
        self.text = self.comfy_model.text_encoder(self.clip).to(torch.float32)  # the host may pick fp16 for CLIP
        self.taesd = comfy.taesd.taesd.TAESD()
        self.token_cache: dict[str, list[int]] = {}
        self.vocabulary = self.world_vocabulary()
        generator = torch.Generator().manual_seed(settings.seed)
        self.initialise(generator)
        self.diffusion_parameters = [*self.unet.parameters(), *self.text.parameters()]
        for parameter in self.diffusion_parameters:
            parameter.requires_grad_(True)
        self.ema = [parameter.detach().clone() for parameter in self.diffusion_parameters]
        self.optimiser = torch.optim.AdamW(self.diffusion_parameters, lr=settings.lr, betas=(0.9, 0.99),
                                           weight_decay=0.0)
        self.vae_optimiser: Any = None
        self.progress = Progress()

    # --- set-up ------------------------------------------------------------------------------------------------

    def tokens(self, caption: str) -> list[int]:
        """The caption's 77 token ids, from the SD1 tokenizer exactly as CLIP Text Encode tokenizes it."""
        if caption not in self.token_cache:
            chunks = self.clip.tokenizer.tokenize_with_weights(caption)["l"]
            if len(chunks) != 1:
                raise ValueError(f"caption {caption!r} does not fit one 77-token chunk")
            self.token_cache[caption] = [int(token) for token, *_ in chunks[0]]
        return self.token_cache[caption]

    def world_vocabulary(self) -> list[int]:
        words = [*self.world.COLOURS, *self.world.SHAPES]
        captions = [self.world.caption([f"{word} {word}" for word in words]), "an orange circle", ""]
        return sorted({token for caption in captions for token in self.tokens(caption)})

    def initialise(self, generator: Any) -> None:
        """PyTorch's default initialisation (ComfyUI's layers skip it), residual branches and the UNet's output
        zeroed as in latent diffusion; the token table zero except the world's words (so the shipped file keeps only
        those rows)."""
        torch = self.torch
        nn = torch.nn
        with torch.no_grad():
            for module in [*self.unet.modules(), *self.text.modules(), *self.taesd.modules()]:
                for base in (nn.Conv2d, nn.Linear, nn.GroupNorm, nn.LayerNorm, nn.Embedding):
                    if isinstance(module, base):
                        base.reset_parameters(module)
                        break
            import comfy.ldm.modules.attention as attention
            import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel

            for module in self.unet.modules():
                if isinstance(module, openaimodel.ResBlock):
                    nn.init.zeros_(module.out_layers[-1].weight)
                    nn.init.zeros_(module.out_layers[-1].bias)
                if isinstance(module, attention.SpatialTransformer):
                    nn.init.zeros_(module.proj_out.weight)
                    nn.init.zeros_(module.proj_out.bias)
            nn.init.zeros_(self.unet.out[-1].weight)
            nn.init.zeros_(self.unet.out[-1].bias)
            embeddings = self.text.transformer.text_model.embeddings
            table = embeddings.token_embedding.weight
            table.zero_()
            rows = torch.tensor(self.vocabulary)
            table[rows] = 0.02 * torch.randn(len(rows), table.shape[1], generator=generator)
            position = embeddings.position_embedding.weight
            position.copy_(0.01 * torch.randn(position.shape, generator=generator))
            self.taesd.vae_scale.fill_(self.architecture.SD1_LATENT_SCALE)
            if hasattr(self.taesd, "vae_shift"):
                self.taesd.vae_shift.zero_()

    # --- data ----------------------------------------------------------------------------------------------------

    def rng(self, phase: str, step: int) -> Any:
        import numpy as np

        return np.random.default_rng([self.settings.seed, PHASES.index(phase), step])

    def step_seed(self, phase: str, step: int) -> int:
        """The torch seed of one step (noise, timesteps): the same on every run and after a resume."""
        return (self.settings.seed * 1_000_003 + PHASES.index(phase)) * 10_000_019 + step

    def vae_batch(self, step: int, phase: str) -> tuple[Any, Any]:
        """Crops of fresh scenes: world codes ``[B, 4, c, c]`` and images ``[B, 3, 8c, 8c]`` in [0, 1]."""
        import numpy as np

        torch, world, settings = self.torch, self.world, self.settings
        rng = self.rng(phase, step)
        factor, crop = self.latent.LATENT_FACTOR, settings.vae_crop
        side = world.IMAGE_SIZE // factor
        codes, images = [], []
        for _ in range(settings.vae_batch):
            scene = world.sample_scene(rng, (0.4, 0.35, 0.25))
            code, image = self.latent.scene_latent(scene), world.render(scene)
            top, left = (int(value) for value in rng.integers(0, side - crop + 1, size=2))
            codes.append(code[:, top:top + crop, left:left + crop])
            images.append(image[top * factor:(top + crop) * factor, left * factor:(left + crop) * factor])
        code = torch.from_numpy(np.stack(codes))
        image = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
        return code, image

    def diffusion_batch(self, step: int) -> tuple[Any, list[list[int]]]:
        import numpy as np

        rng = self.rng("diffusion", step)
        latents, tokens = [], []
        for _ in range(self.settings.batch):
            scene = self.world.sample_scene(rng, self.settings.count_weights)
            latents.append(self.latent.scene_latent(self.drawn_part(scene, rng)))
            dropped = rng.random() < self.settings.caption_dropout
            tokens.append(self.tokens("" if dropped else scene.caption))
        return self.torch.from_numpy(np.stack(latents)), tokens

    def drawn_part(self, scene: Any, rng: Any) -> Any:
        """The scene as its image shows it: at ``unseen_object_rate``, one of two or three objects left out."""
        rate = self.settings.unseen_object_rate
        if rate <= 0 or len(scene.objects) < 2 or rng.random() >= rate:
            return scene
        left_out = int(rng.integers(len(scene.objects)))
        return self.world.Scene(tuple(obj for index, obj in enumerate(scene.objects) if index != left_out))

    # --- phases --------------------------------------------------------------------------------------------------

    def lr_factor(self, step: int, total: int, warmup: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    def vae_step(self, step: int, phase: str) -> float:
        torch, settings = self.torch, self.settings
        code, image = self.vae_batch(step, phase)
        generator = torch.Generator().manual_seed(self.step_seed(phase, step))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if phase == "decoder":
                strength = settings.latent_noise * torch.rand(code.shape[0], 1, 1, 1, generator=generator)
                noisy = code + strength * torch.randn(code.shape, generator=generator)
                drawn = self.taesd.taesd_decoder(noisy).float()
                loss = (drawn - image).abs().mean() + (drawn - image).pow(2).mean()
            else:
                read = self.taesd.taesd_encoder(image).float()
                loss = (read - code).pow(2).mean()
        loss.backward()
        total = settings.decoder_steps if phase == "decoder" else settings.encoder_steps
        for group in self.vae_optimiser.param_groups:
            group["lr"] = settings.vae_lr * self.lr_factor(step, total, 50)
        self.vae_optimiser.step()
        self.vae_optimiser.zero_grad(set_to_none=True)
        return float(loss)

    def loss_weight(self, sigma: Any) -> Any:
        if self.settings.loss_weighting == "eps":
            return self.torch.ones_like(sigma)
        if self.settings.loss_weighting != "v":
            raise ValueError(f"loss_weighting must be 'v' or 'eps', got {self.settings.loss_weighting!r}")
        return (1 + sigma ** 2) / (1 + self.sampling.sigmas.float() ** 2).mean()

    def diffusion_step(self, step: int) -> float:
        torch, settings = self.torch, self.settings
        clean, tokens = self.diffusion_batch(step)
        generator = torch.Generator().manual_seed(self.step_seed("diffusion", step))
        timesteps = torch.randint(0, len(self.sampling.sigmas), (clean.shape[0],), generator=generator)
        sigma = self.sampling.sigmas[timesteps].float()
        noise = torch.randn(clean.shape, generator=generator)
        noisy = clean + noise * sigma[:, None, None, None]
        model_input = self.sampling.calculate_input(sigma, noisy)  # as ComfyUI's BaseModel feeds its UNet
        with torch.autocast("cpu", dtype=torch.bfloat16):
            context, _ = self.text(tokens)
            predicted = self.unet(model_input, self.sampling.timestep(sigma).float(), context=context).float()
        weight = self.loss_weight(sigma)[:, None, None, None]
        loss = (weight * (predicted - noise).pow(2)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.diffusion_parameters, 1.0)
        for group in self.optimiser.param_groups:
            group["lr"] = settings.lr * self.lr_factor(step, settings.diffusion_steps, settings.warmup_steps)
        self.optimiser.step()
        self.optimiser.zero_grad(set_to_none=True)
        decay = min(settings.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.diffusion_parameters], 1 - decay)
        return float(loss)

    # --- checkpoints ---------------------------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.work_dir / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "settings": asdict(self.settings), "progress": asdict(self.progress),
            "unet": self.unet.state_dict(), "text": self.text.state_dict(), "taesd": self.taesd.state_dict(),
            "ema": self.ema, "optimiser": self.optimiser.state_dict(),
            "vae_optimiser": self.vae_optimiser.state_dict() if self.vae_optimiser is not None else None,
        }
        temporary = self.checkpoint_path.with_suffix(".tmp")
        self.torch.save(state, temporary)
        temporary.replace(self.checkpoint_path)

    def resume(self) -> bool:
        if not self.checkpoint_path.is_file():
            return False
        state = self.torch.load(self.checkpoint_path, weights_only=False)
        saved, current = state["settings"], asdict(self.settings)
        rescheduled = {name: (saved.get(name), current[name]) for name in RESUMABLE_CHANGES
                       if saved.get(name) != current[name]}
        if rescheduled and state["progress"]["step"] < current["diffusion_steps"]:
            print(f"train_toyworld: resuming with {rescheduled}", file=sys.stderr)
            saved = {**saved, **{name: current[name] for name in rescheduled}}
        restart_diffusion = saved != current
        if restart_diffusion:
            same_vae = all(saved.get(name) == current[name] for name in VAE_SETTINGS)
            progress = state["progress"]
            if not (same_vae and progress["phase"] == "diffusion" and progress["step"] == 0):
                sys.exit(f"train_toyworld: {self.checkpoint_path} was made with other settings; use --fresh")
            changed = {name: (saved.get(name), current[name]) for name in current if saved.get(name) != current[name]}
            print(f"train_toyworld: diffusion settings changed before the diffusion phase began: {changed}; the "
                  "VAE comes from the checkpoint, the UNet and text encoder start afresh", file=sys.stderr)
        self.taesd.load_state_dict(state["taesd"])
        self.progress = Progress(**state["progress"])
        if restart_diffusion:
            return True
        self.unet.load_state_dict(state["unet"])
        self.text.load_state_dict(state["text"])
        for target, averaged in zip(self.ema, state["ema"]):
            target.copy_(averaged)
        self.optimiser.load_state_dict(state["optimiser"])
        if state["vae_optimiser"] is not None:
            self.start_vae_optimiser(self.progress.phase)
            self.vae_optimiser.load_state_dict(state["vae_optimiser"])
        return True

    def start_vae_optimiser(self, phase: str) -> None:
        part = self.taesd.taesd_decoder if phase == "decoder" else self.taesd.taesd_encoder
        for parameter in self.taesd.parameters():
            parameter.requires_grad_(False)
        for parameter in part.parameters():
            parameter.requires_grad_(True)
        self.vae_optimiser = self.torch.optim.AdamW(part.parameters(), lr=self.settings.vae_lr, weight_decay=0.0)

    # --- the run -------------------------------------------------------------------------------------------------

    def run(self, checkpoint_minutes: float) -> None:
        from tqdm import tqdm

        totals = {"decoder": self.settings.decoder_steps, "encoder": self.settings.encoder_steps,
                  "diffusion": self.settings.diffusion_steps}
        while self.progress.phase != "done":
            phase = self.progress.phase
            if phase in ("decoder", "encoder") and self.vae_optimiser is None:
                self.start_vae_optimiser(phase)
            if phase == "diffusion":
                self.unet.train()
                self.text.train()
            losses = self.progress.losses.setdefault(phase, [])
            window: list[float] = []
            last_save = time.monotonic()
            bar = tqdm(total=totals[phase], initial=self.progress.step, desc=phase, unit="step", mininterval=10,
                       file=sys.stderr)
            while self.progress.step < totals[phase]:
                start_wall, start_cpu = time.perf_counter(), cpu_seconds()
                step = self.progress.step
                loss = self.diffusion_step(step) if phase == "diffusion" else self.vae_step(step, phase)
                elapsed = time.perf_counter() - start_wall
                self.progress.seconds[phase] = self.progress.seconds.get(phase, 0.0) + elapsed
                self.progress.cpu_seconds[phase] = self.progress.cpu_seconds.get(phase, 0.0) + cpu_seconds() - start_cpu
                self.progress.fastest_step_s[phase] = min(self.progress.fastest_step_s.get(phase, math.inf), elapsed)
                self.progress.threads[phase] = self.threads
                self.progress.step += 1
                window.append(loss)
                if len(window) == LOSS_WINDOW:
                    losses.append(sum(window) / len(window))
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
                    window = []
                bar.update(1)
                if time.monotonic() - last_save > checkpoint_minutes * 60:
                    self.save_checkpoint()
                    last_save = time.monotonic()
            bar.close()
            self.progress.phase = PHASES[PHASES.index(phase) + 1]
            self.progress.step = 0
            self.vae_optimiser = None
            self.save_checkpoint()
            if self.progress.phase == "diffusion":
                shutil.copyfile(self.checkpoint_path, self.work_dir / "checkpoint_diffusion_start.pt")

    # --- export --------------------------------------------------------------------------------------------------

    def export(self, average: bool = True) -> dict[str, Any]:
        torch = self.torch
        if average:
            with torch.no_grad():
                for parameter, averaged in zip(self.diffusion_parameters, self.ema):
                    parameter.copy_(averaged)
        tensors = self.comfy_model.pack_weights(self.unet.state_dict(), self.text.transformer.state_dict(),
                                                self.taesd.state_dict(), self.vocabulary)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.comfy_model.save(self.out, tensors, self.architecture.UNET_CONFIG, self.architecture.TEXT_CONFIG,
                              {"trained_by": "tools/train_toyworld.py", "seed": str(self.settings.seed)})
        stored = {part: sum(value.numel() for key, value in tensors.items() if key.startswith(part))
                  for part in ("unet.", "text", "vae.")}
        return {"file": self.out.name, "megabytes": round(self.out.stat().st_size / 2 ** 20, 2),
                "stored_values": stored, "vocabulary_tokens": len(self.vocabulary)}

    def vae_round_trip(self, count: int = 100) -> dict[str, Any]:
        """The decoder's drawings of held-out scenes' codes (and of codes with sampler-like noise), read back by
        the detector; and the encoder's error on the same scenes."""
        import numpy as np

        torch = self.torch
        detect, world = comfy_host.ag("toyworld.detect"), self.world
        scenes = world.scenes(10_000 + self.settings.seed, count)
        right = {"clean": 0, "noisy": 0}
        encoder_error = 0.0
        generator = torch.Generator().manual_seed(self.settings.seed)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            for scene in scenes:
                code = torch.from_numpy(self.latent.scene_latent(scene))[None]
                truth = sorted((obj.colour, obj.shape) for obj in scene.objects)
                noisy = code + 0.1 * torch.randn(code.shape, generator=generator)
                for kind, latent in (("clean", code), ("noisy", noisy)):
                    drawn = self.taesd.taesd_decoder(latent)[0].float().clamp(0, 1).permute(1, 2, 0).numpy()
                    right[kind] += sorted((d.colour, d.shape) for d in detect.detect(drawn)) == truth
                image = torch.from_numpy(world.render(scene)).permute(2, 0, 1)[None].float() / 255.0
                encoder_error += float((self.taesd.taesd_encoder(image) - code).pow(2).mean())
        return {"scenes": count, "decoded_and_detected_right": right["clean"] / count,
                "decoded_with_noise_0.1_and_detected_right": right["noisy"] / count,
                "encoder_mse": encoder_error / count,
                "code_variance": float(np.var([self.latent.scene_latent(s) for s in scenes]))}


IDLE_NOTE = ("per phase: run in one thread, its process CPU time, which a two-thread run on two idle cores does not "
             "exceed (on a shared CPU one thread wastes no time waiting for a descheduled partner thread); run in "
             "more, its wall time, which other work on the CPU can only have lengthened (CPU time / threads would "
             "assume threads that never wait)")


def write_report(out: Path, report: dict[str, Any]) -> None:
    json_path = out.with_name("training_report.json")
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Toy world model: training report", "", "Written by `tools/train_toyworld.py`.", ""]
    timing = report["timing"]
    lines += ["## Time", "", "| phase | steps | threads | wall s | CPU s | fastest step s | idle 2-core estimate s |",
              "|---|---|---|---|---|---|---|"]
    for phase, row in timing["phases"].items():
        lines.append(f"| {phase} | {row['steps']} | {row['threads'] or '?'} | {row['wall_s']:.0f} | "
                     f"{row['cpu_s']:.0f} | {row['fastest_step_s']:.3f} | {row['idle_estimate_s']:.0f} |")
    lines += ["", f"Total wall time {timing['wall_s']:.0f} s; idle 2-core estimate {timing['idle_estimate_s']:.0f} s "
              f"({timing['idle_estimate_note']}).", ""]
    lines += ["## VAE", "", "```json", json.dumps(report["vae_round_trip"], indent=2), "```", ""]
    lines += ["## Losses (mean per 50 steps, first and last five)", ""]
    for phase, losses in report["losses"].items():
        shown = ", ".join(f"{value:.4f}" for value in losses[:5]) + " ... " + ", ".join(
            f"{value:.4f}" for value in losses[-5:])
        lines.append(f"- {phase}: {shown}")
    if "quality" in report:
        lines += ["", "## Quality (through the pack's nodes)", "", "```json", json.dumps(report["quality"], indent=2),
                  "```"]
    lines += ["", "## Settings", "", "```json", json.dumps(report["settings"], indent=2), "```", ""]
    out.with_name("training_report.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "toyworld" / "weights" / "toyworld.safetensors")
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "train_out")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
    parser.add_argument("--measure", type=int, default=0, help="prompts per quality measure (0: none)")
    parser.add_argument("--export-only", action="store_true",
                        help="export the checkpoint's weights as they are (to look at a run in progress)")
    parser.add_argument("--no-average", action="store_true",
                        help="export the current weights instead of their moving average")
    defaults = Settings()
    for name, value in asdict(defaults).items():
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    arguments = parser.parse_args()
    settings = Settings(**{name: getattr(arguments, name) for name in asdict(defaults)
                           if hasattr(arguments, name)})

    host = find_current_host()
    print(f"train_toyworld: host {hosts.describe(host)} at {host}", file=sys.stderr)
    comfy_host.activate(host, test_nodes=False)
    trainer = Trainer(settings, arguments.work_dir, arguments.out, arguments.threads)
    if not arguments.fresh and trainer.resume():
        print(f"train_toyworld: resumed at {trainer.progress.phase} step {trainer.progress.step}", file=sys.stderr)
    if not arguments.export_only:
        trainer.progress.sessions.append({"phase": trainer.progress.phase, "step": trainer.progress.step,
                                          "threads": arguments.threads, "load_average": os.getloadavg()[0],
                                          "diffusion_steps": settings.diffusion_steps})
        trainer.run(arguments.checkpoint_minutes)
    exported = trainer.export(average=not arguments.no_average)
    progress = trainer.progress
    steps = {"decoder": settings.decoder_steps, "encoder": settings.encoder_steps,
             "diffusion": settings.diffusion_steps}
    # A phase without a record (not run yet, or run before threads were recorded) has unknown threads: its
    # estimate is its wall time, as for more than one thread.
    threads = {phase: progress.threads.get(phase) for phase in steps}
    phases = {phase: {"steps": steps[phase], "threads": threads[phase], "wall_s": progress.seconds.get(phase, 0.0),
                      "cpu_s": progress.cpu_seconds.get(phase, 0.0),
                      "fastest_step_s": progress.fastest_step_s.get(phase, 0.0),
                      "idle_estimate_s": progress.cpu_seconds.get(phase, 0.0) if threads[phase] == 1
                      else progress.seconds.get(phase, 0.0)}
              for phase in steps}
    report: dict[str, Any] = {
        "weights": exported,
        "settings": asdict(settings),
        "host": hosts.describe(host),
        "timing": {"phases": phases, "wall_s": sum(row["wall_s"] for row in phases.values()),
                   "cpu_s": sum(row["cpu_s"] for row in phases.values()),
                   "idle_estimate_s": sum(row["idle_estimate_s"] for row in phases.values()),
                   "idle_estimate_note": IDLE_NOTE},
        "sessions": progress.sessions,
        "losses": progress.losses,
        "vae_round_trip": trainer.vae_round_trip(),
    }
    if arguments.measure:
        import eval as toy_eval

        report["quality"] = toy_eval.measure_model(arguments.out, arguments.measure)
    write_report(arguments.out, report)
    print(json.dumps({key: report[key] for key in ("weights", "timing", "vae_round_trip")}, indent=2))


if __name__ == "__main__":
    main()
