import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from dreamrelation.evaluation import toy_benchmark
from dreamrelation.evaluation.toy_benchmark import (
    PAPER_RELATION_ACCURACY,
    CostModel,
    ToyBenchmarkConfig,
    Unit,
    bar_chart,
    build_sections,
    estimate_seconds,
    fast_preset,
    measured_cost,
    paired_difference,
    plan_units,
    run_toy_benchmark,
)
from dreamrelation.evaluation.toy_study import DEFAULT_SUBJECTS, make_jobs, toy_recipe
from dreamrelation.toy import world


def test_bar_chart_draws_one_row_per_method():
    rows = [
        {"method": m, "relation_correct": 0.5, "relation_correct_ci95": [0.3, 0.7]} for m in ("a", "b", "c")
    ]
    small = bar_chart(rows[:1], "relation_correct", "t")
    big = bar_chart(rows, "relation_correct", "t")
    assert big.height - small.height == 2 * 26


def test_default_subjects_are_new_and_distinct():
    assert len(DEFAULT_SUBJECTS) == 16 and len({tuple(s) for s in DEFAULT_SUBJECTS}) == 16
    for shape1, colour1, shape2, colour2 in DEFAULT_SUBJECTS:
        assert {shape1, shape2} <= set(world.SHAPES) and shape1 != shape2  # never a person
        assert {colour1, colour2} <= set(world.COLOURS) and colour1 != colour2
        assert not {colour1, colour2} & set(world.PERSON_COLOURS)  # never the exemplars' colours


def test_full_plan_meets_the_power_targets():
    cfg = ToyBenchmarkConfig()
    units = plan_units(cfg)
    assert set(cfg.relations) == {"high_fiving", "jumping_over", "pushing", "orbiting"}
    assert len(cfg.subjects) * len(cfg.seeds) >= 64
    for relation in cfg.relations:
        assert sum(u.relation == relation and u.method == "untuned" for u in units) == 1
        for method in ("direct_lora", "dreamrelation"):
            assert sum(u.relation == relation and u.method == method for u in units) >= 3
    for method in set(cfg.methods) - {"untuned", "direct_lora", "dreamrelation"}:
        relations = {u.relation for u in units if u.method == method}
        assert len(relations) >= 2
        for relation in relations:
            assert sum(u.relation == relation and u.method == method for u in units) >= 2
    # 4 untuned + 2 x 3 x 4 Table 1 + 8 x 2 x 2 others; the estimate must fit in 4 hours
    assert len(units) == 4 + 24 + 32
    assert estimate_seconds(cfg, units, cfg.cost) < 4 * 3600


def test_training_seed_reaches_the_trainer():
    cfg = ToyBenchmarkConfig()
    assert toy_recipe("dreamrelation", cfg, 2).optim.seed == 2
    assert toy_recipe("direct_lora", cfg, 0).optim.seed == 0
    assert toy_recipe("untuned", cfg, 1) is None


def test_cost_model_by_hand():
    cfg = ToyBenchmarkConfig(subjects=[["star", "red", "circle", "blue"]] * 2, seeds=[0, 1, 2])
    cfg.train_steps, cfg.num_inference_steps = 100, 10
    cost = CostModel(
        train_s_per_step=0.5, generate_s_per_step=0.1, score_s_per_video=0.2, prepare_s_per_relation=7
    )
    units = [
        Unit("pushing", "untuned", None),
        Unit("pushing", "dreamrelation", 0),
        Unit("orbiting", "wo_hmt", 1),
    ]
    # 2 relations x 7 s + 3 units x 6 videos x (10 x 0.1 + 0.2) s + 2 trained x 100 x 0.5 s
    assert estimate_seconds(cfg, units, cost) == pytest.approx(14 + 3 * 6 * 1.2 + 100)
    finished = [{"jobs": [{}] * 6, "timings": {"train_s_per_step": 0.2, "generate_s": 12.0, "score_s": 3.0}}]
    measured = measured_cost(cfg, finished)
    assert measured.train_s_per_step == 0.2
    assert measured.generate_s_per_step == pytest.approx(12.0 / 60)
    assert measured.score_s_per_video == pytest.approx(0.5)
    assert measured.prepare_s_per_relation == cfg.cost.prepare_s_per_relation  # not measured


