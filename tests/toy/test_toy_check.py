"""`dreamrelation toy check`: the subject scorer on rendered ground truth and synthetic duplicates / merges,
the Wilson interval, and a CI-sized check of the shipped toy Mochi bundle."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dreamrelation.backbones.registry import TOY
from dreamrelation.cli import app
from dreamrelation.evaluation.report import wilson_interval
from dreamrelation.toy import check, world
from dreamrelation.toy.check import CheckConfig, check_jobs, run_check, score_subjects, summarize
from dreamrelation.toy.render import render_background, render_video
from dreamrelation.toy.tracker import count_blobs, degrade_video


def _rendered(seed: int, relations=world.RELATION_NAMES, per_relation: int = 3):
    rng = np.random.default_rng(seed)
    for name in relations:
        for _ in range(per_relation):
            spec = world.sample_video_spec(rng, relations=[name], person_prob=0.0)
            yield spec, render_video(spec)


def test_count_blobs_counts_per_frame_above_min_area() -> None:
    mask = np.zeros((3, 16, 16), dtype=bool)
    mask[0, 1:4, 1:4] = True  # 9 px
    mask[0, 10:13, 10:13] = True  # 9 px, separate
    mask[1, 0:2, 0:2] = True  # 4 px: too small
    mask[2, 5:8, 0:16] = True  # one long blob
    assert count_blobs(mask, min_area=8).tolist() == [2, 0, 1]


def test_rendered_ground_truth_is_present_and_single() -> None:
    results = [score_subjects(video.frames, spec.subjects) for spec, video in _rendered(31)]
    assert all(r["present"] and r["single"] and r["ok"] for r in results)
    assert max(r["duplicate_fraction"] + r["missing_fraction"] + r["merged_fraction"] for r in results) == 0.0
    rng = np.random.default_rng(5)  # VAE-like blur, noise and 4x4 pooling keep it so
    degraded = [
        score_subjects(degrade_video(video.frames, rng), spec.subjects)
        for spec, video in _rendered(32, world.BASE_RELATIONS, 2)
    ]
    assert np.mean([r["ok"] for r in degraded]) >= 0.9


def _duplicate(video) -> np.ndarray:
    """Subject 1's pixels pasted a second time, shifted so the copy does not touch the original."""
    frames = video.frames.copy()
    m = video.masks[0]
    for t in range(frames.shape[0]):
        ys, xs = np.nonzero(m[t])
        dx = 20 if xs.mean() < world.WIDTH / 2 else -20
        dy = 20 if ys.mean() < world.HEIGHT / 2 else -20
        frames[t, np.clip(ys + dy, 0, world.HEIGHT - 1), np.clip(xs + dx, 0, world.WIDTH - 1)] = frames[
            t, ys, xs
        ]
    return frames


def _same_colour_merge(video) -> np.ndarray:
    """Subject 2 redrawn in subject 1's colour at its own place (two look-alikes, subject 2 gone)."""
    frames = video.frames.copy()
    frames[video.masks[1]] = video.spec.subject1.rgb
    return frames


def _vanish(video) -> np.ndarray:
    """Subject 2 erased (background where it was): one subject vanished."""
    frames = video.frames.copy()
    frames[video.masks[1]] = render_background(video.spec)[video.masks[1]]
    return frames


def _blend_merge(video) -> np.ndarray:
    """Both subjects fused into one blob of their mixed colour at subject 1's place."""
    frames = _vanish(video)
    blend = (np.asarray(video.spec.subject1.rgb, dtype=np.float32) + video.spec.subject2.rgb) / 2
    frames[video.masks[0]] = blend.round().astype(np.uint8)
    return frames


def _concentric(video) -> np.ndarray:
    """Subject 2 drawn as a 2-px ring around subject 1 (one fused blob, two colours, one centre)."""
    frames = _vanish(video)
    core = video.masks[0]
    grown = core.copy()
    for _ in range(2):
        grown = (
            grown
            | np.roll(grown, 1, -1)
            | np.roll(grown, -1, -1)
            | np.roll(grown, 1, -2)
            | np.roll(grown, -1, -2)
        )
    frames[grown & ~core] = video.spec.subject2.rgb
    return frames


