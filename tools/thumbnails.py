"""Template thumbnails: ``workflows/<name>.jpg`` beside each shipped workflow, from the browser test's screenshot
``docs/screenshots/<name>.png`` (`make screenshots` runs it after taking them).

ComfyUI lists a custom node folder's ``workflows/*.json`` among its workflow templates and shows, beside each, the
image of the same name with the extension ``.jpg`` (the frontend asks for ``<name>.jpg``), fitted into a card 256 px
wide; these are 512 px wide for sharp display on dense screens.
"""
from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS, SCREENSHOTS = REPO_ROOT / "workflows", REPO_ROOT / "docs" / "screenshots"
WIDTH = 512
QUALITY = 85


def thumbnail(screenshot: Path) -> Image.Image:
    """The screenshot scaled to ``WIDTH`` px wide, aspect kept, as RGB."""
    with Image.open(screenshot) as image:
        image = image.convert("RGB")
        height = round(image.height * WIDTH / image.width)
        return image.resize((WIDTH, height), Image.Resampling.LANCZOS)


def main() -> int:
    missing = []
    for workflow in sorted(WORKFLOWS.glob("*.json")):
        screenshot = SCREENSHOTS / f"{workflow.stem}.png"
        if not screenshot.is_file():
            missing.append(screenshot.name)
            continue
        thumbnail(screenshot).save(workflow.with_suffix(".jpg"), quality=QUALITY, optimize=True)
        print(f"{workflow.with_suffix('.jpg').relative_to(REPO_ROOT)}")
    if missing:
        print(f"no screenshot for: {', '.join(missing)}; run `make screenshots`", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
