"""Evaluation reports: mean with 95% t-interval, Markdown tables, and atomic ``report.md``/``report.json``."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dreamrelation.utils.io import atomic_write_json, atomic_write_text

__all__ = ["markdown_table", "mean_ci95", "student_t_cdf", "student_t_ppf", "write_report"]


# ----------------------------------------------------------------------------------------------
# Student t distribution (no scipy): regularized incomplete beta by continued fraction + bisection
# ----------------------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for the regularized incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df must be positive, got {df}")
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t >= 0 else tail


def student_t_ppf(q: float, df: float) -> float:
    """Quantile (inverse CDF) of Student's t distribution, by bisection to ~1e-12."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -student_t_ppf(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < q:
        hi *= 2.0
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def mean_ci95(values: Iterable[float]) -> tuple[float, float, float]:
    """Mean and two-sided 95% Student-t confidence interval ``(mean, low, high)``.

    NaN values are dropped. With fewer than two values the bounds are NaN (and the mean is NaN
    for no values).
    """
    xs = [float(v) for v in values]
    xs = [v for v in xs if not math.isnan(v)]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = math.fsum(xs) / n
    if n < 2:
        return mean, math.nan, math.nan
    var = math.fsum((v - mean) ** 2 for v in xs) / (n - 1)
    half = student_t_ppf(0.975, n - 1) * math.sqrt(var / n)
    return mean, mean - half, mean + half


# ----------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------

Formatter = str | Callable[[Any], str]


def _fmt(value: Any, spec: Formatter | None) -> str:
    """Format one cell: ``spec`` is a format spec (``".3f"``), a ``"{...}"`` template or a callable."""
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if spec is None:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
    elif callable(spec):
        text = spec(value)
    else:
        try:
            text = spec.format(value) if "{" in spec else format(value, spec)
        except (ValueError, TypeError):
            text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    formats: Mapping[str, Formatter] | None = None,
) -> str:
    """A GitHub Markdown table of ``rows`` restricted to ``columns`` (missing keys are blank).

    ``formats`` maps a column to a format spec (``".3f"``), a template (``"{:.1%}"``) or a callable;
    floats without a format use ``.4g``.
    """
    formats = formats or {}
    header = "| " + " | ".join(str(c).replace("|", "\\|") for c in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(row.get(c), formats.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join([header, sep, *body]) + "\n"


def write_report(
    out_dir: str | os.PathLike[str],
    title: str,
    sections: Mapping[str, str] | Sequence[tuple[str, str]],
    data: Any,
) -> tuple[Path, Path]:
    """Write ``report.md`` (title + ``## heading`` sections of Markdown) and ``report.json`` (``data``).

    Both files are written atomically; returns ``(md_path, json_path)``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = list(sections.items()) if isinstance(sections, Mapping) else list(sections)
    parts = [f"# {title}\n"]
    for heading, body in items:
        parts.append(f"## {heading}\n\n{body.rstrip()}\n")
    md_path = atomic_write_text(out / "report.md", "\n".join(parts))
    json_path = atomic_write_json(out / "report.json", data)
    return md_path, json_path
