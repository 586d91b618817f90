"""``dreamrelation benchmark toy``: the paper's Tables 1-3 reproduced on the toy world, with statistics.

Every method (untuned, direct LoRA, DreamRelation, the ablations, the placements) is trained on the same
exemplars, with the same training seeds, and generates the same (prompt, noise seed) jobs for each held-out
relation, so methods are compared *paired*. The work is split into units (relation, method, training seed);
each writes its per-video scores atomically to ``units/RELATION/METHOD_seedS.json`` and is skipped when that
file exists with the same settings, so a killed run continues where it stopped. The report gives each
method's relation accuracy with a Wilson interval and the paired difference DreamRelation minus the method
with a cluster-bootstrap interval (training seeds, then prompts), next to the paper's numbers
(``shared/METHOD.md``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from rich.console import Console

from dreamrelation.backbones.loading import load_pipeline
from dreamrelation.backbones.registry import TOY
from dreamrelation.errors import UserError
from dreamrelation.evaluation.report import (
    PairedDifference,
    format_interval,
    markdown_table,
    paired_bootstrap,
    write_report,
)
from dreamrelation.evaluation.toy_study import (
    UNTUNED,
    Exemplars,
    Job,
    ToyExperimentConfig,
    make_jobs,
    render_exemplars,
    score_jobs,
    summarise,
    toy_recipe,
    tracked_panel,
    train_and_generate,
)
from dreamrelation.inference.generate import image_pipeline
from dreamrelation.toy import world
from dreamrelation.utils.io import atomic_path, atomic_write_json
from dreamrelation.utils.media import contact_sheet, save_png
from dreamrelation.utils.plots import scatter_image

console = Console()

# Relation accuracy reported by the paper (Tables 1-3); QK/V is DreamRelation itself.
PAPER_RELATION_ACCURACY = {
    UNTUNED: 0.262,
    "direct_lora": 0.326,
    "dreamrelation": 0.445,
    "wo_hmt": 0.357,
    "wo_rcl": 0.342,
    "wo_relation": 0.363,
    "wo_subject": 0.377,
    "wo_output": 0.402,
    "v_qk": 0.344,
    "q_kv": 0.392,
    "kv_q": 0.394,
}
# Why the toy results differ from the paper (issue 16): roles at inference, mask loss weight, output schedule
STUDY_METHODS = [
    "dreamrelation",
    "roles_relation",
    "roles_all",
    "lambda_m_5",
    "lambda_m_0",
    "wo_hmt",
    "output_relation_steps",
    "direct_lora",
]
STUDY_TITLE = "Study: inference roles and training variants"
TABLES = {
    "Table 1: comparison": [UNTUNED, "direct_lora", "dreamrelation"],
    "Table 2: ablations": ["dreamrelation", "wo_hmt", "wo_rcl", "wo_relation", "wo_subject", "wo_output"],
    "Table 3: placement (relation / subject)": ["v_qk", "q_kv", "kv_q", "dreamrelation"],
    STUDY_TITLE: STUDY_METHODS,
}
LABELS = {
    "direct_lora": "direct LoRA",
    "wo_hmt": "w/o HMT",
    "wo_rcl": "w/o RCL",
    "wo_relation": "w/o relation adapters",
    "wo_subject": "w/o subject adapters",
    "wo_output": "w/o output adapters",
    "v_qk": "V / QK",
    "q_kv": "Q / KV",
    "kv_q": "KV / Q",
    "dreamrelation": "DreamRelation (QK / V)",
    "roles_relation": "inference: relation only",
    "roles_all": "inference: all four roles",
    "lambda_m_5": "lambda_m 5",
    "lambda_m_0": "lambda_m 0 (HMT choices, no mask loss)",
    "output_relation_steps": "output adapter on relation steps only",
}
TRADE_OFF_CHARTS = (STUDY_TITLE,)
# Methods that differ from another only in the roles used at inference: they generate with that method's
# adapters (same relation and training seed) when it has trained them, so the comparison isolates the roles.
INFERENCE_VARIANTS = {"roles_relation": "dreamrelation", "roles_all": "dreamrelation"}
TABLE1_METHODS = ("direct_lora", "dreamrelation")  # trained with every seed in ``train_seeds``
REFERENCE = "dreamrelation"  # the method every other one is compared with
SHEET_PROMPTS = 4  # contact-sheet columns per relation


@dataclass
class CostModel:
    """Seconds per piece of work on this 2-core machine; measured rates of finished units replace them.

    Measured on the shipped toy bundle: ~0.07 s per training step at batch 4, ~1 s per 32-step video.
    """

    train_s_per_step: float = 0.07
    generate_s_per_step: float = 1.0 / 32  # per video and sampling step
    score_s_per_video: float = 0.15
    prepare_s_per_relation: float = 15.0  # render + encode the exemplars


@dataclass
class ToyBenchmarkConfig(ToyExperimentConfig):
    """What the benchmark runs (shared settings in :class:`ToyExperimentConfig`); ``fast_preset`` is for CI.

    ``seeds`` are the sampling (noise) seeds of every prompt; ``train_seeds`` the training seeds of the
    Table 1 methods on every relation; ``ablation_seeds`` those of the ablations and placements, which run on
    ``ablation_relations`` only. The untuned model runs once per relation.
    """

    relations: list[str] = field(default_factory=lambda: list(world.HELD_OUT_RELATIONS))
    methods: list[str] = field(default_factory=lambda: list(PAPER_RELATION_ACCURACY))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    train_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    ablation_seeds: list[int] = field(default_factory=lambda: [0, 1])
    ablation_relations: list[str] = field(default_factory=lambda: ["high_fiving", "jumping_over"])
    n_boot: int = 10000
    threads: int = 0  # torch CPU threads (0: torch's default); 1 is faster when other jobs share the cores
    cost: CostModel = field(default_factory=CostModel)
    out_dir: str = "runs/benchmark-toy"


def fast_preset(cfg: ToyBenchmarkConfig) -> ToyBenchmarkConfig:
    """The CI preset: one relation, the Table 1 methods plus one ablation, two training seeds, few steps."""
    cfg.relations = cfg.relations[:1]
    cfg.ablation_relations = cfg.relations[:1]
    cfg.methods = [UNTUNED, "direct_lora", "dreamrelation", "wo_hmt"]
    cfg.num_exemplars, cfg.subjects, cfg.seeds = 4, cfg.subjects[:2], cfg.seeds[:1]
    cfg.train_seeds, cfg.ablation_seeds = [0, 1], [0]
    cfg.num_inference_steps, cfg.train_steps, cfg.warmup_steps = 8, 20, 5
    cfg.n_boot = 2000
    return cfg


def image_to_video_preset(cfg: ToyBenchmarkConfig) -> ToyBenchmarkConfig:
    """Table 1 from a photo: the toy Wan 2.2 bundle, every prompt starting from a still of its new subjects
    (``image_to_video``), untuned vs direct LoRA vs DreamRelation on the four held-out relations."""
    cfg.bundle, cfg.image_to_video = "wan22", True
    cfg.methods = [UNTUNED, *TABLE1_METHODS]
    cfg.out_dir = "runs/benchmark-toy-i2v"
    return cfg


def image_to_video_study_preset(cfg: ToyBenchmarkConfig) -> ToyBenchmarkConfig:
    """The image-to-video benchmark plus :data:`STUDY_METHODS` on the ablation relations: why DreamRelation
    learns the relation less than direct LoRA there (same output folder: finished units are reused)."""
    cfg = image_to_video_preset(cfg)
    cfg.methods = list(dict.fromkeys([UNTUNED, *TABLE1_METHODS, *STUDY_METHODS]))
    return cfg


PRESETS = {
    "full": lambda cfg: cfg,
    "fast": fast_preset,
    "i2v": image_to_video_preset,
    "i2v-study": image_to_video_study_preset,
}


# --------------------------------------------------------------------------------------------------
# Units of work
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One trained method (or the untuned model: ``train_seed`` None) on one relation."""

    relation: str
    method: str
    train_seed: int | None

    @property
    def name(self) -> str:
        """``METHOD_seedS`` (``untuned`` for the untuned model)."""
        return self.method if self.train_seed is None else f"{self.method}_seed{self.train_seed}"