@pytest.mark.parametrize("corrupt", [_duplicate, _same_colour_merge, _vanish, _blend_merge, _concentric])
def test_duplicates_and_merges_fail(corrupt) -> None:
    for spec, video in _rendered(33, world.BASE_RELATIONS, 2):
        result = score_subjects(corrupt(video), spec.subjects)
        assert not result["single"] and not result["ok"], (corrupt.__name__, spec, result)
        assert len(result["duplicate_frames"]) == len(video.frames)  # per frame, and their mean is the share
        assert np.mean(result["duplicate_frames"]) == pytest.approx(result["duplicate_fraction"])
        assert np.mean(result["missing_frames"]) == pytest.approx(result["missing_fraction"])
        if corrupt is _duplicate:
            assert result["present"] and result["duplicate_fraction"] >= 0.8
        elif corrupt is _concentric:
            assert result["present"] and result["merged_fraction"] >= 0.8
        else:
            assert result["missing_fraction"] >= 0.8


def test_wilson_interval_hand_computation_and_edges() -> None:
    np.testing.assert_allclose(wilson_interval(3, 10), (0.1078, 0.6032), atol=5e-5)
    # 12/48: centre (0.25 + 0.0400) / 1.0800 = 0.2685, half 1.96 * 0.06575 / 1.0800 = 0.1193
    np.testing.assert_allclose(wilson_interval(12, 48), (0.1492, 0.3878), atol=5e-5)
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and 0.15 < high < 0.17
    low, high = wilson_interval(20, 20)
    assert high == 1.0 and 0.83 < low < 0.85
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_prompts_are_balanced_and_unseen_by_pretraining() -> None:
    cfg = CheckConfig(num_prompts=24, num_held_out=8)
    jobs = check_jobs(cfg)
    base = [j.spec.relation for j in jobs if not j.held_out]
    held = [j.spec.relation for j in jobs if j.held_out]
    assert {r: base.count(r) for r in world.BASE_RELATIONS} == dict.fromkeys(world.BASE_RELATIONS, 4)
    assert {r: held.count(r) for r in world.HELD_OUT_RELATIONS} == dict.fromkeys(world.HELD_OUT_RELATIONS, 2)
    assert all(not j.spec.subject1.is_person and not j.spec.subject2.is_person for j in jobs)
    assert min(j.seed for j in jobs) >= 1_000_000 and len({j.seed for j in jobs}) == len(jobs)
    # more held-out prompts leave the base ones unchanged
    assert check_jobs(CheckConfig(num_prompts=24, num_held_out=12))[:24] == jobs[:24]
    rows = summarize(
        [{"relation": "approaching", "held_out": False, "present": 1, "ok": 0, "relation_correct": 1}]
    )
    assert rows[0]["n"] == 1 and rows[0]["ok"]["p"] == 0.0 and math.isnan(rows[-1]["relation_correct"]["p"])
    # a check without held-out prompts cannot pass that criterion, and says why rather than printing nan
    criteria = check.judge(rows, CheckConfig(min_ok=0.0, min_base_accuracy=0.0))
    assert [c["passed"] for c in criteria] == [True, True, False]
    assert check._value(criteria[2]) == "no videos" and check._value(criteria[1]) == "1.000"


# (bundle, min_ok, min_base_accuracy): just below what each shipped base measures on 12 + 4 prompts (fp32
# CPU, one thread, `toy check --model M --num-prompts 12 --num-held-out 4`), so a regression fails CI.
# Mochi (trial I, its default ancestral sampler): one subject each 12/12, base accuracy 9/12, held out 0/4
# (with the release Euler sampler 10/12, 11/12, 1/4); the bundle before it (trial G, Euler) measured 7/12
# and 9/12 and fails the first threshold, v1 3/12 and 6/12.
# Wan (Wan trial H): 5/12, 10/12, held out 0/4; the bundle before it (Wan trial G) measured 4/12 and 8/12 and
# fails the second threshold, the one before that 1/12 and 4/12 and fails both.
CI_THRESHOLDS = [("mochi", 0.65, 0.70), ("wan", 0.33, 0.75)]


