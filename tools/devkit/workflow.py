"""Workflows (the frontend's saved UI-format JSON) run through the active host: conversion to the API prompt,
validation and execution by the host's own ``execution`` module. Import only after a host is active.

Conversion follows the frontend's ``graphToPrompt``: widget values are matched to the node's widget inputs in the
order of the host's ``INPUT_TYPES`` (required, then optional); links replace widget values of converted widgets;
``Reroute`` nodes are followed, ``PrimitiveNode`` values are written into their targets, ``Note`` nodes and muted
nodes are left out (and inputs linked to muted nodes dropped). Bypassed nodes, group nodes and subgraphs are
rejected. Dynamic-prompt syntax in text (``{a|b}``) is passed through unresolved.
"""
from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import execution
import folder_paths
import server

import nodes

TINY_LOADER = "AG_TestTinyCheckpoint"
MAX_TEST_SIZE = 256  # px, longest side of EmptyLatentImage in executed tests
MAX_TEST_STEPS = 4
MAX_TEST_REFINEMENT = 3  # updates per refinement point: a random tiny model never meets the thresholds
REFINEMENT_CAPS = ("max_refinement_steps", "first_step_max_refinement_steps")

_FRONTEND_ONLY = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
_MUTED, _BYPASSED = 2, 4  # LiteGraph node modes ("never", "bypass")
_VALUE_WIDGETS = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
_SEED_NAMES = frozenset({"seed", "noise_seed"})  # the frontend gives these INT widgets a control widget by name
_CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})


class WorkflowError(ValueError):
    """A workflow the harness cannot convert, worded as ``<file or node>: <what and why>``."""


@dataclass(frozen=True)
class _Link:
    origin_id: str
    origin_slot: int


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _links(workflow: dict) -> dict[int, _Link]:
    """Link id -> origin; saved as ``[id, origin, slot, target, slot, type]`` (schema 0.4) or as objects (1.x)."""
    links = {}
    for link in workflow.get("links") or []:
        if isinstance(link, dict):
            links[link["id"]] = _Link(str(link["origin_id"]), int(link["origin_slot"]))
        else:
            links[link[0]] = _Link(str(link[1]), int(link[2]))
    return links


def input_specs(node_class: type) -> tuple[list[tuple[str, Any, dict]], list[tuple[str, Any, dict]]]:
    """``(required, optional)`` as ``(name, type, options)`` in the host's order."""
    declared = node_class.INPUT_TYPES()
    sections = []
    for section in ("required", "optional"):
        specs = []
        for name, spec in (declared.get(section) or {}).items():
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            specs.append((name, spec[0], options))
        sections.append(specs)
    return sections[0], sections[1]


def _is_value_type(input_type: Any) -> bool:
    return isinstance(input_type, (list, tuple)) or input_type in _VALUE_WIDGETS


def _has_control(name: str, input_type: Any, options: dict) -> bool:
    """Whether the frontend puts a control_after_generate widget (fixed/increment/...) right after this one."""
    if input_type == "INT":
        return name in _SEED_NAMES or bool(options.get("control_after_generate"))
    return input_type == "FLOAT" and bool(options.get("control_after_generate"))


class _WidgetValues:
    def __init__(self, where: str, values: list) -> None:
        self.where, self.values, self.position = where, values, 0

    def take(self, name: str) -> Any:
        if self.position >= len(self.values):
            raise WorkflowError(f"{self.where}: widgets_values has {len(self.values)} values, too few for this host's "
                                f"inputs (none left for '{name}'); the workflow was saved for another version of the node")
        self.position += 1
        return self.values[self.position - 1]

    def finish(self) -> None:
        if self.position != len(self.values):
            raise WorkflowError(f"{self.where}: widgets_values has {len(self.values)} values, this host's inputs "
                                f"account for {self.position}; the workflow was saved for another version of the node")


def _widget_inputs(where: str, node_class: type, values: list) -> dict[str, Any]:
    """Widget input name -> value, consuming ``values`` as the frontend lays its widgets out.

    Inputs with ``forceInput`` have no widget in most frontend versions and a hidden one (with a saved value) in
    some: a node that has such inputs is read the first way and, if its values do not fit, the second.
    """
    required, optional = input_specs(node_class)
    forced = any(options.get("forceInput") and _is_value_type(kind) for _, kind, options in required + optional)
    errors = []
    for with_forced in (False, True) if forced else (False,):
        try:
            return _consume(_WidgetValues(where, values), required, optional, with_forced)
        except WorkflowError as error:
            errors.append(error)
    raise errors[0]