def method_seeds(cfg: ToyBenchmarkConfig, method: str, relation: str) -> list[int | None]:
    """Training seeds ``method`` runs with on ``relation`` (``[None]``: untuned; ``[]``: not run there)."""
    if method == UNTUNED:
        return [None]
    if method in TABLE1_METHODS:
        return list(cfg.train_seeds)
    return list(cfg.ablation_seeds) if relation in cfg.ablation_relations else []


def plan_units(cfg: ToyBenchmarkConfig) -> list[Unit]:
    """Every unit of the benchmark, relation by relation."""
    return [
        Unit(relation, method, seed)
        for relation in cfg.relations
        for method in cfg.methods
        for seed in method_seeds(cfg, method, relation)
    ]


def unit_path(cfg: ToyBenchmarkConfig, unit: Unit) -> Path:
    """Where ``unit``'s scores are written."""
    return Path(cfg.out_dir) / "units" / unit.relation / f"{unit.name}.json"


@functools.cache
def bundle_digest(path: Path) -> str:
    """SHA-256 over a model directory's files (names and contents): a replaced bundle gets a new digest."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def fingerprint(cfg: ToyBenchmarkConfig) -> dict:
    """The settings a unit's scores depend on (the bundle by content); other settings run it again."""
    keys = ("bundle", "num_exemplars", "exemplar_seed", "subjects", "seeds", "num_inference_steps")
    keys += ("guidance_scale", "train_steps", "batch_size", "lr", "warmup_steps", "rank")
    keys += ("relation_word", "image_to_video", "i2v_probability")
    # the uniform default stays out, so units finished before sigma_shift existed stay valid
    shifted = {"sigma_shift": cfg.sigma_shift} if cfg.sigma_shift != 1.0 else {}
    digest = bundle_digest(TOY.bundle_path(cfg.bundle))
    return {**{k: getattr(cfg, k) for k in keys}, **shifted, "bundle_digest": digest}