def _fake_results(correct: dict[tuple[str, int | None], list[int]], prompts: list[str]) -> dict:
    """Unit results with the given per-video relation_correct (one video per prompt)."""
    jobs = [{"prompt": p, "seed": 0} for p in prompts]
    results = {}
    for (method, seed), values in correct.items():
        scores = [
            {"relation_correct": bool(v), "appearance": 0.5, "leakage": 0.1 * v, "temporal_consistency": 0.9}
            for v in values
        ]
        results[Unit("pushing", method, seed)] = {"jobs": jobs, "scores": scores}
    return results


def test_paired_difference_pairs_seeds_and_prompts():
    prompts = ["p0", "p1", "p2", "p3"]
    results = _fake_results(
        {
            ("dreamrelation", 0): [1, 1, 0, 1],
            ("dreamrelation", 1): [1, 0, 1, 1],
            ("direct_lora", 0): [0, 1, 0, 0],
            ("direct_lora", 1): [1, 0, 0, 0],
            ("untuned", None): [0, 0, 0, 1],
        },
        prompts,
    )
    lora = paired_difference(results, "direct_lora", (["pushing"], [0, 1]), n_boot=2000)
    assert lora.diff == pytest.approx((3 + 3 - 1 - 1) / 8)  # 0.5, by hand
    assert 0.0 <= lora.low <= lora.diff <= lora.high <= 1.0
    # the untuned videos pair with each training seed of DreamRelation
    untuned = paired_difference(results, "untuned", (["pushing"], [0, 1]), n_boot=2000)
    assert untuned.diff == pytest.approx((3 + 3 - 2 * 1) / 8)
    # only seed 0 in scope: 3/4 - 1/4
    assert paired_difference(results, "direct_lora", (["pushing"], [0]), n_boot=500).diff == 0.5


def test_report_tables_show_intervals_and_significance():
    cfg = ToyBenchmarkConfig(relations=["pushing"], methods=["untuned", "direct_lora", "dreamrelation"])
    cfg.train_seeds, cfg.n_boot = [0, 1], 2000
    prompts = [f"p{i}" for i in range(16)]
    results = _fake_results(
        {
            ("dreamrelation", 0): [1] * 16,
            ("dreamrelation", 1): [1] * 15 + [0],
            ("direct_lora", 0): [0] * 16,
            ("direct_lora", 1): [1] * 16,
            ("untuned", None): [0] * 16,
        },
        prompts,
    )
    sections, tables, per_relation = build_sections(cfg, results)
    rows = {r["method"]: r for r in tables["Table 1: comparison"]}
    assert rows["untuned"]["n"] == 16 and rows["dreamrelation"]["n"] == 32
    assert rows["untuned"]["relation_correct_ci95"][0] == 0.0  # Wilson at 0/16
    assert rows["untuned"]["difference_significant"] is True  # 31 of 32 pairs favour DreamRelation
    # direct LoRA: seed 0 all wrong, seed 1 all right: with two training seeds the difference is unclear
    assert rows["direct_lora"]["difference"] == pytest.approx(15 / 32)
    assert rows["direct_lora"]["difference_significant"] is False
    assert rows["direct_lora"]["paper_difference"] == pytest.approx(0.445 - 0.326)
    text = dict(sections)["Table 1: comparison"]
    assert "DreamRelation - method [95% CI]" in text and "| yes |" in text and "| no |" in text
    assert per_relation[0]["relation"] == "pushing"


