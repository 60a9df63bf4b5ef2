"""The shipped workflows as ComfyUI's workflow templates: each with its thumbnail, as the host's own server lists
and serves them (the frontend shows ``/api/workflow_templates/<pack folder>/<name>.jpg`` beside each template)."""
import io
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import thumbnails  # tools/thumbnails.py, which `make screenshots` runs
import torch
from PIL import Image

import nodes
from devkit import REPO_ROOT
from devkit.comfy_server import PACK_FOLDER, ComfyServer, frontend_unavailable

HOST = Path(nodes.__file__).resolve().parent
SHIPPED = sorted((REPO_ROOT / "workflows").glob("*.json"))


def pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255)


@pytest.mark.parametrize("workflow", SHIPPED, ids=[path.stem for path in SHIPPED])
def test_every_workflow_has_the_thumbnail_of_its_screenshot(workflow):
    jpeg = workflow.with_suffix(".jpg")
    assert jpeg.is_file(), f"no {jpeg.name}: run `make screenshots` (or tools/thumbnails.py)"
    with Image.open(jpeg) as shipped:
        assert shipped.format == "JPEG" and shipped.width == thumbnails.WIDTH
        expected = thumbnails.thumbnail(REPO_ROOT / "docs" / "screenshots" / f"{workflow.stem}.png")
        assert shipped.size == expected.size
        # Up to date with the screenshot (JPEG's loss only): regenerated whenever the screenshots are.
        assert (pixels(shipped) - pixels(expected)).abs().mean() < 0.01


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    reason = frontend_unavailable(HOST)
    if reason:
        pytest.skip(reason)
    if not (HOST / "app" / "custom_node_manager.py").is_file():
        pytest.skip("this host lists no workflow templates of custom node folders (it has no "
                    "app/custom_node_manager.py)")
    with ComfyServer(HOST, tmp_path_factory.mktemp("templates_server")) as running:
        yield running


def test_the_host_lists_the_templates_and_serves_their_thumbnails(server):
    assert sorted(server.get("/workflow_templates")[PACK_FOLDER]) == [path.stem for path in SHIPPED]
    for workflow in SHIPPED:
        url = f"{server.url}/api/workflow_templates/{PACK_FOLDER}/{workflow.stem}.jpg"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.headers["Content-Type"] == "image/jpeg"
            served = response.read()
        assert served == workflow.with_suffix(".jpg").read_bytes()
        assert Image.open(io.BytesIO(served)).width == thumbnails.WIDTH