def load_unit(cfg: ToyBenchmarkConfig, unit: Unit) -> dict | None:
    """A finished unit's stored results, or ``None`` when absent, unreadable or from other settings."""
    path = unit_path(cfg, unit)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("fingerprint") == json.loads(json.dumps(fingerprint(cfg))) else None


def _trained_adapters(cfg: ToyBenchmarkConfig, unit: Unit) -> Path | None:
    """For an inference variant: the adapters its source method trained on the same relation and seed under
    the current settings (its unit finished with this fingerprint), else None (the variant trains them)."""
    source = INFERENCE_VARIANTS.get(unit.method)
    if source is None:
        return None
    trained = Unit(unit.relation, source, unit.train_seed)
    adapters = Path(cfg.out_dir) / "train" / unit.relation / trained.name / "adapters"
    return adapters if adapters.is_dir() and load_unit(cfg, trained) is not None else None


def run_unit(
    pipe,
    exemplars: Exemplars,
    unit: Unit,
    jobs: Sequence[Job],
    cfg: ToyBenchmarkConfig,
    progress: bool = False,
) -> dict:
    """Train (unless untuned), generate and score ``jobs``; write the unit's JSON (and sheet videos)."""
    out = Path(cfg.out_dir)
    train_cfg = toy_recipe(unit.method, cfg, unit.train_seed or 0)
    reused = _trained_adapters(cfg, unit)
    videos, timings = train_and_generate(
        pipe,
        exemplars,
        train_cfg,
        jobs,
        out / "train" / unit.relation / unit.name,
        cfg.num_inference_steps,
        cfg.guidance_scale,
        progress=progress,
        adapters_from=reused,
    )
    start = time.time()
    scores = score_jobs(videos, jobs, unit.relation, exemplars.subjects)
    timings["score_s"] = time.time() - start
    simple = [{k: v for k, v in s.items() if isinstance(v, (bool, int, float, str))} for s in scores]
    path = unit_path(cfg, unit)
    sheet = [i for i, job in enumerate(jobs) if job.seed == cfg.seeds[0]][:SHEET_PROMPTS]
    with atomic_path(path.with_suffix(".npz")) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, videos=np.stack([videos[i] for i in sheet]))
    data = {
        "unit": asdict(unit),
        "fingerprint": fingerprint(cfg),
        "jobs": [{"prompt": j.prompt, "seed": j.seed} for j in jobs],
        "scores": simple,
        "timings": timings,
        "adapters_from": None if reused is None else str(reused),
    }
    atomic_write_json(path, data)  # written last: its presence marks the unit as done
    return data


# --------------------------------------------------------------------------------------------------
# Cost model
# --------------------------------------------------------------------------------------------------