@pytest.mark.slow
def test_fast_benchmark_runs_and_resumes(tiny_bundle, tmp_path, monkeypatch):
    cfg = fast_preset(ToyBenchmarkConfig(bundle=str(tiny_bundle), out_dir=str(tmp_path / "bench")))
    cfg.train_steps, cfg.num_inference_steps, cfg.num_exemplars, cfg.rank = 2, 2, 2, 4
    cfg.n_boot = 200
    run_toy_benchmark(cfg, progress=False)
    out = tmp_path / "bench"
    report = json.loads((out / "report.json").read_text())
    table1 = report["tables"]["Table 1: comparison"]
    assert [row["method"] for row in table1] == ["untuned", "direct_lora", "dreamrelation"]
    assert [row["method"] for row in report["tables"]["Table 2: ablations"]] == ["dreamrelation", "wo_hmt"]
    for row in table1:
        assert row["paper_relation_accuracy"] == PAPER_RELATION_ACCURACY[row["method"]]
        low, high = row["relation_correct_ci95"]
        assert 0.0 <= low <= row["relation_correct"] <= high <= 1.0
    assert table1[0]["n"] == 2 and table1[1]["n"] == 4  # untuned once, direct LoRA with two training seeds
    text = (out / "report.md").read_text()
    assert "Table 1: comparison" in text and "Table 2: ablations" in text and "significant" in text
    assert "Table 2: seeds [0] on high_fiving" in text and "image-conditioned" not in text
    assert (out / "table_1.png").is_file() and (out / "contact_sheet_high_fiving.png").is_file()
    units = sorted(p.name for p in (out / "units" / "high_fiving").glob("*.json"))
    expected = ["direct_lora_seed0", "direct_lora_seed1", "dreamrelation_seed0", "dreamrelation_seed1"]
    assert units == sorted([f"{n}.json" for n in [*expected, "untuned", "wo_hmt_seed0"]])
    # the training seed changes the adapters, the jobs stay the same
    seed0, seed1 = (
        json.loads((out / "units" / "high_fiving" / f"dreamrelation_seed{s}.json").read_text())
        for s in (0, 1)
    )
    assert seed0["jobs"] == seed1["jobs"]
    adapters = [
        sorted((out / "train" / "high_fiving" / f"dreamrelation_seed{s}" / "adapters").glob("*.safetensors"))
        for s in (0, 1)
    ]
    assert adapters[0] and adapters[0][0].read_bytes() != adapters[1][0].read_bytes()

    # resume: a finished unit is never run again; a missing one (killed run) is
    calls = []
    original = toy_benchmark.run_unit
    monkeypatch.setattr(toy_benchmark, "run_unit", lambda *args: calls.append(args[2]) or original(*args))
    (out / "units" / "high_fiving" / "wo_hmt_seed0.json").unlink()
    again = run_toy_benchmark(cfg, progress=False)
    assert calls == [Unit("high_fiving", "wo_hmt", 0)]
    assert again["tables"]["Table 1: comparison"] == json.loads(
        json.dumps(report["tables"]["Table 1: comparison"])
    )
    assert np.isfinite(again["seconds"])


def test_cli_estimate_prints_the_plan(tmp_path):
    from typer.testing import CliRunner

    from dreamrelation.cli import app

    result = CliRunner().invoke(
        app, ["benchmark", "toy", "--preset", "fast", "--estimate", f"out_dir={tmp_path}"]
    )
    assert result.exit_code == 0, result.output
    assert "6 units (0 already done) x 2 videos" in result.output and "estimated" in result.output
    assert not list(tmp_path.iterdir())  # nothing ran


