import json

import pytest

from dreamrelation.evaluation.toy_benchmark import (
    PAPER_RELATION_ACCURACY,
    ToyBenchmarkConfig,
    bar_chart,
    fast_preset,
    run_toy_benchmark,
)


def test_bar_chart_draws_one_row_per_method():
    rows = [
        {"method": m, "relation_correct": 0.5, "relation_correct_ci95": [0.3, 0.7]} for m in ("a", "b", "c")
    ]
    small = bar_chart(rows[:1], "relation_correct", "t")
    big = bar_chart(rows, "relation_correct", "t")
    assert big.height - small.height == 2 * 26


@pytest.mark.slow
def test_fast_benchmark_runs(tiny_bundle, tmp_path):
    cfg = fast_preset(ToyBenchmarkConfig(bundle=str(tiny_bundle), out_dir=str(tmp_path / "bench")))
    cfg.train_steps, cfg.num_inference_steps, cfg.num_exemplars, cfg.rank = 2, 2, 2, 4
    run_toy_benchmark(cfg, progress=False)
    report = json.loads((tmp_path / "bench" / "report.json").read_text())
    methods = [row["method"] for row in report["results"]]
    assert methods == ["untuned", "direct_lora", "dreamrelation", "wo_hmt"]
    for row in report["results"]:
        assert row["paper_relation_accuracy"] == PAPER_RELATION_ACCURACY[row["method"]]
        assert 0.0 <= row["relation_correct"] <= 1.0
    text = (tmp_path / "bench" / "report.md").read_text()
    assert "Table 1: comparison" in text and "Table 2: ablations" in text
    assert (tmp_path / "bench" / "table_1.png").is_file()
    assert (tmp_path / "bench" / "contact_sheet_high_fiving.png").is_file()