def measured_cost(cfg: ToyBenchmarkConfig, finished: Sequence[dict]) -> CostModel:
    """``cfg.cost`` with each rate replaced by the mean measured on ``finished`` units where available."""
    cost = CostModel(**asdict(cfg.cost))
    train = [d["timings"]["train_s_per_step"] for d in finished if "train_s_per_step" in d["timings"]]
    gen = [d["timings"]["generate_s"] / (len(d["jobs"]) * cfg.num_inference_steps) for d in finished]
    score = [d["timings"].get("score_s", np.nan) / len(d["jobs"]) for d in finished]
    if train:
        cost.train_s_per_step = float(np.mean(train))
    if gen:
        cost.generate_s_per_step = float(np.mean(gen))
    if score and not np.isnan(score).all():
        cost.score_s_per_video = float(np.nanmean(score))
    return cost


def estimate_seconds(cfg: ToyBenchmarkConfig, units: Sequence[Unit], cost: CostModel) -> float:
    """Estimated seconds to run ``units``: exemplars per relation + training + generation + scoring."""
    n_jobs = len(cfg.subjects) * len(cfg.seeds)
    per_video = cfg.num_inference_steps * cost.generate_s_per_step + cost.score_s_per_video
    seconds = len({u.relation for u in units}) * cost.prepare_s_per_relation + len(units) * n_jobs * per_video
    trained = sum(u.train_seed is not None and u.method not in INFERENCE_VARIANTS for u in units)
    return seconds + trained * cfg.train_steps * cost.train_s_per_step


def describe_plan(cfg: ToyBenchmarkConfig) -> tuple[list[Unit], str]:
    """The units still to run and a one-paragraph description with the estimated time."""
    units = plan_units(cfg)
    finished = [d for d in (load_unit(cfg, u) for u in units) if d is not None]
    todo = [u for u in units if load_unit(cfg, u) is None]
    cost = measured_cost(cfg, finished)
    seconds = estimate_seconds(cfg, todo, cost)
    n_jobs = len(cfg.subjects) * len(cfg.seeds)
    text = (
        f"{len(units)} units ({len(units) - len(todo)} already done) x {n_jobs} videos "
        f"({len(cfg.subjects)} prompts x {len(cfg.seeds)} seeds); {cfg.train_steps} training steps per trained "
        f"unit at {cost.train_s_per_step:.3f} s/step, {cost.generate_s_per_step * cfg.num_inference_steps:.2f}"
        f" s per video: estimated {seconds / 3600:.2f} h ({seconds / 60:.0f} min) to go"
    )
    return todo, text


# --------------------------------------------------------------------------------------------------
# Running and reporting
# --------------------------------------------------------------------------------------------------


def bar_chart(rows: list[dict], key: str, title: str) -> Image.Image:
    """A horizontal bar chart of ``row[key]`` with 95% interval whiskers and the paper's value as a tick."""
    font = ImageFont.load_default(size=14)
    label_w, bar_w, row_h, pad = 220, 420, 26, 12
    image = Image.new("RGB", (label_w + bar_w + 2 * pad + 60, pad * 3 + 20 + row_h * len(rows)), "white")
    draw = ImageDraw.Draw(image)
    draw.text((pad, pad), title, fill="black", font=font)
    x0 = label_w + pad
    for i, row in enumerate(rows):
        y = pad * 2 + 20 + i * row_h
        value = float(row[key])
        low, high = (np.nan if v is None else v for v in row.get(f"{key}_ci95", [np.nan, np.nan]))
        draw.text((pad, y + 4), LABELS.get(row["method"], row["method"]), fill="black", font=font)
        draw.rectangle([x0, y + 4, x0 + bar_w * max(value, 0.0), y + row_h - 4], fill=(70, 110, 200))
        if np.isfinite(low) and np.isfinite(high):
            lo, hi = (x0 + bar_w * min(max(v, 0.0), 1.0) for v in (low, high))
            mid = y + row_h // 2
            draw.line([lo, mid, hi, mid], fill="black", width=2)
            draw.line([lo, mid - 5, lo, mid + 5], fill="black", width=2)
            draw.line([hi, mid - 5, hi, mid + 5], fill="black", width=2)
        paper = PAPER_RELATION_ACCURACY.get(row["method"])
        if paper is not None and key == "relation_correct":
            xp = x0 + bar_w * paper
            draw.line([xp, y + 1, xp, y + row_h - 1], fill=(220, 60, 40), width=3)
        draw.text((x0 + bar_w + 8, y + 4), f"{value:.2f}", fill="black", font=font)
    draw.text((x0, image.height - pad - 2), "red tick: paper", fill=(220, 60, 40), font=font)
    return image