@pytest.mark.parametrize("bundle", ["tiny_bundle", "tiny_wan_bundle"])
def test_batched_generation_matches_one_by_one(bundle, request):
    from dreamrelation.backbones.loading import load_pipeline
    from dreamrelation.evaluation.toy_study import generate_jobs
    from dreamrelation.inference.generate import Sampling, generate_videos

    pipe = load_pipeline(request.getfixturevalue(bundle))
    jobs = make_jobs("pushing", DEFAULT_SUBJECTS[:2], [0, 5])
    batched = generate_jobs(pipe, jobs, steps=2, guidance=4.0, batch_size=3)
    single = generate_videos(pipe, [j.prompt for j in jobs], [j.seed for j in jobs], Sampling(2, 4.0))
    assert len(batched) == 4
    for a, b in zip(batched, single, strict=True):
        assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert np.abs(batched[0].astype(int) - batched[1].astype(int)).max() > 0  # seeds differ


def test_fingerprint_follows_the_bundle_content(tmp_path):
    from dreamrelation.evaluation.toy_benchmark import bundle_digest, fingerprint

    bundle = tmp_path / "bundle"
    (bundle / "transformer").mkdir(parents=True)
    (bundle / "transformer" / "weights.bin").write_bytes(b"one")
    cfg = ToyBenchmarkConfig(bundle=str(bundle))
    before = fingerprint(cfg)
    assert before["bundle_digest"] == bundle_digest(bundle) and before["train_steps"] == cfg.train_steps
    copy = tmp_path / "copy"
    (copy / "transformer").mkdir(parents=True)
    (copy / "transformer" / "weights.bin").write_bytes(b"two")  # a replaced bundle
    assert bundle_digest(copy) != before["bundle_digest"]
    # a shifted training noise schedule is other settings; the uniform default leaves older units valid
    assert "sigma_shift" not in before
    shifted = fingerprint(replace(cfg, sigma_shift=3.0))
    assert shifted != before and shifted["sigma_shift"] == 3.0
    assert toy_recipe("dreamrelation", replace(cfg, sigma_shift=3.0)).optim.sigma_shift == 3.0


def test_a_made_up_relation_word_reaches_exemplar_captions_and_prompts(tmp_path) -> None:
    from dreamrelation.evaluation.toy_study import make_jobs, write_exemplar_videos

    videos = write_exemplar_videos("pushing", 2, seed=0, out_dir=tmp_path, word="zorbing")
    captions = sorted((tmp_path / "videos").glob("*.txt"))
    assert [p.read_text().strip() for p in captions] == [v.caption for v in videos]
    assert all(v.caption == "A person is zorbing a person." for v in videos)
    jobs = make_jobs("pushing", [["star", "red", "circle", "blue"]], [0, 1], word="zorbing")
    assert [j.prompt for j in jobs] == ["A red star is zorbing a blue circle."] * 2
    assert make_jobs("pushing", [["star", "red", "circle", "blue"]], [0])[0].prompt == (
        "A red star is pushing a blue circle."
    )


def test_image_to_video_benchmark_starts_every_video_from_its_still(tiny_wan22_bundle, tmp_path):
    cfg = fast_preset(ToyBenchmarkConfig(out_dir=str(tmp_path / "i2v")))
    cfg = toy_benchmark.image_to_video_preset(cfg)
    assert cfg.bundle == "wan22" and cfg.image_to_video and "wo_hmt" not in cfg.methods
    cfg.bundle, cfg.out_dir = str(tiny_wan22_bundle), str(tmp_path / "i2v")
    cfg.train_steps, cfg.num_inference_steps, cfg.num_exemplars, cfg.rank, cfg.n_boot = 2, 2, 2, 4, 200
    cfg.train_seeds, cfg.i2v_probability = [0], 1.0
    report = run_toy_benchmark(cfg, progress=False)
    assert [row["method"] for row in report["tables"]["Table 1: comparison"]] == [
        "untuned",
        "direct_lora",
        "dreamrelation",
    ]
    text = (tmp_path / "i2v" / "report.md").read_text()
    assert (
        "(image-to-video)" in text
        and "100% image-conditioned steps" in text
        and "seeds [0, 1] on" not in text
    )
    # every training step conditioned on the first frame (i2v_probability 1)
    for method in ("direct_lora", "dreamrelation"):
        rows = (tmp_path / "i2v" / "train" / "high_fiving" / f"{method}_seed0" / "loss.csv").read_text()
        assert [line.split(",")[-1] for line in rows.splitlines()[1:]] == ["1"] * cfg.train_steps
    videos = np.load(tmp_path / "i2v" / "units" / "high_fiving" / "untuned.npz")["videos"]
    assert videos.shape[1:] == (25, 64, 64, 3)
    # the contact sheet shows the stills (nearest-upscaled x2) above the generated videos
    sheet = np.asarray(Image.open(tmp_path / "i2v" / "contact_sheet_high_fiving.png").convert("RGB"))
    job = make_jobs("high_fiving", cfg.subjects[:1], [0], stills=True)[0]
    colour = job.subjects[0].rgb
    assert (sheet == colour).all(-1).sum() >= 4 * (job.image == colour).all(-1).sum() > 0
    # text-to-video units of the same settings are other units
    assert toy_benchmark.fingerprint(cfg) != toy_benchmark.fingerprint(replace(cfg, image_to_video=False))


