"""Evaluation reports: means with 95% intervals (t, bootstrap), paired differences, Markdown tables, and
atomic ``report.md``/``report.json``."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dreamrelation.utils.io import atomic_write_json, atomic_write_text

__all__ = [
    "PairedDifference",
    "bootstrap_ci",
    "bootstrap_means",
    "format_interval",
    "markdown_table",
    "mean_ci95",
    "paired_bootstrap",
    "student_t_cdf",
    "student_t_ppf",
    "wilson_interval",
    "write_report",
]


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


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` of a proportion ``successes / n`` (95% for ``z = 1.96``).

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0/n and n/n (low 0, high 1);
    with ``n = 0`` both bounds are NaN.
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n; got {successes}/{n}")
    if n == 0:
        return math.nan, math.nan
    p, z2 = successes / n, z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


# ----------------------------------------------------------------------------------------------
# Bootstrap: percentile intervals of a mean and of paired differences, resampling clusters
# ----------------------------------------------------------------------------------------------


_BOOT_CHUNK = 1 << 20  # draws per chunk of replicates (bounds memory for many clusters)


class PairedDifference(NamedTuple):
    """``mean(a) - mean(b)`` with its bootstrap 95% percentile interval; ``significant``: 0 is outside it."""

    diff: float
    low: float
    high: float
    significant: bool


def _cells(
    values: np.ndarray, clusters: Sequence[Hashable] | None, strata: Sequence[Hashable] | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per stratum: sums and counts of ``values`` per (outer, inner) cell, padded to (n_outer, n_inner)."""
    n = len(values)
    keys = [(k if isinstance(k, tuple) else (k,)) for k in (clusters or range(n))]
    if len(keys) != n or (strata is not None and len(strata) != n):
        raise ValueError("values, clusters and strata must have the same length")
    if len({len(k) for k in keys}) > 1 or not 1 <= len(keys[0]) <= 2:
        raise ValueError("clusters: one key per value, all of them scalars or all (outer, inner) pairs")
    groups: dict[Hashable, dict[Hashable, dict[Hashable, list[float]]]] = {}
    for value, key, stratum in zip(values, keys, strata or [0] * n, strict=True):
        outer, inner = key if len(key) == 2 else (key[0], 0)
        groups.setdefault(stratum, {}).setdefault(outer, {}).setdefault(inner, []).append(float(value))
    out = []
    for outers in groups.values():
        width = max(len(inners) for inners in outers.values())
        sums, counts = np.zeros((len(outers), width)), np.zeros((len(outers), width))
        for i, inners in enumerate(outers.values()):
            for j, cell in enumerate(inners.values()):
                sums[i, j], counts[i, j] = math.fsum(cell), len(cell)
        out.append((sums, counts))
    return out


def bootstrap_means(
    values: Sequence[float],
    clusters: Sequence[Hashable] | None = None,
    strata: Sequence[Hashable] | None = None,
    n_boot: int = 10000,
    seed: int = 0,
) -> np.ndarray:
    """``n_boot`` bootstrap replicates of the mean of ``values`` (see :func:`paired_bootstrap`)."""
    rng = np.random.default_rng(seed)
    total_sum, total_count = np.zeros(n_boot), np.zeros(n_boot)
    for sums, counts in _cells(np.asarray(values, dtype=np.float64), clusters, strata):
        n_outer, width = sums.shape
        n_inner = (counts > 0).sum(axis=1)  # inner units of each outer unit (packed at the front)
        chunk = max(1, _BOOT_CHUNK // (n_outer * width))
        for start in range(0, n_boot, chunk):
            rows = slice(start, min(start + chunk, n_boot))
            k = rows.stop - rows.start
            outer = rng.integers(0, n_outer, size=(k, n_outer))
            size = n_inner[outer][..., None]
            inner = np.floor(rng.random((k, n_outer, width)) * size).astype(int)
            used = np.arange(width)[None, None, :] < size
            total_sum[rows] += (sums[outer[..., None], inner] * used).sum(axis=(1, 2))
            total_count[rows] += (counts[outer[..., None], inner] * used).sum(axis=(1, 2))
    return total_sum / total_count


def bootstrap_ci(
    values: Sequence[float],
    clusters: Sequence[Hashable] | None = None,
    n_boot: int = 10000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean and 95% percentile-bootstrap interval ``(mean, low, high)``, inside ``[min, max]`` of ``values``.

    Without ``clusters`` every value is resampled on its own; NaN values are dropped; no values: NaNs.
    """
    xs = np.asarray([float(v) for v in values], dtype=np.float64)
    keep = ~np.isnan(xs)
    if not keep.any():
        return math.nan, math.nan, math.nan
    keys = None if clusters is None else [k for k, ok in zip(clusters, keep, strict=True) if ok]
    reps = bootstrap_means(xs[keep], keys, None, n_boot, seed)
    low, high = np.percentile(reps, [2.5, 97.5])
    return float(xs[keep].mean()), float(low), float(high)


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    clusters: Sequence[Hashable] | None = None,
    n_boot: int = 10000,
    seed: int = 0,
    strata: Sequence[Hashable] | None = None,
) -> PairedDifference:
    """Paired difference ``mean(a) - mean(b)`` of per-video scores with a 95% cluster-bootstrap interval.

    ``a[i]`` and ``b[i]`` are the two methods' scores on the same video job (prompt, noise seed, exemplars,
    training seed). ``clusters[i]`` is ``(outer, inner)``, e.g. ``(training_seed, prompt)``, or one key (a
    one-level cluster bootstrap); without clusters each pair is its own cluster. ``strata[i]`` (e.g. the
    relation) is never resampled. Scheme, per replicate and independently in each stratum: draw as many outer
    units as the stratum has, with replacement; within each drawn outer unit draw as many of its inner units
    as it has, with replacement; every video of a drawn (outer, inner) cell enters with its pair difference
    (repeated draws repeat it). The replicate is the mean difference over all drawn videos of all strata; the
    interval is the 2.5 and 97.5 percentiles of ``n_boot`` replicates (``seed`` fixes them). With a single
    cluster per stratum there is nothing to resample: the bounds are NaN and the difference not significant.
    With few clusters (e.g. 2-3 training seeds) the percentile interval is somewhat too narrow.
    """
    diffs = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diffs.ndim != 1 or len(diffs) == 0:
        raise ValueError("a and b must be non-empty sequences of the same length")
    if all((counts > 0).sum() <= 1 for _, counts in _cells(diffs, clusters, strata)):
        return PairedDifference(float(diffs.mean()), math.nan, math.nan, False)  # nothing to resample
    reps = bootstrap_means(diffs, clusters, strata, n_boot, seed)
    low, high = (float(v) for v in np.percentile(reps, [2.5, 97.5]))
    return PairedDifference(float(diffs.mean()), low, high, bool(low > 0.0 or high < 0.0))


def format_interval(value: float, ci: Sequence[float | None] | None, signed: bool = False) -> str:
    """``0.412 [0.35, 0.47]``; ``signed`` for differences: ``+0.125 [-0.04, +0.29]``; no interval: the value."""
    sign = "+" if signed else ""
    if ci is None or any(v is None or math.isnan(v) for v in ci):
        return f"{value:{sign}.3f}"
    return f"{value:{sign}.3f} [{ci[0]:{sign}.2f}, {ci[1]:{sign}.2f}]"
