"""Tests for atomic writes and evaluation report helpers."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from dreamrelation.evaluation.report import (
    markdown_table,
    mean_ci95,
    student_t_cdf,
    student_t_ppf,
    write_report,
)
from dreamrelation.utils.io import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text


def _leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def test_atomic_write_text_bytes_json(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "sub" / "a.txt", "héllo")
    assert (tmp_path / "sub" / "a.txt").read_text(encoding="utf-8") == "héllo"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    atomic_write_json(
        tmp_path / "c.json", {"x": np.float32(1.5), "y": np.arange(3), "z": math.nan, "p": tmp_path}
    )
    loaded = json.loads((tmp_path / "c.json").read_text())
    assert loaded == {"x": 1.5, "y": [0, 1, 2], "z": None, "p": str(tmp_path)}
    assert _leftovers(tmp_path, {"sub", "b.bin", "c.json"}) == []


def test_atomic_path_failure_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "data.txt"
    target.write_text("old content")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("half-writ")
        raise RuntimeError("boom")
    assert target.read_text() == "old content"
    assert _leftovers(tmp_path, {"data.txt"}) == []  # temp file deleted


def test_atomic_write_json_failure_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert _leftovers(tmp_path, {"r.json"}) == []


def test_atomic_path_success_replaces(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # not visible until the block ends
    assert target.read_text() == "new"
    assert _leftovers(tmp_path, {"x.txt"}) == []


# Two-sided 95% critical values t(0.975, df) from standard statistical tables.
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 29: 2.045, 100: 1.984}


@pytest.mark.parametrize(("df", "expected"), sorted(T_TABLE.items()))
def test_student_t_ppf_matches_table(df: int, expected: float) -> None:
    assert student_t_ppf(0.975, df) == pytest.approx(expected, abs=1e-3)
    assert student_t_cdf(student_t_ppf(0.975, df), df) == pytest.approx(0.975, abs=1e-9)


def test_student_t_cdf_closed_forms() -> None:
    # df=1 is Cauchy: F(t) = 1/2 + atan(t)/pi; df=2: F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    for t in (-3.0, -0.5, 0.0, 0.7, 4.0):
        assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-10)
        assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-10)
    # large df approaches the normal quantile 1.95996
    assert student_t_ppf(0.975, 100000) == pytest.approx(1.95996, abs=1e-3)


def test_mean_ci95_independent() -> None:
    values = [0.2, 0.5, 0.9, 0.4, 0.6]
    mean, low, high = mean_ci95(values)
    m = statistics.mean(values)
    half = T_TABLE[4] * statistics.stdev(values) / math.sqrt(len(values))
    assert mean == pytest.approx(m)
    assert low == pytest.approx(m - half, abs=1e-3)
    assert high == pytest.approx(m + half, abs=1e-3)


def test_mean_ci95_small_n() -> None:
    mean, low, high = mean_ci95([3.0])
    assert mean == 3.0 and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(v) for v in mean_ci95([]))
    mean, low, high = mean_ci95([1.0, 1.0, 1.0])
    assert (mean, low, high) == (1.0, 1.0, 1.0)


def test_markdown_table() -> None:
    rows = [{"name": "a|b", "score": 0.12345, "n": 3}, {"name": "c", "score": math.nan}]
    text = markdown_table(rows, ["name", "score", "n"], {"score": ".2f", "n": "{:d} runs"})
    lines = text.strip().splitlines()
    assert lines[0] == "| name | score | n |"
    assert lines[1] == "|---|---|---|"
    assert lines[2] == "| a\\|b | 0.12 | 3 runs |"
    assert lines[3] == "| c | nan |  |"


def test_write_report(tmp_path: Path) -> None:
    md, js = write_report(
        tmp_path / "out",
        "Eval",
        {"Summary": "| a |\n|---|\n| 1 |"},
        {"score": np.float64(0.5), "ci": [math.nan]},
    )
    text = md.read_text()
    assert text.startswith("# Eval\n") and "## Summary" in text and "| 1 |" in text
    assert json.loads(js.read_text()) == {"score": 0.5, "ci": [None]}
    assert md.name == "report.md" and js.name == "report.json"
