"""What a guidance pass keeps for its backward on FLUX.1-dev and SD3.5 large at 1024x1024, computed with meta tensors
(no weights, no memory, no GPU): the host's own model classes at their real sizes run the pack's guidance-pass
forward, and a saved-tensor hook adds up what autograd keeps.

For each model, with the blocks checkpointed (the pack's default: FLUX's out-of-place double blocks under
non-reentrant checkpointing, SD3's blocks checkpointed by the host) and without (every activation kept):

* ``saved_gib``: what autograd keeps at the end of the forward (block inputs and the layers before the first block
  when checkpointed; everything when not). Attention matrices ``[.., L, L]`` are counted apart
  (``attention_matrices_gib``): PyTorch's math attention keeps them, flash and memory-efficient kernels keep a
  log-sum-exp instead.
* ``per_block_saved_gib``: what one more joint block adds (without checkpointing: its activations, which the
  backward of a checkpointed block rebuilds, one block at a time, on top of ``saved_gib``).
* ``*_peak_over_plain_gib``: the guidance pass's memory beyond plain sampling (which keeps nothing for a backward),
  weights and the sampler's own tensors aside.

Both with the text-normalised maps (A&E, D&B, A-STAR) and with FOCUS's joint probabilities. bf16 activations, batch 1,
the prompt's tokens at the encoders' minimum lengths (FLUX: 256 T5; SD3.5: 77 CLIP + 77 T5). ``python
tools/dit_memory.py`` prints one JSON document.
"""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

from devkit import comfy_host, hosts

GIB = 2 ** 30
FLUX_DEV = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096,
            "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 19, "depth_single_blocks": 38,
            "axes_dim": [16, 56, 56], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True}
SD35_LARGE = {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 38, "input_size": None,
              "pos_embed_scaling_factor": None, "pos_embed_max_size": 192, "num_patches": 192 * 192,
              "adm_in_channels": 2048, "qk_norm": "rms", "x_block_self_attn_layers": [],
              "context_embedder_config": {"target": "torch.nn.Linear",
                                          "params": {"in_features": 4096, "out_features": 64 * 38}}}
SIZE = 1024
UNCHECKED = "unchecked"  # SD3's blocks without the host's checkpointing


def current_host() -> Path:
    for host in hosts.discover():
        if (host.path / "comfy" / "ldm" / "flux").is_dir():
            return host.path
    sys.exit("dit_memory: no ComfyUI with FLUX and SD3 found (../shared/hosts/comfyui-0.3.64 beside the repository)")


class SavedBytes:
    """A saved_tensors_hooks pair that adds up the bytes of every tensor autograd saves, once per tensor object."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.seen: set[int] = set()
        self.total = self.attention = 0

    def pack(self, tensor: Any) -> Any:
        if id(tensor) not in self.seen:
            self.seen.add(id(tensor))
            size = tensor.numel() * tensor.element_size()
            self.total += size
            if tensor.ndim >= 2 and tuple(tensor.shape[-2:]) == (self.length, self.length):
                self.attention += size
        return tensor


def build(family: str) -> tuple[Any, Any]:
    """The diffusion model on the meta device (bf16) and a function running it on meta inputs."""
    import comfy.ldm.flux.model
    import comfy.ldm.modules.diffusionmodules.mmdit
    import comfy.ops
    import torch

    dtype, meta = torch.bfloat16, torch.device("meta")
    operations = comfy.ops.disable_weight_init
    latent = (1, 16, SIZE // 8, SIZE // 8)
    if family == "flux":
        model = comfy.ldm.flux.model.Flux(**FLUX_DEV, dtype=dtype, device=meta, operations=operations)
        context = torch.empty(1, 256, 4096, dtype=dtype, device=meta)
        pooled = torch.empty(1, 768, dtype=dtype, device=meta)

        def run(x: Any, options: dict) -> None:
            model(x, torch.ones(1, device=meta, dtype=dtype), context, y=pooled,
                  guidance=torch.ones(1, device=meta, dtype=dtype), transformer_options=options)
    else:
        model = comfy.ldm.modules.diffusionmodules.mmdit.OpenAISignatureMMDITWrapper(
            **SD35_LARGE, dtype=dtype, device=meta, operations=operations)
        context = torch.empty(1, 154, 4096, dtype=dtype, device=meta)
        pooled = torch.empty(1, 2048, dtype=dtype, device=meta)

        def run(x: Any, options: dict) -> None:
            model(x, torch.ones(1, device=meta, dtype=dtype), context=context, y=pooled, transformer_options=options)
    model.requires_grad_(False)
    return model, run, latent, context.shape[1]


def unchecked_mmdit_patches(model: Any) -> dict:
    """Replace patches that run SD3's joint blocks without the checkpointing the host's replace path applies (for
    the "without checkpointing" column); the pack's patches wrap them."""

    def patch(index: int) -> Any:
        def run(args: dict, extra: dict) -> dict:
            txt, img = model.joint_blocks[index](args["txt"], args["img"], c=args["vec"], use_checkpoint=False,
                                                 transformer_options=args["transformer_options"])
            return {"txt": txt, "img": img}
        return run

    dit = {("double_block", index): patch(index) for index in range(len(model.joint_blocks))}
    return {"transformer_options": {"patches_replace": {"dit": dit}}}


