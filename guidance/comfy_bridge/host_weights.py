"""Making the host's model weights usable by autograd: the one change the pack makes to the shared model."""
from __future__ import annotations

import torch


def make_autograd_ready(module: torch.nn.Module) -> None:
    """Turn inference-tensor parameters and buffers into normal tensors with the same values, in place.

    ComfyUI loads checkpoints under ``inference_mode``, and autograd cannot save inference tensors for backward, so
    a guidance pass needs normal ones. The swap is done once per tensor (normal tensors stay as they are) on the
    model that every clone shares: values are unchanged and the memory is taken once, not per run. ComfyUI's weight
    patches (LoRA) keep working: it backs up and restores whole parameters, which this swap leaves in place.
    """
    with torch.inference_mode(False), torch.no_grad():
        for submodule in module.modules():
            for name, parameter in submodule._parameters.items():
                if parameter is not None and parameter.is_inference():
                    submodule._parameters[name] = torch.nn.Parameter(parameter.clone(), requires_grad=False)
            for name, buffer in submodule._buffers.items():
                if buffer is not None and buffer.is_inference():
                    submodule._buffers[name] = buffer.clone()


def entry_networks(entry: dict) -> list[torch.nn.Module]:
    """The networks a conditioning entry brings into a model call, which a guidance pass runs and differentiates
    through: its control chain (ControlNet, T2I-Adapter, ControlLoRA: each control and the ``previous_controlnet`` it
    chains to) and its GLIGEN model."""
    networks: list[torch.nn.Module] = []
    control = entry.get("control")
    while control is not None:
        networks.extend(value for value in vars(control).values() if isinstance(value, torch.nn.Module))
        control = getattr(control, "previous_controlnet", None)
    if "gligen" in entry:
        networks.append(entry["gligen"][1].model)  # (kind, its ModelPatcher, boxes)
    return networks