def tradeoff_chart(rows: Sequence[dict], title: str) -> Image.Image:
    """Relation accuracy against the exemplars' leakage per method, with 95% intervals: what learning the
    relation costs in appearance copied from the exemplars."""
    points = [
        (
            LABELS.get(r["method"], r["method"]),
            float(r["leakage"]),
            float(r["relation_correct"]),
            [np.nan if v is None else v for v in r["leakage_ci95"]],
            [np.nan if v is None else v for v in r["relation_correct_ci95"]],
        )
        for r in rows
    ]
    return scatter_image(points, "exemplar leakage", "relation accuracy", title)


def _scope(cfg: ToyBenchmarkConfig, title: str) -> tuple[list[str], list[int]]:
    """Relations and training seeds a table pools: Table 1 all of them, the others the ablation subset."""
    if title.startswith("Table 1"):
        return list(cfg.relations), list(cfg.train_seeds)
    relations = [r for r in cfg.relations if r in cfg.ablation_relations]
    return relations, [s for s in cfg.ablation_seeds if s in cfg.train_seeds]


def pooled_scores(
    results: dict[Unit, dict], method: str, relations: Sequence[str], seeds: Sequence[int]
) -> list[dict]:
    """Per-video scores of ``method`` over ``relations`` x training ``seeds`` (untuned: once per relation)."""
    seeds_of = [None] if method == UNTUNED else list(seeds)
    units = [Unit(r, method, s) for r in relations for s in seeds_of]
    return [score for u in units if u in results for score in results[u]["scores"]]


def paired_difference(
    results: dict[Unit, dict],
    method: str,
    scope: tuple[Sequence[str], Sequence[int]],
    key: str = "relation_correct",
    n_boot: int = 10000,
) -> PairedDifference | None:
    """DreamRelation minus ``method`` on the same jobs of every (relation, training seed) both have.

    Clusters are (training seed, prompt), relations are strata (see :func:`paired_bootstrap`); the untuned
    model's videos pair with DreamRelation's of every training seed.
    """
    pairs = []
    for relation in scope[0]:
        for seed in scope[1]:
            ref = results.get(Unit(relation, REFERENCE, seed))
            other = results.get(Unit(relation, method, None if method == UNTUNED else seed))
            if ref is None or other is None:
                continue
            if ref["jobs"] != other["jobs"]:
                raise ValueError(f"{relation}: {method} and {REFERENCE} generated different jobs")
            pairs.append((ref, other, seed, relation))
    return bootstrap_pairs(pairs, key, n_boot) if pairs else None


def bootstrap_pairs(
    pairs: Sequence[tuple[dict, dict, int | None, str]], key: str, n_boot: int
) -> PairedDifference:
    """Paired bootstrap of score ``key``, A minus B, over ``(A's unit, B's unit, training seed, relation)``
    pairs generated on the same jobs: clusters (training seed, A's prompt), relations strata."""
    a, b, clusters, strata = [], [], [], []
    for data_a, data_b, seed, relation in pairs:
        for job, x, y in zip(data_a["jobs"], data_a["scores"], data_b["scores"], strict=True):
            a.append(float(x[key]))
            b.append(float(y[key]))
            clusters.append((seed, job["prompt"]))
            strata.append(relation)
    return paired_bootstrap(a, b, clusters, n_boot=n_boot, strata=strata)


def method_row(
    results: dict[Unit, dict], method: str, scope: tuple[Sequence[str], Sequence[int]], n_boot: int
) -> dict | None:
    """One table row: accuracy (Wilson), appearance, leakage, paired differences to DreamRelation."""
    scores = pooled_scores(results, method, *scope)
    if not scores:
        return None
    row = {"method": method, **summarise(scores, n_boot=min(n_boot, 2000))}
    row["paper_relation_accuracy"] = PAPER_RELATION_ACCURACY.get(method)
    paper_ref = PAPER_RELATION_ACCURACY[REFERENCE]
    if row["paper_relation_accuracy"] is not None and method != REFERENCE:
        row["paper_difference"] = paper_ref - row["paper_relation_accuracy"]
    for key, name in (("relation_correct", "difference"), ("leakage", "leakage_difference")):
        diff = None if method == REFERENCE else paired_difference(results, method, scope, key, n_boot)
        if diff is not None:
            row[name], row[f"{name}_ci95"], row[f"{name}_significant"] = (
                diff.diff,
                [diff.low, diff.high],
                diff.significant,
            )
    return row


