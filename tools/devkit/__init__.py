"""Test and demo support: host discovery, tiny random-weight models, golden fixtures."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
REFERENCE_DIR = REPO_ROOT / "tests" / "reference"
