"""Host tests: one real ComfyUI per process (``AG_TEST_HOST``, else the first host found), on CPU, tiny models."""
import os
from pathlib import Path

import pytest
import torch

from devkit import comfy_host, hosts

if "OMP_NUM_THREADS" not in os.environ:
    # The tiny models gain nothing from intra-op threads, and on a shared CPU the threads' spin-waits slow every
    # model call many times over (the sampler suite: 12 min with torch's default, 33 s with one thread).
    torch.set_num_threads(1)

_found = hosts.discover()
HOST_PATH = Path(os.environ["AG_TEST_HOST"]) if os.environ.get("AG_TEST_HOST") else _found[0].path
PACK = comfy_host.activate(HOST_PATH)


def pytest_report_header() -> str:
    return f"ComfyUI host: {hosts.describe(HOST_PATH)} at {HOST_PATH}"


@pytest.fixture(scope="session")
def tiny():
    """``tiny("sd1")``: a tiny checkpoint per family, built once per session (tests clone, never mutate it)."""
    from devkit.tiny_models import tiny_checkpoint

    built = {}

    def get(family: str):
        if family not in built:
            built[family] = tiny_checkpoint(family)
        return built[family]

    return get


@pytest.fixture(scope="session")
def tiny_dit():
    """``tiny_dit("flux")``: a tiny DiT checkpoint per family (current host only), built once per session."""
    if not comfy_host.has_dit():
        pytest.skip(comfy_host.NO_DIT_REASON)
    from devkit.tiny_dit import tiny_dit_checkpoint

    built = {}

    def get(family: str):
        if family not in built:
            built[family] = tiny_dit_checkpoint(family)
        return built[family]

    return get