def _display(row: dict) -> dict:
    """Markdown cells of a table row."""
    sig = row.get("difference_significant")
    return {
        "method": LABELS.get(row["method"], row["method"]),
        "videos": row["n"],
        "toy relation acc. [95% CI]": format_interval(row["relation_correct"], row["relation_correct_ci95"]),
        "paper": row["paper_relation_accuracy"],
        "DreamRelation - method [95% CI]": format_interval(row["difference"], row["difference_ci95"], True)
        if "difference" in row
        else "-",
        "significant": "-" if sig is None else ("yes" if sig else "no"),
        "paper difference": row.get("paper_difference"),
        "appearance": row["appearance"],
        "leakage": row["leakage"],
        "leakage difference [95% CI]": format_interval(
            row["leakage_difference"], row["leakage_difference_ci95"], True
        )
        + (" *" if row.get("leakage_difference_significant") else "")
        if "leakage_difference" in row
        else "-",
    }


DISPLAY_FORMATS = {"paper": ".3f", "paper difference": "+.3f", "appearance": ".3f", "leakage": ".3f"}


def tables_shown(cfg: ToyBenchmarkConfig) -> dict[str, list[str]]:
    """The :data:`TABLES` that have a method of their own among ``cfg.methods`` (one no earlier table shows)."""
    shown, seen = {}, {REFERENCE}
    for title, methods in TABLES.items():
        if any(m in cfg.methods and m not in seen for m in methods):
            shown[title] = methods
        seen.update(methods)
    return shown


def build_sections(cfg: ToyBenchmarkConfig, results: dict[Unit, dict]) -> tuple[list, dict, list]:
    """Report sections, the table rows (by title) and the per-relation rows."""
    n_jobs = len(cfg.subjects) * len(cfg.seeds)
    others = [title.split(":")[0] for title in tables_shown(cfg) if not title.startswith("Table 1")]
    ablation_seeds = (
        f"; {', '.join(others)}: seeds {cfg.ablation_seeds} on {', '.join(cfg.ablation_relations)}"
        if others
        else ""
    )
    still = (
        f" Every prompt starts from a still of its two subjects apart (image-to-video); the methods train with "
        f"{cfg.i2v_probability:.0%} image-conditioned steps."
        if cfg.image_to_video
        else ""
    )
    sections = [
        (
            "Setup",
            f"Held-out relations {', '.join(cfg.relations)}; {cfg.num_exemplars} person exemplars each; "
            f"{len(cfg.subjects)} prompts with new subjects x {len(cfg.seeds)} noise seeds = {n_jobs} videos per "
            f"method, relation and training seed; {cfg.train_steps} training steps. Table 1: training seeds "
            f"{cfg.train_seeds} on every relation{ablation_seeds}.{still} Relation accuracy is the toy "
            "tracker's classifier (10 relations); the paper's is a VLM judge on Mochi videos, so compare "
            "orderings and differences, not values.",
        ),
        (
            "Statistics",
            "Accuracy intervals: Wilson 95%, videos counted as independent. Differences are paired (same "
            "exemplars, prompts, noise seeds and training seeds): DreamRelation minus the method, with a 95% "
            f"percentile interval from {cfg.n_boot} bootstrap replicates that resample training seeds, then "
            "prompts within each seed, inside each relation. *significant*: 0 is outside the interval; *no* "
            "means the data cannot tell the two methods apart. `*` marks a significant leakage difference.",
        ),
    ]
    tables: dict[str, list[dict]] = {}
    for title, methods in tables_shown(cfg).items():
        scope = _scope(cfg, title)
        rows = [r for m in methods if m in cfg.methods and (r := method_row(results, m, scope, cfg.n_boot))]
        if len(rows) > 1:  # a table needs something to compare
            tables[title] = rows
            display = [_display(r) for r in rows]
            sections.append((title, markdown_table(display, list(display[0]), DISPLAY_FORMATS)))
    per_relation = []
    for relation in cfg.relations:
        for method in cfg.methods:
            seeds = [s for s in method_seeds(cfg, method, relation) if s is not None] or cfg.train_seeds
            row = method_row(results, method, ([relation], seeds), cfg.n_boot)
            if row is not None:
                per_relation.append({"relation": relation, **row})
    display = [{"relation": r["relation"], **_display(r)} for r in per_relation]
    if display:
        sections.append(("Per relation", markdown_table(display, list(display[0]), DISPLAY_FORMATS)))
    return sections, tables, per_relation