def test_study_preset_adds_the_variants_on_the_ablation_relations_only():
    cfg = toy_benchmark.PRESETS["i2v-study"](ToyBenchmarkConfig())
    units = plan_units(cfg)
    assert cfg.image_to_video and cfg.bundle == "wan22"
    for method in toy_benchmark.STUDY_METHODS:
        relations = {u.relation for u in units if u.method == method}
        expected = (
            set(cfg.relations) if method in toy_benchmark.TABLE1_METHODS else set(cfg.ablation_relations)
        )
        assert relations == expected, method
    # the variants come on top of the image-to-video benchmark's units, which stay the same
    i2v = plan_units(toy_benchmark.PRESETS["i2v"](ToyBenchmarkConfig()))
    assert set(i2v) < set(units) and len(units) - len(i2v) == 6 * 2 * 2


@pytest.mark.slow
def test_inference_variants_generate_with_the_trained_adapters(tiny_bundle, tmp_path, monkeypatch):
    from dreamrelation.evaluation import toy_study

    cfg = ToyBenchmarkConfig(bundle=str(tiny_bundle), out_dir=str(tmp_path / "study"))
    cfg.relations = cfg.ablation_relations = ["high_fiving"]
    cfg.methods = ["dreamrelation", "roles_all", "roles_relation"]
    cfg.subjects, cfg.seeds, cfg.train_seeds, cfg.ablation_seeds = cfg.subjects[:2], [0], [0], [0]
    cfg.train_steps, cfg.warmup_steps, cfg.num_inference_steps, cfg.num_exemplars = 3, 1, 2, 2
    cfg.rank, cfg.lr, cfg.n_boot = 4, 0.05, 200
    trainings = []
    original = toy_study.train_adapters
    monkeypatch.setattr(
        toy_study, "train_adapters", lambda *a, **k: trainings.append(a[3]) or original(*a, **k)
    )
    report = run_toy_benchmark(cfg, progress=False)
    assert len(trainings) == 1  # DreamRelation's; the variants reuse its adapters
    out = tmp_path / "study"
    units = {
        m: json.loads((out / "units" / "high_fiving" / f"{m}_seed0.json").read_text()) for m in cfg.methods
    }
    source = out / "train" / "high_fiving" / "dreamrelation_seed0" / "adapters"
    assert units["dreamrelation"]["adapters_from"] is None
    assert units["roles_all"]["adapters_from"] == units["roles_relation"]["adapters_from"] == str(source)
    assert not (out / "train" / "high_fiving" / "roles_all_seed0").exists()
    videos = {m: np.load(out / "units" / "high_fiving" / f"{m}_seed0.npz")["videos"] for m in cfg.methods}
    assert not np.array_equal(videos["dreamrelation"], videos["roles_all"])  # the subject adapters are on
    assert not np.array_equal(videos["dreamrelation"], videos["roles_relation"])  # the output adapter is off
    rows = report["tables"]["Study: inference roles and training variants"]
    assert [r["method"] for r in rows] == ["dreamrelation", "roles_relation", "roles_all"]
    assert all("difference_ci95" in r for r in rows[1:])
    assert (out / "study_tradeoff.png").is_file() and "study_tradeoff.png" in (out / "report.md").read_text()
    # adapters from other settings are not reused: the variant trains its own (the same recipe)
    other = replace(cfg, methods=["roles_all"], train_steps=2)
    run_toy_benchmark(other, progress=False)
    assert len(trainings) == 2
    assert (out / "train" / "high_fiving" / "roles_all_seed0" / "adapters").is_dir()