@pytest.mark.slow
@pytest.mark.parametrize(("bundle", "min_ok", "min_accuracy"), CI_THRESHOLDS)
def test_shipped_bundle_clears_the_ci_thresholds(tmp_path, bundle: str, min_ok: float, min_accuracy: float):
    """The shipped toy base, 12 base + 4 held-out prompts at the default 32 steps, against thresholds just
    below what it measures (at most 2/4 held-out prompts correct: the held-out relations stay held out)."""
    cfg = CheckConfig(
        model=str(TOY.bundles[bundle]),
        num_prompts=12,
        num_held_out=4,
        out_dir=str(tmp_path),
        min_ok=min_ok,
        min_base_accuracy=min_accuracy,
        max_held_out_accuracy=0.50,
        sheet_videos=4,
        progress=False,
    )
    data = run_check(cfg)
    assert data["passed"], data["criteria"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["videos"]) == 16 and {"ok", "duplicate_fraction", "prompt"} <= set(report["videos"][0])
    assert (tmp_path / "report.md").read_text().count("PASS") == 3
    assert (tmp_path / "contact_sheet.png").is_file()


def test_cli_bad_model_is_one_line_exit_2(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dreamrelation.cli", "toy", "check", "--model", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "no model_index.json" in result.stderr


@pytest.mark.parametrize(("strict", "passed", "code"), [(False, False, 0), (True, True, 0), (True, False, 1)])
def test_cli_strict_exits_1_only_on_fail(
    monkeypatch, tmp_path, strict: bool, passed: bool, code: int
) -> None:
    seen = []

    def fake_run_check(cfg: CheckConfig) -> dict:
        seen.append(cfg)
        return {"passed": passed}

    monkeypatch.setattr(check, "run_check", fake_run_check)
    args = [
        "toy",
        "check",
        "--model",
        "wan",
        "--num-prompts",
        "6",
        "--num-held-out",
        "2",
        "--out",
        str(tmp_path),
    ]
    result = CliRunner().invoke(app, [*args, "--threads", "1", *(["--strict"] if strict else [])])
    assert result.exit_code == code, result.output
    cfg = seen[0]
    assert (cfg.model, cfg.num_prompts, cfg.num_held_out, cfg.threads) == ("wan", 6, 2, 1)
    assert cfg.out_dir == str(tmp_path) and cfg.min_ok == 0.90 and cfg.num_inference_steps == 32


def test_by_frame_table_gives_the_share_of_base_videos_per_frame() -> None:
    records = [
        {"held_out": False, "duplicate_frames": [1, 0, 1], "missing_frames": [0, 0, 0]},
        {"held_out": False, "duplicate_frames": [1, 0, 0], "missing_frames": [0, 1, 0]},
        {"held_out": True, "duplicate_frames": [1, 1, 1], "missing_frames": [1, 1, 1]},  # not a base video
    ]
    lines = check.by_frame_table(records).strip().splitlines()
    assert lines[0].startswith("Share of the 2 base videos")
    assert (
        lines[-2] == "| duplicated | 1.00 | 0.00 | 0.50 |" and lines[-1] == "| missing | 0.00 | 0.50 | 0.00 |"
    )
    assert check.by_frame_table(records[2:]) == ""


def test_cli_sampling_flags_reach_the_check(monkeypatch, tmp_path) -> None:
    seen = []
    monkeypatch.setattr(check, "run_check", lambda cfg: seen.append(cfg) or {"passed": True})
    args = ["toy", "check", "--out", str(tmp_path), "--steps", "64", "--guidance", "2.5"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (seen[0].num_inference_steps, seen[0].guidance_scale) == (64, 2.5)
    assert CliRunner().invoke(app, ["toy", "check", "--out", str(tmp_path)]).exit_code == 0
    assert (seen[1].num_inference_steps, seen[1].guidance_scale) == (32, 4.0)  # the toy's defaults


def test_caption_binding_tells_a_bag_of_words_from_a_contextual_encoder() -> None:
    from types import SimpleNamespace

    import torch

    from dreamrelation.toy.backbone import build_tokenizer, toy_words

    tokenizer = build_tokenizer(toy_words())
    table = torch.nn.Embedding(len(tokenizer), 8)

    def bag_of_words(ids, attention_mask=None):
        return (table(ids),)

    def running_sum(ids, attention_mask=None):  # each token carries the words before it
        return (table(ids).cumsum(dim=1),)

    bag = check.caption_binding(SimpleNamespace(tokenizer=tokenizer, text_encoder=bag_of_words))
    assert bag == pytest.approx(1.0, abs=1e-6)
    # the first colour word sits after "A": with a running sum it is embed(A) + embed(colour) in both captions
    assert check.caption_binding(
        SimpleNamespace(tokenizer=tokenizer, text_encoder=running_sum)
    ) == pytest.approx(1.0, abs=1e-6)

    def with_next_word(ids, attention_mask=None):  # a colour word carries its shape
        return (table(ids) + table(ids).roll(-1, dims=1),)

    contextual = check.caption_binding(SimpleNamespace(tokenizer=tokenizer, text_encoder=with_next_word))
    assert contextual < 0.99


def _vae_round_trip(pipe, frames: np.ndarray) -> np.ndarray:
    import torch

    from dreamrelation.data.prepare import encode_video, latent_normalisation

    latent, _ = encode_video(pipe.vae, frames)
    mean, std, scaling = latent_normalisation(pipe.vae)
    with torch.no_grad():
        video = pipe.vae.decode((latent * std / scaling + mean)[None]).sample[0]
    return ((video.permute(1, 2, 3, 0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


@pytest.mark.parametrize("bundle", ["mochi", "wan"])
def test_denoising_a_rendered_video_from_low_noise_gives_it_back(bundle: str) -> None:
    """From sigma 0.2 the shipped toy bases finish the rendered video about as well as the VAE alone gives it
    back (same verdicts; a wrong flow sign or timestep would leave noise); from pure noise it differs."""
    from dreamrelation.backbones.loading import load_pipeline

    pipe = load_pipeline(TOY.bundles[bundle])
    cfg = CheckConfig(num_prompts=6, num_held_out=0, progress=False)
    jobs = check_jobs(cfg)[:2]
    for job in jobs:
        rendered = render_video(job.spec).frames
        finished = check.denoise_rendered(pipe, job, 0.2, cfg)
        reference = _vae_round_trip(pipe, rendered)
        assert finished.shape == rendered.shape and finished.dtype == np.uint8
        error = np.abs(finished.astype(float) - rendered).mean()
        assert error < np.abs(reference.astype(float) - rendered).mean() + 2.0, error  # round trip: ~6-8
        scores, expected = check.score_video(finished, job.spec), check.score_video(reference, job.spec)
        assert (scores["ok"], scores["relation_correct"]) == (expected["ok"], expected["relation_correct"])
    from_noise = check.denoise_rendered(pipe, jobs[-1], 1.0, cfg)
    assert np.abs(from_noise.astype(float) - render_video(jobs[-1].spec).frames).mean() > error + 5
    rows = check.denoise_and_score(pipe, jobs, CheckConfig(denoise_from=(0.2,), progress=False))
    assert [r["group"] for r in rows] == ["from sigma 0.2"] and rows[0]["ok"]["n"] == 2


def test_denoising_from_sigma_0_is_the_vae_round_trip_with_held_out_rows(monkeypatch) -> None:
    """Level 0 runs no model step (a transformer that raises is never called) and gives exactly the VAE round
    trip; held-out jobs get rows of their own."""
    from dreamrelation.backbones.loading import load_pipeline

    pipe = load_pipeline(TOY.bundles["mochi"])
    cfg = CheckConfig(num_prompts=6, num_held_out=4, progress=False, denoise_from=(0.0,))
    every = check_jobs(cfg)
    jobs = [*every[:1], *every[-2:]]
    assert [job.held_out for job in jobs] == [False, True, True]

    def no_model_step(*args, **kwargs):
        raise AssertionError("the transformer ran at sigma 0")

    monkeypatch.setattr(pipe.transformer, "forward", no_model_step)
    finished = check.denoise_rendered(pipe, jobs[-1], 0.0, cfg)
    np.testing.assert_array_equal(finished, _vae_round_trip(pipe, render_video(jobs[-1].spec).frames))
    rows = check.denoise_and_score(pipe, jobs, cfg)
    assert [(r["group"], r["ok"]["n"]) for r in rows] == [
        ("from sigma 0 (VAE round trip)", 1),
        ("held out, from sigma 0 (VAE round trip)", 2),
    ]


def test_cli_denoise_levels_are_parsed_and_checked(monkeypatch, tmp_path) -> None:
    seen = []
    monkeypatch.setattr(check, "run_check", lambda cfg: seen.append(cfg) or {"passed": True})
    args = ["toy", "check", "--out", str(tmp_path), "--denoise-from", "0.7, 0.95"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert seen[0].denoise_from == (0.7, 0.95)
    bad = CliRunner().invoke(app, ["toy", "check", "--denoise-from", "high"])
    assert bad.exit_code != 0
    with pytest.raises(check.UserError, match=r"must be in \[0, 1\]"):
        check._check_config(CheckConfig(denoise_from=(1.5,)))
    with pytest.raises(check.UserError, match=r"must be in \[0, 1\]"):
        check._check_config(CheckConfig(denoise_from=(-0.1,)))
    check._check_config(CheckConfig(denoise_from=(0.0,)))


def test_first_frame_rows_generate_from_the_rendered_first_frame(tiny_wan22_bundle: Path) -> None:
    from dreamrelation.backbones.loading import load_pipeline
    from dreamrelation.inference.generate import Sampling, generate_videos

    pipe = load_pipeline(tiny_wan22_bundle)
    cfg = CheckConfig(
        num_prompts=2, num_held_out=1, num_inference_steps=2, from_first_frame=True, progress=False
    )
    jobs = check_jobs(cfg)
    (row,) = check.first_frame_and_score(pipe, jobs, cfg)
    expected = []
    for job in jobs[:2]:  # the base jobs only, each from its own still
        still = Image.fromarray(render_video(job.spec).frames[0])
        video = generate_videos(pipe, [job.prompt], [job.seed], Sampling(2, cfg.guidance_scale), image=still)[
            0
        ]
        expected.append(check.score_video(video, job.spec))
    assert row["group"] == check.FIRST_FRAME_ROW and row["n"] == 2
    for key in check.SCORES:
        assert row[key]["k"] == sum(bool(s[key]) for s in expected)
    assert check.first_frame_and_score(pipe, jobs, CheckConfig(progress=False)) == []


def test_first_frame_check_is_refused_for_a_text_only_model(tiny_bundle: Path, tmp_path: Path) -> None:
    cfg = CheckConfig(
        model=str(tiny_bundle), num_prompts=1, num_held_out=0, from_first_frame=True, out_dir=str(tmp_path)
    )
    with pytest.raises(check.UserError, match="takes an image"):
        check.run_check(cfg)


def _report(oks: list[bool], seeds: list[int] | None = None) -> dict:
    seeds = seeds or list(range(len(oks)))
    videos = [
        {"prompt": f"p{i}", "seed": s, "held_out": False, "ok": ok, "present": True, "relation_correct": ok}
        for i, (ok, s) in enumerate(zip(oks, seeds, strict=True))
    ]
    held = {
        "prompt": "h",
        "seed": 99,
        "held_out": True,
        "ok": True,
        "present": True,
        "relation_correct": True,
    }
    return {"videos": [*videos, held]}


def test_compare_reports_pairs_the_base_videos(tmp_path: Path) -> None:
    a = _report([True] * 6 + [False] * 2 + [True] * 4)  # 10 of 12
    b = _report([False] * 6 + [False] * 2 + [True] * 4)  # 4 of 12: A wins on 6 pairs, never loses
    rows = {r["score"]: r for r in check.compare_reports(a, b, n_boot=2000)}
    ok = rows["one subject each"]
    assert ok["n"] == 12 and ok["a"] == pytest.approx(10 / 12) and ok["b"] == pytest.approx(4 / 12)
    assert ok["diff"] == pytest.approx(0.5) and 0 < ok["low"] <= 0.5 <= ok["high"] <= 1 and ok["significant"]
    assert rows["both present"]["diff"] == 0 and not rows["both present"]["significant"]
    with pytest.raises(check.UserError, match="different prompts or seeds"):
        check.compare_reports(a, _report([True] * 12, seeds=[s + 1 for s in range(12)]))
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "report.json").write_text(json.dumps(a))
    (tmp_path / "B.json").write_text(json.dumps(b))
    result = CliRunner().invoke(app, ["toy", "compare", str(tmp_path / "A"), str(tmp_path / "B.json")])
    assert result.exit_code == 0 and "one subject each: 0.833 vs 0.333, difference +0.500" in result.output
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "dreamrelation.cli",
            "toy",
            "compare",
            str(tmp_path),
            str(tmp_path / "B.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "not a `toy check` report" in bad.stderr