def _run_missing(
    cfg: ToyBenchmarkConfig, todo: Sequence[Unit], results: dict[Unit, dict], progress: bool = True
) -> None:
    """Run the ``todo`` units relation by relation (exemplars rendered once per relation)."""
    if not todo:
        return
    pipe = load_pipeline(TOY.bundle_path(cfg.bundle))
    if cfg.image_to_video:
        image_pipeline(pipe)  # a UserError for a bundle that cannot take an image, before any training
    left = list(todo)
    for relation in dict.fromkeys(u.relation for u in todo):
        console.rule(f"[bold]{relation}")
        exemplars = render_exemplars(
            pipe, relation, cfg.num_exemplars, cfg.exemplar_seed, word=cfg.relation_word
        )
        jobs = make_jobs(relation, cfg.subjects, cfg.seeds, cfg.relation_word, cfg.image_to_video)
        for unit in [u for u in todo if u.relation == relation]:
            start = time.time()
            results[unit] = run_unit(pipe, exemplars, unit, jobs, cfg, progress)
            left.remove(unit)
            cost = measured_cost(cfg, [results[u] for u in results])
            remaining = estimate_seconds(cfg, left, cost) if left else 0.0
            console.print(
                f"{relation} {unit.name}: {time.time() - start:.0f} s; {len(left)} units left, "
                f"~{remaining / 60:.0f} min"
            )


def _contact_sheets(cfg: ToyBenchmarkConfig, units: Sequence[Unit]) -> None:
    """One sheet per relation: each method's first training seed on the first prompts and seed; each cell
    shows frames and the tracked trajectories on a still (image-to-video: the given stills on top)."""
    for relation in cfg.relations:
        jobs = make_jobs(
            relation, cfg.subjects[:SHEET_PROMPTS], cfg.seeds[:1], cfg.relation_word, cfg.image_to_video
        )
        rows, labels = [], []
        for method in cfg.methods:
            seeds = method_seeds(cfg, method, relation)
            npz = unit_path(cfg, Unit(relation, method, seeds[0])).with_suffix(".npz") if seeds else None
            if npz is not None and npz.is_file():
                videos = np.load(npz)["videos"]
                rows.append([tracked_panel(v, job.subjects) for v, job in zip(videos, jobs, strict=False)])
                labels.append(method)
        if rows and cfg.image_to_video:  # the photo each video starts from, above them
            rows.insert(0, [job.image for job in jobs])
            labels.insert(0, "still (first frame given)")
        if rows:
            sheet = contact_sheet(rows, row_labels=labels, col_labels=[j.prompt for j in jobs])
            save_png(Path(cfg.out_dir) / f"contact_sheet_{relation}.png", sheet)


def read_units(out_dir: str | Path) -> dict[Unit, dict]:
    """Every finished unit stored in a benchmark output folder (``units/RELATION/*.json``), one clear error
    when there is none."""
    root = Path(out_dir) / "units"
    units = {}
    for path in sorted(root.glob("*/*.json")):
        try:
            data = json.loads(path.read_text())
            units[Unit(**data["unit"])] = data
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(
                f"{path}: not a benchmark unit ({exc}); remove it or run the benchmark again"
            ) from exc
    if not units:
        raise UserError(
            f"{out_dir}: no finished benchmark units under units/; give a `benchmark toy` output folder"
        )
    return units


