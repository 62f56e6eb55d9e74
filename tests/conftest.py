"""Refuse to test a stale compiled build: after a compiled module's source changed, the old `.so` would run
instead (setup.py; `./scripts/test` rebuilds, `./scripts/build-native` too)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _compiled_modules() -> list[str]:
    """setup.py's HOT_PATH, as module names."""
    for node in ast.parse((ROOT / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "HOT_PATH":
            return [path.removesuffix(".py").replace("/", ".") for path in ast.literal_eval(node.value)]
    raise AssertionError("setup.py has no HOT_PATH")


def pytest_configure(config: pytest.Config) -> None:
    for name in _compiled_modules():
        built = Path(importlib.import_module(name).__file__ or "")
        if built.suffix != ".so":
            continue
        source = ROOT / (name.replace(".", "/") + ".py")
        if source.stat().st_mtime > built.stat().st_mtime:
            pytest.exit(f"{source.relative_to(ROOT)} changed after it was compiled: run ./scripts/build-native "
                        "(or FRONTGATE_NATIVE=0 ./scripts/build-native for pure Python)", returncode=4)