def measure(family: str, block_mode: str, joint: bool) -> dict:
    import torch

    capture = comfy_host.ag("guidance.comfy_bridge.dit.capture")
    families = comfy_host.ag("guidance.comfy_bridge.dit.families")
    store_module = comfy_host.ag("guidance.capture.store")
    recorder = comfy_host.ag("guidance.comfy_bridge.recorder")
    model, run, latent, text_tokens = build(family)
    found = families.dit_family(model)
    grid = (latent[2] // 2, latent[3] // 2)
    result = {}
    for blocks in (None, (0,)):  # all joint blocks; the first only (the difference is one block's share)
        store = store_module.AttentionStore(text_tokens, guidance_pass=True)
        options = unchecked_mmdit_patches(model) if block_mode == UNCHECKED else {}
        plan = capture.DiTCapture(model, found, grid, None, blocks).guidance_plan(
            options, store, types.SimpleNamespace(levels=(), joint_attention=joint),
            block_mode="stock" if block_mode == UNCHECKED else block_mode)
        store.expected_rows = plan.calls_per_image
        counter = SavedBytes(text_tokens + grid[0] * grid[1])
        x = torch.empty(latent, dtype=torch.bfloat16, device="meta", requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda tensor: tensor), recorder.recording(store):
            try:
                run(x, plan.options["transformer_options"])
            except recorder.ForwardComplete:
                pass
        result["all" if blocks is None else "first"] = counter
    every, first = result["all"], result["first"]
    return {"saved_gib": round(every.total / GIB, 3), "attention_matrices_gib": round(every.attention / GIB, 3),
            "per_block_saved_gib": round((every.total - first.total) / (found.blocks - 1) / GIB, 4),
            "per_block_attention_matrices_gib": round((every.attention - first.attention) / (found.blocks - 1) / GIB,
                                                      4)}


def main() -> None:
    comfy_host.activate(current_host(), test_nodes=False)
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False
    report: dict[str, Any] = {"size": SIZE, "dtype": "bfloat16", "batch": 1,
                              "method": "saved_tensors_hooks over the guidance-pass forward on meta tensors"}
    for family, name, checked, unchecked in (("flux", "FLUX.1-dev", "checkpointed", "out_of_place"),
                                             ("sd3", "SD3.5 large", "stock", UNCHECKED)):
        rows = {}
        for joint in (False, True):
            with_checkpoints, without = measure(family, checked, joint), measure(family, unchecked, joint)
            rows["joint (FOCUS)" if joint else "text (A&E, D&B, A-STAR)"] = {
                "checkpointed_blocks": with_checkpoints,
                "without_checkpointing": without,
                # the backward rebuilds one block at a time: its activations come on top of what is saved; flash and
                # memory-efficient attention keep no attention matrix
                "checkpointed_peak_over_plain_gib": {
                    "math_attention": round(with_checkpoints["saved_gib"] + without["per_block_saved_gib"], 3),
                    "flash_attention": round(with_checkpoints["saved_gib"] + without["per_block_saved_gib"]
                                             - without["per_block_attention_matrices_gib"], 3)},
                "without_checkpointing_peak_over_plain_gib": {
                    "math_attention": without["saved_gib"],
                    "flash_attention": round(without["saved_gib"] - without["attention_matrices_gib"], 3)},
            }
        report[name] = rows
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
