"""Test-wide import setup.

The repository root is the pack itself (users clone it into ``custom_nodes``). Its root ``__init__`` registers
nodes and imports ComfyUI, so pure-core tests reach ``guidance`` through a bare package object named
``attention_guidance`` instead. Host tests never use that alias: they use the module ComfyUI itself loaded
(``tests/host/conftest.py``), so that every object they handle comes from one copy of the pack.
"""
import sys
import types
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent

if "attention_guidance" not in sys.modules:
    _package = types.ModuleType("attention_guidance")
    _package.__path__ = [str(TESTS_DIR.parent)]
    sys.modules["attention_guidance"] = _package