def _fake_run(root, accuracy: dict, seeds=(0, 1)) -> None:
    """A benchmark output folder whose units score ``accuracy[(method, train_seed)][job]`` (leakage 0.5)."""
    for (method, train_seed), hits in accuracy.items():
        unit = Unit("high_fiving", method, train_seed)
        jobs = [
            {"prompt": f"prompt {i // len(seeds)}", "seed": seeds[i % len(seeds)]} for i in range(len(hits))
        ]
        scores = [{"relation_correct": bool(h), "leakage": 0.5} for h in hits]
        path = root / "units" / "high_fiving" / f"{unit.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "unit": {"relation": "high_fiving", "method": method, "train_seed": train_seed},
                    "jobs": jobs,
                    "scores": scores,
                }
            )
        )


def test_compare_runs_pairs_videos_by_job(tmp_path):
    from dreamrelation.errors import UserError

    a = {("dreamrelation", s): [1, 1, 1, 0, 1, 1, 1, 1] for s in (0, 1, 2)}
    b = {("dreamrelation", s): [0, 1, 0, 0, 0, 0, 1, 0] for s in (0, 1, 2)}
    _fake_run(tmp_path / "a", a)
    _fake_run(tmp_path / "b", b)
    rows = toy_benchmark.compare_runs(
        toy_benchmark.read_units(tmp_path / "a"), toy_benchmark.read_units(tmp_path / "b"), n_boot=500
    )
    pooled = rows[0]
    assert pooled["relations"] == ["high_fiving"] and pooled["n"] == 24
    assert pooled["relation_correct_diff"] == pytest.approx(7 / 8 - 2 / 8)  # by hand: 7 vs 2 hits of 8
    low, high = pooled["relation_correct_ci95"]
    assert 0 < low <= pooled["relation_correct_diff"] <= high <= 1 and pooled["relation_correct_significant"]
    assert pooled["leakage_diff"] == 0 and not pooled["leakage_significant"]
    assert "| +0.625 [" in toy_benchmark.comparison_table(rows)
    # other noise seeds cannot be paired; an empty folder is not a run
    _fake_run(tmp_path / "c", b, seeds=(5, 6))
    with pytest.raises(UserError, match="different jobs"):
        toy_benchmark.compare_runs(
            toy_benchmark.read_units(tmp_path / "a"), toy_benchmark.read_units(tmp_path / "c")
        )
    with pytest.raises(UserError, match="no finished benchmark units"):
        toy_benchmark.read_units(tmp_path / "empty")


def test_cli_benchmark_compare_writes_a_report(tmp_path):
    from typer.testing import CliRunner

    from dreamrelation.cli import app

    _fake_run(tmp_path / "a", {("direct_lora", 0): [1, 0, 1, 0]})
    _fake_run(tmp_path / "b", {("direct_lora", 0): [0, 0, 1, 0]})
    result = CliRunner().invoke(
        app,
        ["benchmark", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")],
    )
    assert result.exit_code == 0, result.output
    assert "+0.250" in result.output
    assert json.loads((tmp_path / "cmp" / "report.json").read_text())[0]["method"] == "direct_lora"