def compare_runs(a: dict[Unit, dict], b: dict[Unit, dict], n_boot: int = 10000) -> list[dict]:
    """Paired differences A minus B between two benchmark runs (e.g. another bundle, or the relation under a
    made-up word): per method, over the relations and training seeds both ran, then per relation. Videos pair
    by job position, which needs the same subjects and noise seeds in the same order (the prompts' wording may
    differ); clusters are (training seed, prompt), relations strata, as in :func:`paired_difference`."""
    rows = []
    shared = sorted(set(a) & set(b), key=lambda u: (u.method, u.relation, u.train_seed or 0))
    for unit in shared:
        _check_same_jobs(a[unit], b[unit], unit)
    for method in dict.fromkeys(u.method for u in shared):
        units = [u for u in shared if u.method == method]
        names = sorted({u.relation for u in units})
        for relations in [names] + ([[r] for r in names] if len(names) > 1 else []):
            pairs = [(a[u], b[u], u.train_seed, u.relation) for u in units if u.relation in relations]
            row = {"method": method, "relations": relations, "n": sum(len(p[0]["jobs"]) for p in pairs)}
            for key in ("relation_correct", "leakage"):
                diff = bootstrap_pairs(pairs, key, n_boot)
                for side, k in (("a", 0), ("b", 1)):
                    row[f"{key}_{side}"] = float(
                        np.mean([float(s[key]) for p in pairs for s in p[k]["scores"]])
                    )
                row.update({f"{key}_diff": diff.diff, f"{key}_ci95": [diff.low, diff.high]})
                row[f"{key}_significant"] = diff.significant
            rows.append(row)
    if not rows:
        raise UserError("the two runs share no (relation, method, training seed) unit; nothing to compare")
    return rows


def _check_same_jobs(a: dict, b: dict, unit: Unit) -> None:
    seeds_a, seeds_b = ([j["seed"] for j in d["jobs"]] for d in (a, b))
    if seeds_a != seeds_b:
        raise UserError(
            f"{unit.relation} {unit.name}: the two runs generated different jobs ({len(seeds_a)} vs "
            f"{len(seeds_b)} videos or other noise seeds); compare runs made with the same subjects and seeds"
        )


def comparison_table(rows: Sequence[dict]) -> str:
    """Markdown table of :func:`compare_runs` rows."""
    display = [
        {
            "method": LABELS.get(r["method"], r["method"]),
            "relations": ", ".join(r["relations"]),
            "videos": r["n"],
            "relation acc. A / B": f"{r['relation_correct_a']:.3f} / {r['relation_correct_b']:.3f}",
            "A - B [95% CI]": format_interval(r["relation_correct_diff"], r["relation_correct_ci95"], True),
            "significant": "yes" if r["relation_correct_significant"] else "no",
            "leakage A / B": f"{r['leakage_a']:.3f} / {r['leakage_b']:.3f}",
            "leakage A - B [95% CI]": format_interval(r["leakage_diff"], r["leakage_ci95"], True)
            + (" *" if r["leakage_significant"] else ""),
        }
        for r in rows
    ]
    return markdown_table(display, list(display[0]))


def run_toy_benchmark(cfg: ToyBenchmarkConfig, progress: bool = True) -> dict:
    """Run (or resume) every unit; write ``report.md``/``report.json``, charts and contact sheets."""
    out = Path(cfg.out_dir)
    start = time.time()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    todo, plan = describe_plan(cfg)
    console.print(plan)
    units = plan_units(cfg)
    results = {u: d for u in units if (d := load_unit(cfg, u)) is not None}
    _run_missing(cfg, todo, results, progress)
    _contact_sheets(cfg, units)
    sections, tables, per_relation = build_sections(cfg, results)
    for title, rows in tables.items():
        name = title.split(":")[0].lower().replace(" ", "_")
        save_png(out / f"{name}.png", bar_chart(rows, "relation_correct", f"{title}: relation accuracy"))
        sections.append((f"{title} (chart)", f"![{title}]({name}.png)"))
        if title in TRADE_OFF_CHARTS:
            save_png(out / f"{name}_tradeoff.png", tradeoff_chart(rows, title))
            sections.append((f"{title}: relation accuracy vs leakage", f"![{title}]({name}_tradeoff.png)"))
    data = {
        "config": asdict(cfg),
        "plan": plan,
        "tables": tables,
        "per_relation": per_relation,
        "units": [{**r["unit"], "timings": r["timings"]} for r in results.values()],
        "seconds": time.time() - start,
    }
    mode = " (image-to-video)" if cfg.image_to_video else ""
    write_report(out, f"DreamRelation on the toy world{mode}: the paper's tables", sections, data)
    console.print(f"report: {out / 'report.md'} ({data['seconds']:.0f} s)")
    return data