def _consume(stream: _WidgetValues, required: list, optional: list, with_forced: bool) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for section in (required, optional):
        for name, input_type, options in section:
            if not _is_value_type(input_type) or (options.get("forceInput") and not with_forced):
                continue
            if options.get("control_after_generate") and not _has_control(name, input_type, options):
                raise WorkflowError(f"{stream.where}: input '{name}' has a control_after_generate option on a "
                                    f"{input_type} widget, which frontends save differently; the harness does not "
                                    "support it")
            inputs[name] = stream.take(name)
            if _has_control(name, input_type, options):
                control = stream.take(f"{name} control_after_generate")
                if control not in _CONTROL_VALUES and not isinstance(control, bool):  # bool: legacy, as loaded
                    raise WorkflowError(f"{stream.where}: expected the control_after_generate value of '{name}' "
                                        f"(one of {sorted(_CONTROL_VALUES)}), found {control!r}: widgets_values are "
                                        "out of step with this host's inputs")
        if section is required:  # the frontend appends an "upload" button widget to the required inputs
            for _ in range(sum(bool(options.get("image_upload")) for _, _, options in required)):
                stream.take("upload")
    stream.finish()
    return inputs


def _widget_values(where: str, node: dict) -> list:
    values = node.get("widgets_values") or []
    if not isinstance(values, list):
        raise WorkflowError(f"{where}: widgets_values is a {type(values).__name__}; only lists are supported")
    return values


def to_prompt(workflow: dict, registry: Mapping[str, type] | None = None, name: str = "workflow") -> dict[str, dict]:
    """The API prompt ``{node_id: {"class_type", "inputs", "_meta"}}`` the frontend would queue for ``workflow``.

    ``registry`` defaults to the active host's ``nodes.NODE_CLASS_MAPPINGS``.
    """
    registry = nodes.NODE_CLASS_MAPPINGS if registry is None else registry
    if (workflow.get("definitions") or {}).get("subgraphs"):
        raise WorkflowError(f"{name}: subgraphs are not supported by the harness")
    if (workflow.get("extra") or {}).get("groupNodes"):
        raise WorkflowError(f"{name}: group nodes are not supported by the harness")
    by_id = {str(node["id"]): node for node in workflow.get("nodes") or []}
    links = _links(workflow)

    def source(link_id: int, where: str) -> _Link | tuple[Any] | None:
        """What feeds a link: a node output, a literal ``(value,)`` from a PrimitiveNode, or None (muted/unset)."""
        seen = set()
        while True:
            if link_id not in links:
                raise WorkflowError(f"{where}: link {link_id} is not in the workflow's links")
            link = links[link_id]
            origin = by_id.get(link.origin_id)
            if origin is None:
                raise WorkflowError(f"{where}: link {link_id} comes from node {link.origin_id}, which does not exist")
            if origin["type"] == "Reroute":
                if link_id in seen:
                    raise WorkflowError(f"{where}: Reroute nodes form a loop")
                seen.add(link_id)
                feeding = (origin.get("inputs") or [{}])[0].get("link")
                if feeding is None:
                    return None
                link_id = feeding
                continue
            if origin["type"] == "PrimitiveNode":
                return (_widget_values(f"{name}: node {link.origin_id} (PrimitiveNode)", origin)[0],)
            if origin.get("mode", 0) == _MUTED:
                return None
            return link

    prompt: dict[str, dict] = {}
    for node_id, node in by_id.items():
        class_type = node["type"]
        where = f"{name}: node {node_id} ({class_type})"
        if class_type in _FRONTEND_ONLY or node.get("mode", 0) == _MUTED:
            continue
        if node.get("mode", 0) == _BYPASSED:
            raise WorkflowError(f"{where}: bypassed nodes are not supported by the harness")
        node_class = registry.get(class_type)
        if node_class is None:
            raise WorkflowError(f"{where}: this host has no node type {class_type!r}")
        inputs = _widget_inputs(where, node_class, _widget_values(where, node))
        for slot in node.get("inputs") or []:
            input_name = (slot.get("widget") or {}).get("name") or slot["name"]
            if slot.get("link") is None:
                continue
            fed_by = source(slot["link"], f"{where}: input '{input_name}'")
            if fed_by is None:
                inputs.pop(input_name, None)
            elif isinstance(fed_by, tuple):
                inputs[input_name] = fed_by[0]
            else:
                inputs[input_name] = [fed_by.origin_id, fed_by.origin_slot]
        prompt[node_id] = {"class_type": class_type, "inputs": inputs, "_meta": {"title": node.get("title", class_type)}}
    return prompt


