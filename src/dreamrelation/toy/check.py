"""``dreamrelation toy check``: judge a toy base model (Mochi or Wan toy bundle) by generating from it.

Prompts are sampled colour x shape pairs, balanced over the six base relations, plus untuned held-out
relation prompts; both come from a prompt seed and generation seeds that pretraining never uses. Each video
is scored by the toy tracker:

* ``present``: both prompted subjects found in >= 80% of the frames;
* ``single``: each subject is *one* blob of its colour (at least ``MIN_AREA`` pixels) in >= 80% of the
  frames, the two are not merged (centroids within 2 px in at most 20% of the frames) and both are present;
* ``relation_correct``: the tracker's classifier (all 10 relations) names the prompted relation;
* ``ok`` = present and single.

The report gives each proportion with its Wilson 95% interval and PASS/FAIL against thresholds (a strong base
draws two distinct subjects, follows base relations and is near chance on held-out ones).

``denoise_from`` says where a base fails: the same videos, rendered, noised to each level and finished by
the model (a row for the base prompts, one for the held-out ones). A base that keeps two subjects from sigma
0.7 but not from pure noise draws well and fails at deciding the layout. Level 0 is the VAE round trip with
no model step: if a relation is lost there, the renderer, the VAE or the classifier is to blame, not the
base. ``from_first_frame`` (models that take an image): the same videos generated from their rendered first
frame, which gives the layout as a user's photo would.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich import box
from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

from dreamrelation.backbones.loading import load_pipeline
from dreamrelation.backbones.registry import TOY, get_backbone
from dreamrelation.data.prepare import encode_video, latent_normalisation, null_prompt_for
from dreamrelation.errors import UserError
from dreamrelation.evaluation.report import markdown_table, paired_bootstrap, wilson_interval, write_report
from dreamrelation.inference.generate import Sampling, generate_videos, prepare_sampling
from dreamrelation.toy import world
from dreamrelation.toy.backbone import tokenize_captions
from dreamrelation.toy.render import render_video
from dreamrelation.toy.tracker import (
    TrackResult,
    colour_mask,
    count_blobs,
    evaluate_video,
    frame_background,
    track_subjects,
)
from dreamrelation.utils.media import contact_sheet, save_png

console = Console()

FRAME_SHARE = 0.8  # a subject must be present / one blob in at least this share of the frames
MERGE_PX = 2.0  # centroids this close count as one merged subject ...
MAX_MERGED_SHARE = 0.2  # ... in at most this share of the frames
HELD_OUT_SEED_OFFSET = 500_000  # generation seeds of held-out prompts start this far after the base ones
HELD_OUT_ROW = "held out (untuned)"
ALL_BASE_ROW = "all base"
FIRST_FRAME_ROW = "from the first frame (image-to-video)"


@dataclass
class CheckConfig:
    """What ``dreamrelation toy check`` generates and the thresholds it judges against.

    ``prompt_seed`` and ``seed_offset`` differ from pretraining's (``np.random.default_rng(0)`` for its data,
    small torch seeds for its noise), so the check sees prompts and noise the model was not trained on.
    """

    model: str = "mochi"  # a toy bundle name (mochi, wan, wan22) or a bundle directory
    num_prompts: int = 200  # base-relation prompts, balanced over the six base relations
    num_held_out: int = 48  # held-out relation prompts (untuned), balanced over the four
    num_inference_steps: int = TOY.sampling_defaults[0]
    guidance_scale: float = TOY.sampling_defaults[1]
    sampler: str | None = None  # release or ancestral (inference.samplers); None: the model's default
    prompt_seed: int = 2026_1202
    seed_offset: int = 1_000_000
    out_dir: str = "runs/toy-check"
    min_ok: float = 0.90  # share of base videos with both subjects present, one each
    min_base_accuracy: float = 0.85
    max_held_out_accuracy: float = 0.25  # "near chance" (10 classes)
    sheet_videos: int = 12
    # noise levels from which the model also finishes the *rendered* base videos (see denoise_rendered)
    denoise_from: tuple[float, ...] = ()
    # models that take an image (Wan 2.2): also generate each base video from its rendered first frame
    from_first_frame: bool = False
    threads: int | None = None
    device: str = "cpu"
    progress: bool = True


@dataclass(frozen=True)
class CheckJob:
    """One video to generate: its spec (relation, subjects), generation seed and whether it is held out."""

    spec: world.VideoSpec
    seed: int
    held_out: bool

    @property
    def prompt(self) -> str:
        """The caption the model is prompted with."""
        return world.caption(self.spec)


def check_jobs(cfg: CheckConfig) -> list[CheckJob]:
    """Base prompts cycling through the base relations, then held-out ones cycling through theirs.

    The two groups draw from separate streams of ``prompt_seed``, so either count changes only its group.
    """
    jobs = []
    for held_out, count, relations in (
        (False, cfg.num_prompts, world.BASE_RELATIONS),
        (True, cfg.num_held_out, world.HELD_OUT_RELATIONS),
    ):
        rng = np.random.default_rng([cfg.prompt_seed, int(held_out)])
        first = cfg.seed_offset + (HELD_OUT_SEED_OFFSET if held_out else 0)
        for i in range(count):
            relation = relations[i % len(relations)]
            spec = world.sample_video_spec(rng, relations=[relation], person_prob=0.0)
            jobs.append(CheckJob(spec, first + i, held_out))
    return jobs


def score_subjects(
    video: np.ndarray,
    subjects: tuple[world.SubjectSpec, world.SubjectSpec],
    track: TrackResult | None = None,
) -> dict[str, object]:
    """Presence, one-blob-per-subject and merge scores of one video (see the module docstring).

    Per subject and frame the colour mask (the other subject's colour as competitor) has 0 (missing),
    1 (one subject) or >= 2 (duplicated) blobs of at least ``MIN_AREA`` pixels. ``duplicate_fraction`` /
    ``missing_fraction``: frames where either subject is duplicated / missing; ``merged_fraction``: frames
    where both are found with centroids within ``MERGE_PX``.
    """
    vid = np.asarray(video)
    track = track if track is not None else track_subjects(vid, subjects)
    background = frame_background(vid)
    c1, c2 = track.colours
    blobs = np.stack(
        [
            count_blobs(colour_mask(vid, own, [other] if own != other else [], background))
            for own, other in ((c1, c2), (c2, c1))
        ]
    )
    one = (blobs == 1).mean(axis=1)
    duplicated, missing = (blobs >= 2).any(axis=0), (blobs == 0).any(axis=0)  # per frame, either subject
    both_found = track.found.all(axis=0)
    gap = np.linalg.norm(np.nan_to_num(track.centroids[0] - track.centroids[1], nan=np.inf), axis=-1)
    merged = float((both_found & (gap <= MERGE_PX)).mean())
    present = bool((track.tracked_fraction >= FRAME_SHARE).all())
    single = present and bool((one >= FRAME_SHARE).all()) and merged <= MAX_MERGED_SHARE
    return {
        "present": present,
        "single": single,
        "ok": present and single,
        "tracked_fraction": [float(f) for f in track.tracked_fraction],
        "one_subject_fraction": [float(f) for f in one],
        "duplicate_fraction": float(duplicated.mean()),
        "missing_fraction": float(missing.mean()),
        "duplicate_frames": duplicated.astype(int).tolist(),
        "missing_frames": missing.astype(int).tolist(),
        "merged_fraction": merged,
    }


def score_video(video: np.ndarray, spec: world.VideoSpec) -> dict[str, object]:
    """:func:`score_subjects` plus the tracker's relation verdict for the prompted relation."""
    evaluation = evaluate_video(video, spec, spec.relation)
    result = score_subjects(video, spec.subjects)
    result["predicted_relation"] = evaluation["predicted_relation"]
    result["relation_correct"] = bool(evaluation["relation_correct"])
    return result


def proportion(successes: int, n: int) -> dict[str, float | int]:
    """A proportion with its Wilson 95% interval (NaN when ``n`` is 0)."""
    low, high = wilson_interval(successes, n)
    return {"k": successes, "n": n, "p": successes / n if n else math.nan, "low": low, "high": high}


SCORES = {"present": "both present", "ok": "one subject each", "relation_correct": "relation accuracy"}


def summarize(records: list[dict]) -> list[dict]:
    """One row per base relation (in order), ``all base`` and ``held out (untuned)``: n and each proportion."""
    groups: list[tuple[str, list[dict]]] = [
        (name, [r for r in records if r["relation"] == name and not r["held_out"]])
        for name in world.BASE_RELATIONS
    ]
    groups += [
        (ALL_BASE_ROW, [r for r in records if not r["held_out"]]),
        (HELD_OUT_ROW, [r for r in records if r["held_out"]]),
    ]
    return [_proportions(name, rows) for name, rows in groups]


def judge(rows: list[dict], cfg: CheckConfig) -> list[dict]:
    """PASS/FAIL of the point estimates against ``cfg``'s thresholds (a criterion with no videos fails)."""
    by_group = {row["group"]: row for row in rows}
    base, held = by_group[ALL_BASE_ROW], by_group[HELD_OUT_ROW]
    criteria = [
        ("one subject each (all base)", base["ok"]["p"], ">=", cfg.min_ok),
        ("relation accuracy (all base)", base["relation_correct"]["p"], ">=", cfg.min_base_accuracy),
        (
            "relation accuracy (held out, untuned)",
            held["relation_correct"]["p"],
            "<=",
            cfg.max_held_out_accuracy,
        ),
    ]
    out = []
    for name, value, op, threshold in criteria:
        passed = not math.isnan(value) and (value >= threshold if op == ">=" else value <= threshold)
        out.append({"criterion": name, "value": value, "op": op, "threshold": threshold, "passed": passed})
    return out


def _cell(prop: dict, sep: str = " ") -> str:
    if not prop["n"]:
        return "-"
    return f"{prop['p']:.3f}{sep}[{prop['low']:.3f}, {prop['high']:.3f}]"


def _table_rows(rows: list[dict], sep: str = " ") -> list[dict]:
    return [
        {"group": r["group"], "n": r["n"], **{label: _cell(r[key], sep) for key, label in SCORES.items()}}
        for r in rows
    ]


def print_results(rows: list[dict], criteria: list[dict]) -> None:
    """The summary as a rich table (proportions with Wilson 95% intervals) and one PASS/FAIL line each."""
    table = Table(title="toy check (Wilson 95% intervals)", box=box.SIMPLE_HEAD)
    table.add_column("group", min_width=len("walking_alongside"))
    for column in ("n", *SCORES.values()):
        table.add_column(column, justify="right")
    for i, row in enumerate(_table_rows(rows, sep="\n")):  # interval below: fits 80 columns
        table.add_row(
            *(str(v) for v in row.values()),
            end_section=i in (len(world.BASE_RELATIONS) - 1, len(world.BASE_RELATIONS) + 1),
        )
    console.print(table)
    for c in criteria:
        verdict = "[green]PASS[/green]" if c["passed"] else "[red]FAIL[/red]"
        console.print(f"{verdict} {c['criterion']}: {_value(c)} (needs {c['op']} {c['threshold']:.2f})")


def _value(criterion: dict) -> str:
    """A criterion's value for display; a group without videos has none (and fails)."""
    value = criterion["value"]
    return "no videos" if math.isnan(value) else f"{value:.3f}"


def _sampling(cfg: CheckConfig) -> Sampling:
    """How the check's videos are generated (``cfg.sampler`` resolved by ``run_check``)."""
    return Sampling(cfg.num_inference_steps, cfg.guidance_scale, sampler=cfg.sampler)


def generate_and_score(pipe, jobs: list[CheckJob], cfg: CheckConfig) -> tuple[list[dict], list[np.ndarray]]:
    """Generate and score one video per job; returns the per-video records and the first videos (sheet)."""
    records, kept = [], []
    for index, job in enumerate(tqdm(jobs, desc="toy check", disable=not cfg.progress)):
        video = generate_videos(pipe, [job.prompt], [job.seed], _sampling(cfg))[0]
        record = {
            "index": index,
            "prompt": job.prompt,
            "relation": job.spec.relation,
            "held_out": job.held_out,
            "seed": job.seed,
            "subjects": [asdict(s) for s in job.spec.subjects],
            **score_video(video, job.spec),
        }
        records.append(record)
        if len(kept) < cfg.sheet_videos:
            kept.append(video)
    return records, kept


@torch.no_grad()
def denoise_rendered(pipe, job: CheckJob, sigma: float, cfg: CheckConfig) -> np.ndarray:
    """The rendered video of ``job`` encoded, noised to ``sigma`` (noise seeded by the job's seed) and finished
    by the model: Euler steps on the backbone's flow (``num_inference_steps * sigma`` of them, at least 2; none
    at sigma 0), CFG with the pipeline's unconditional input, then the VAE; uint8 ``(T, H, W, 3)``."""
    backbone, transformer = get_backbone(pipe), pipe.transformer
    device, dtype = transformer.device, transformer.dtype
    latent, _ = encode_video(pipe.vae, render_video(job.spec).frames)
    emb, mask = backbone.encode_prompts(pipe, [job.prompt])
    null = null_prompt_for(pipe)
    if null is None:  # Mochi's pipeline zeroes the unconditional prompt
        null_emb, null_mask = torch.zeros_like(emb), torch.zeros_like(mask)
    else:
        null_emb, null_mask = null[0][None].float(), null[1][None].to(mask.dtype)
    emb, mask = torch.cat([emb, null_emb]).to(device, dtype), torch.cat([mask, null_mask]).to(device)
    eps = torch.randn(latent.shape, generator=torch.Generator().manual_seed(job.seed))
    x = ((1.0 - sigma) * latent + sigma * eps)[None].to(device)
    toward_noise = -1.0 if backbone.flow.velocity_to_data else 1.0  # d x / d sigma = toward_noise * v
    steps = max(2, round(cfg.num_inference_steps * sigma)) if sigma > 0 else 0  # 0: the VAE round trip
    levels = torch.linspace(sigma, 0.0, steps + 1).tolist()
    for a, b in zip(levels[:-1], levels[1:], strict=True):
        timestep = backbone.flow.timestep(torch.full((2,), a)).to(device)
        v = backbone.forward(transformer, torch.cat([x, x]).to(dtype), timestep, emb, mask).float()
        v = v[1:] + cfg.guidance_scale * (v[:1] - v[1:])
        x = x + (b - a) * toward_noise * v
    mean, std, scaling = latent_normalisation(pipe.vae)
    mu = x[0].cpu() * std / scaling + mean
    video = pipe.vae.decode(mu[None].to(device, pipe.vae.dtype)).sample[0].float().cpu()
    return ((video.permute(1, 2, 3, 0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def denoise_and_score(pipe, jobs: list[CheckJob], cfg: CheckConfig) -> list[dict]:
    """Per level of ``cfg.denoise_from``: the jobs' rendered videos finished from it, scored - a row of
    proportions for the base jobs and one for the held-out jobs (where there are any)."""
    subsets = [("", [j for j in jobs if not j.held_out]), ("held out, ", [j for j in jobs if j.held_out])]
    subsets = [(prefix, subset) for prefix, subset in subsets if subset]
    rows = []
    for sigma in cfg.denoise_from:
        label = f"from sigma {sigma:g}" + (" (VAE round trip)" if sigma == 0 else "")
        for prefix, subset in subsets:
            scores = [
                score_video(denoise_rendered(pipe, job, sigma, cfg), job.spec)
                for job in tqdm(subset, desc=prefix + label, disable=not cfg.progress)
            ]
            rows.append(_proportions(prefix + label, scores))
    return rows


def first_frame_and_score(pipe, jobs: list[CheckJob], cfg: CheckConfig) -> list[dict]:
    """With ``cfg.from_first_frame``: each base job generated from its rendered first frame (image-to-video,
    same prompt and seed), scored - one row of proportions; else no row."""
    if not cfg.from_first_frame:
        return []
    scores = []
    for job in tqdm(
        [j for j in jobs if not j.held_out], desc="from the first frame", disable=not cfg.progress
    ):
        still = Image.fromarray(render_video(job.spec).frames[0])
        video = generate_videos(pipe, [job.prompt], [job.seed], _sampling(cfg), image=still)[0]
        scores.append(score_video(video, job.spec))
    return [_proportions(FIRST_FRAME_ROW, scores)]


def _proportions(group: str, scores: list[dict]) -> dict:
    """A row: ``group``, n and each score's proportion over ``scores``."""
    return {
        "group": group,
        "n": len(scores),
        **{key: proportion(sum(bool(r[key]) for r in scores), len(scores)) for key in SCORES},
    }


def by_frame_table(records: list[dict]) -> str:
    """Markdown: per frame, the share of base videos with a duplicated and with a missing subject - where in
    time a base fails (copies at the first and last frames mean it hedges between directions of travel)."""
    base = [r for r in records if not r["held_out"]]
    if not base:
        return ""
    frames = len(base[0]["duplicate_frames"])
    rows = [
        {"frame": label, **{str(t): f"{np.mean([r[key][t] for r in base]):.2f}" for t in range(frames)}}
        for label, key in (("duplicated", "duplicate_frames"), ("missing", "missing_frames"))
    ]
    return f"Share of the {len(base)} base videos, by frame:\n\n" + markdown_table(
        rows, ["frame", *(str(t) for t in range(frames))]
    )


def write_outputs(
    out: Path, cfg: CheckConfig, data: dict, rows: list[dict], records: list[dict], videos: list[np.ndarray]
) -> None:
    """``report.md`` + ``report.json`` (with every per-video record) and ``contact_sheet.png``."""

    labels = [
        f"{r['prompt']} ({'ok' if r['ok'] else 'not ok'}; seen as {r['predicted_relation']})"
        for r in records[: len(videos)]
    ]
    if videos:
        save_png(out / "contact_sheet.png", contact_sheet([[v] for v in videos], row_labels=labels))
    table = markdown_table(_table_rows(rows), ["group", "n", *SCORES.values()])
    verdicts = markdown_table(
        [{**c, "value": _value(c), "passed": "PASS" if c["passed"] else "FAIL"} for c in data["criteria"]],
        ["criterion", "value", "op", "threshold", "passed"],
    )
    failures = [r for r in records if not r["ok"]]
    setup = (
        f"Model `{data['model']}`: {cfg.num_prompts} base-relation prompts (balanced over "
        f"{len(world.BASE_RELATIONS)} relations) and {cfg.num_held_out} held-out prompts (untuned), one video "
        f"each, {cfg.num_inference_steps} steps ({cfg.sampler} sampler), CFG {cfg.guidance_scale}; prompt seed {cfg.prompt_seed}, "
        f"generation seeds from {cfg.seed_offset}. *Both present*: both subjects tracked in >= "
        f"{FRAME_SHARE:.0%} of frames; *one subject each*: besides, each subject is one blob of its colour in "
        f">= {FRAME_SHARE:.0%} of frames and the two are not merged (centroids within {MERGE_PX:g} px in at "
        f"most {MAX_MERGED_SHARE:.0%} of frames); *relation accuracy*: the tracker's classifier over all 10 "
        "relations. Proportions with Wilson 95% intervals."
    )
    reading = (
        f"{len(failures)} of {len(records)} videos not ok; mean share of frames with a duplicated subject "
        f"{np.mean([r['duplicate_fraction'] for r in records]):.3f}, with a missing one "
        f"{np.mean([r['missing_fraction'] for r in records]):.3f}, merged "
        f"{np.mean([r['merged_fraction'] for r in records]):.3f} (per video in report.json). Text encoder: "
        f"a colour word's embedding keeps cosine {data['caption_binding_cosine']:.3f} when the shapes of the "
        "two subjects are swapped (1.0: a bag of words, no colour-shape binding)."
    )
    sections = [
        ("Setup", setup),
        ("Results", table),
        ("Verdict", verdicts),
        ("Failures", reading + "\n\n" + by_frame_table(records)),
    ]
    if data.get("denoised"):
        note = (
            "The videos rendered, noised to sigma and finished by the model (Euler, "
            f"{cfg.num_inference_steps} x sigma steps, CFG {cfg.guidance_scale}; sigma 0: the VAE round trip "
            "alone, no model step), or generated from their rendered first frame (image-to-video, same prompts "
            "and seeds): where the layout is given, does it keep two subjects? Held-out rows are the untuned "
            "model on relations it never saw.\n\n"
        )
        denoised = markdown_table(_table_rows(data["denoised"]), ["group", "n", *SCORES.values()])
        sections.append(("Denoising rendered videos", note + denoised))
    sections += [
        ("Contact sheet", "![contact sheet](contact_sheet.png)" if videos else "no videos"),
    ]
    write_report(out, "Toy base model check", sections, data)


@torch.no_grad()
def caption_binding(pipe, n: int = 32, seed: int = 0) -> float:
    """How much the text encoder binds a colour to its shape: the mean cosine similarity of the first
    colour word's embedding in two captions that differ only in which shape each colour has (``A red star ...
    a blue circle`` vs ``A red circle ... a blue star``). Near 1.0 the encoder passes a bag of words, and a
    transformer whose text tokens carry no positions (Mochi, Wan) cannot tell which colour goes with which
    shape or which subject comes first."""
    rng = np.random.default_rng(seed)
    sims = []
    for _ in range(n):
        spec = world.sample_video_spec(rng, person_prob=0.0)
        s1, s2 = spec.subjects
        if s1.shape == s2.shape:
            continue
        swapped = world.VideoSpec(
            spec.relation, world.SubjectSpec(s2.shape, s1.colour), world.SubjectSpec(s1.shape, s2.colour)
        )
        ids, mask = tokenize_captions(pipe.tokenizer, [world.caption(spec), world.caption(swapped)])
        states = pipe.text_encoder(ids, attention_mask=mask)[0].float()
        sims.append(torch.nn.functional.cosine_similarity(states[0, 1], states[1, 1], dim=0).item())
    return float(np.mean(sims))


def _check_config(cfg: CheckConfig) -> None:
    if cfg.num_prompts < 0 or cfg.num_held_out < 0 or cfg.num_prompts + cfg.num_held_out == 0:
        raise UserError("toy check needs num_prompts >= 0 and num_held_out >= 0, not both 0")
    if cfg.num_inference_steps < 1:
        raise UserError(f"num_inference_steps must be >= 1; got {cfg.num_inference_steps}")
    if any(not 0.0 <= s <= 1.0 for s in cfg.denoise_from):
        raise UserError(f"denoise_from {list(cfg.denoise_from)}: noise levels must be in [0, 1]")
    if cfg.threads is not None and cfg.threads < 1:
        raise UserError(f"threads must be >= 1; got {cfg.threads}")


def run_check(cfg: CheckConfig) -> dict:
    """Generate from the toy model, score, print the table and verdicts, write the report; return its data.

    ``data["passed"]`` is True when every criterion passes.
    """
    _check_config(cfg)
    start = time.time()
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        model = TOY.bundle_path(cfg.model)
        pipe = load_pipeline(model, device=cfg.device)
        if not TOY.is_pipeline(pipe):
            raise UserError(f"{model}: not a toy bundle; `toy check` judges toy-world models only")
        if cfg.from_first_frame and not get_backbone(pipe).takes_image:
            raise UserError(f"{model}: --from-first-frame needs a model that takes an image (a Wan 2.2 toy)")
        sampler = prepare_sampling(pipe, cfg.sampler)
        cfg = replace(cfg, sampler=sampler["sampler"])
        jobs = check_jobs(cfg)
        console.print(
            f"toy check: {model} ({len(jobs)} videos, {cfg.num_inference_steps} {cfg.sampler} steps)"
        )
        records, videos = generate_and_score(pipe, jobs, cfg)
        denoised = denoise_and_score(pipe, jobs, cfg) + first_frame_and_score(pipe, jobs, cfg)
        binding = caption_binding(pipe)
    finally:
        torch.set_num_threads(threads)
    rows = summarize(records)
    criteria = judge(rows, cfg)
    out = Path(cfg.out_dir)
    data = {
        "model": str(Path(model).resolve()),
        "config": asdict(cfg),
        "sampler": sampler,
        "caption_binding_cosine": binding,
        "summary": rows,
        "denoised": denoised,
        "criteria": criteria,
        "passed": all(c["passed"] for c in criteria),
        "seconds": round(time.time() - start, 1),
        "videos": records,
    }
    write_outputs(out, cfg, data, rows, records, videos)
    print_results(rows + denoised, criteria)
    console.print(f"report: {out / 'report.md'} ({data['seconds']:.0f} s)")
    return data


def compare_reports(a: dict, b: dict, n_boot: int = 10000) -> list[dict]:
    """Paired differences A minus B of two check reports on the same prompts and seeds (e.g. two pretraining
    trials): per score, both proportions and the difference with a bootstrap 95% interval over the videos."""
    jobs_a, jobs_b = ([(v["prompt"], v["seed"]) for v in r["videos"]] for r in (a, b))
    if jobs_a != jobs_b:
        raise UserError(
            "the two reports were made on different prompts or seeds; run both with the same "
            "--num-prompts / --num-held-out"
        )
    base = [i for i, v in enumerate(a["videos"]) if not v["held_out"]]
    rows = []
    for key, label in SCORES.items():
        va, vb = ([float(r["videos"][i][key]) for i in base] for r in (a, b))
        diff = paired_bootstrap(va, vb, n_boot=n_boot)
        rows.append(
            {
                "score": label,
                "n": len(base),
                "a": float(np.mean(va)),
                "b": float(np.mean(vb)),
                **diff._asdict(),
            }
        )
    return rows


def read_report(path: Path) -> dict:
    """A check's ``report.json`` (``path``: it, or the check's output folder), with one clear error."""
    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    try:
        data = json.loads(file.read_text())
        data["videos"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(
            f"{file}: not a `toy check` report; give a folder written by `toy check --out`"
        ) from None
    return data
