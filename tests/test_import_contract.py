"""The import contract (README "Layout"): layers import only downward, no cycles, our own modules imported at
module level (the apps layer excepted). Checked from the source with ``ast`` by ``tools/code_metrics.py``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Known exceptions, each with its reason; the test fails when one is fixed so that the list only shrinks.
KNOWN: dict[str, str] = {}


def _metrics():
    spec = importlib.util.spec_from_file_location("code_metrics", ROOT / "tools" / "code_metrics.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_layers_import_only_downward() -> None:
    found = set(_metrics().violations(ROOT / "src"))
    assert sorted(found - set(KNOWN)) == [], "new import-contract violations"
    assert sorted(set(KNOWN) - found) == [], "fixed: remove these from KNOWN"


def test_every_module_has_a_layer() -> None:
    metrics = _metrics()
    for name in metrics.modules(ROOT / "src"):
        metrics.layer_of(name)  # raises for a module outside every layer