def checkpoint_family(checkpoint_name: str) -> str:
    """The tiny model family standing in for a checkpoint (or diffusion model) file: "flux" -> flux, "chroma" ->
    chroma, "sd3" -> sd3 (sd35_medium if "medium"), "xl" -> sdxl, "v2"/"sd2"/"768" -> sd2, else sd1."""
    lowered = checkpoint_name.lower()
    if "flux" in lowered:
        return "flux"
    if "chroma" in lowered:
        return "chroma"
    if "sd3" in lowered:
        return "sd35_medium" if "medium" in lowered else "sd3"
    if "xl" in lowered:
        return "sdxl"
    if re.search(r"v2|sd2|768", lowered):
        return "sd2"
    return "sd1"


# Loader node type -> the tiny loader's output (MODEL 0, CLIP 1, VAE 2) standing in for each of its outputs.
LOADER_OUTPUTS = {"CheckpointLoaderSimple": (0, 1, 2), "UNETLoader": (0,), "DualCLIPLoader": (1,),
                  "TripleCLIPLoader": (1,), "CLIPLoader": (1,), "VAELoader": (2,)}
_MODEL_FILES = {"CheckpointLoaderSimple": "ckpt_name", "UNETLoader": "unet_name"}


def tiny_swaps(prompt: dict[str, dict]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Loader node id -> (tiny family, the tiny loader's output per loader output). Model loaders name the family
    by their file; text encoder and VAE loaders take the family of the workflow's (first) model loader."""
    loaders = {node_id: node for node_id, node in prompt.items() if node["class_type"] in LOADER_OUTPUTS}
    model_families = [checkpoint_family(str(node["inputs"].get(_MODEL_FILES[node["class_type"]], "")))
                      for node in loaders.values() if node["class_type"] in _MODEL_FILES]
    default = model_families[0] if model_families else "sd1"
    return {node_id: (checkpoint_family(str(node["inputs"].get(_MODEL_FILES[node["class_type"]], "")))
                      if node["class_type"] in _MODEL_FILES else default, LOADER_OUTPUTS[node["class_type"]])
            for node_id, node in loaders.items()}


DIT_FAMILIES = ("flux", "chroma", "sd3", "sd35_medium")


def dit_workflow(workflow: dict) -> bool:
    """Whether a saved (UI) workflow loads a diffusion transformer (which the 2024 host cannot run)."""
    return any(checkpoint_family(str((node.get("widgets_values") or [""])[0])) in DIT_FAMILIES
               for node in workflow.get("nodes") or [] if node["type"] in _MODEL_FILES)


def with_tiny_checkpoints(prompt: dict[str, dict]) -> dict[str, dict]:
    """A copy of ``prompt`` with every checkpoint, diffusion model, text encoder and VAE loader replaced by the
    test-only tiny-model loader (links re-pointed to its MODEL, CLIP and VAE outputs)."""
    swaps = tiny_swaps(prompt)
    swapped = copy.deepcopy(prompt)
    for node_id, (family, _) in swaps.items():
        swapped[node_id] = {**swapped[node_id], "class_type": TINY_LOADER, "inputs": {"family": family}}
    for node in swapped.values():
        for value in node["inputs"].values():
            if isinstance(value, list) and len(value) == 2 and value[0] in swaps:
                value[1] = swaps[value[0]][1][value[1]]
    return swapped


def shrunk(prompt: dict[str, dict], max_size: int = MAX_TEST_SIZE, max_steps: int = MAX_TEST_STEPS) -> dict[str, dict]:
    """A copy of ``prompt`` that executes in seconds on CPU: EmptyLatentImage, EmptySD3LatentImage (and the preview
    size of the pack's box layouts, which are fractions of any size) scaled down so its longest side is at most
    ``max_size`` (multiples of 64, aspect kept), every literal ``steps`` input capped at ``max_steps`` and every
    refinement cap at :data:`MAX_TEST_REFINEMENT`."""
    small = copy.deepcopy(prompt)
    for node in small.values():
        inputs = node["inputs"]
        if node["class_type"] in ("EmptyLatentImage", "EmptySD3LatentImage", "AG_BoxLayout"):
            width, height = inputs["width"], inputs["height"]
            if isinstance(width, int) and isinstance(height, int):
                scale = min(1.0, max_size / max(width, height))
                inputs["width"] = max(64, int(width * scale) // 64 * 64)
                inputs["height"] = max(64, int(height * scale) // 64 * 64)
        if isinstance(inputs.get("steps"), int):
            inputs["steps"] = min(inputs["steps"], max_steps)
        for cap in REFINEMENT_CAPS:
            if isinstance(inputs.get(cap), int):
                inputs[cap] = min(inputs[cap], MAX_TEST_REFINEMENT)
    return small


@dataclass(frozen=True)
class Validation:
    """What the host's ``execution.validate_prompt`` returned."""

    ok: bool
    error: dict | None
    outputs: list[str]
    node_errors: dict

    def messages(self) -> list[str]:
        found = [f"{self.error['message']}: {self.error['details']}"] if self.error else []
        for node_id, entry in self.node_errors.items():
            for error in entry["errors"]:
                found.append(f"node {node_id} ({entry['class_type']}): {error['message']}: {error['details']}")
        return found


def validate(prompt: dict[str, dict]) -> Validation:
    """The host's own validation: ``validate_prompt(prompt_id, prompt, partial_execution_list)``, async, in the current
    ComfyUI; ``validate_prompt(prompt)``, sync, in the 2024 one (which raises KeyError for an unknown node type)."""
    parameters = inspect.signature(execution.validate_prompt).parameters
    arguments = (prompt,) if len(parameters) == 1 else ("ag-test", prompt, None)
    result = execution.validate_prompt(*arguments)
    if inspect.isawaitable(result):
        result = asyncio.run(result)
    ok, error, outputs, node_errors = result
    return Validation(bool(ok), error, list(outputs), dict(node_errors or {}))


class RecordingServer:
    """Stands in for ``server.PromptServer``, of which PromptExecutor uses only ``client_id``, ``last_node_id``,
    ``send_sync`` and (current host, preview images) ``sockets_metadata``; nodes reach it as
    ``PromptServer.instance`` (during :func:`execute`), e.g. for the text the current host shows on a node
    (``send_progress_text``, packed by the host's own method). A real PromptServer cannot be built here: the
    current host's constructor exits when the frontend package is not installed, and its ``send_sync`` needs a
    running event loop. This one records every message instead."""

    def __init__(self) -> None:
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.sockets_metadata: dict[str, dict] = {}
        self.messages: list[tuple[str, Any]] = []

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        self.messages.append((event, data))

    def __getattr__(self, name: str) -> Any:
        if name == "send_progress_text" and hasattr(server.PromptServer, name):  # current host only
            return functools.partial(server.PromptServer.send_progress_text, self)
        raise AttributeError(name)


@dataclass
class Execution:
    success: bool
    status_messages: list[tuple[str, dict]]
    server_messages: list[tuple[str, Any]]
    outputs: dict[str, dict] = field(default_factory=dict)  # node id -> its UI output (images, text, ...)

    def node_texts(self) -> dict[str, list[str]]:
        """The texts the server sent to show on nodes (the current host's progress text), by node id."""
        texts: dict[str, list[str]] = {}
        for event, data in self.server_messages:
            if isinstance(data, (bytes, bytearray)) and event == getattr(server.BinaryEventTypes, "TEXT", None):
                (length,) = struct.unpack(">I", data[:4])
                texts.setdefault(data[4:4 + length].decode(), []).append(data[4 + length:].decode())
        return texts

    def error(self) -> str | None:
        for event, data in self.status_messages:
            if event in ("execution_error", "execution_interrupted"):
                return (f"{event} in node {data.get('node_id')} ({data.get('node_type')}): "
                        f"{data.get('exception_type', '')}: {data.get('exception_message', '')}\n"
                        + "".join(data.get("traceback") or []))
        return None


def execute(prompt: dict[str, dict], outputs: list[str], workflow: dict | None = None) -> Execution:
    """Run ``prompt`` for the output node ids ``outputs`` through the host's own ``execution.PromptExecutor``.

    Extra data is what the frontend sends: a client id (so every per-node message is sent, and recorded) and the
    workflow for the images' metadata.
    """
    recording = RecordingServer()
    executor = execution.PromptExecutor(recording)
    extra_data = {"client_id": "ag-test", "extra_pnginfo": {"workflow": workflow or {}}}
    running = getattr(server.PromptServer, "instance", None)
    server.PromptServer.instance = recording  # as the running server is, for the nodes
    try:
        executor.execute(prompt, "ag-test", extra_data, outputs)
    finally:
        server.PromptServer.instance = running
    history = getattr(executor, "history_result", None)  # current host; the 2024 host keeps outputs_ui
    ui_outputs = history["outputs"] if history is not None else executor.outputs_ui
    return Execution(executor.success, list(executor.status_messages), recording.messages, dict(ui_outputs))


class OutputDirectories:
    """Context manager pointing the host's output and temp folders at ``root`` (restored on exit)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.saved: tuple[str, str] | None = None

    def __enter__(self) -> Path:
        self.saved = (folder_paths.get_output_directory(), folder_paths.get_temp_directory())
        (self.root / "output").mkdir(parents=True, exist_ok=True)
        (self.root / "temp").mkdir(parents=True, exist_ok=True)
        folder_paths.set_output_directory(str(self.root / "output"))
        folder_paths.set_temp_directory(str(self.root / "temp"))
        return self.root

    def __exit__(self, *_: object) -> None:
        assert self.saved is not None
        folder_paths.set_output_directory(self.saved[0])
        folder_paths.set_temp_directory(self.saved[1])
