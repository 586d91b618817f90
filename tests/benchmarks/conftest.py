"""The benchmark scripts, imported from ``benchmarks/`` by path (they are scripts, not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """``benchmarks/gpu_scale.py``."""
    return _load("gpu_scale")


@pytest.fixture(scope="module")
def mm() -> ModuleType:
    """``benchmarks/memory_model.py``."""
    return _load("memory_model")
