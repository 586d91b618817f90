import json

import numpy as np
import pytest
from PIL import Image

from dreamrelation.demo import DemoConfig, _verdict, best_and_worst, paired_rows, run_demo
from dreamrelation.evaluation.toy_study import Job, make_jobs
from dreamrelation.utils.media import read_video, trajectory_frames, trajectory_panel, trajectory_still


def test_trajectory_still_draws_where_the_centroids_are():
    frame = np.zeros((16, 16, 3), np.uint8)
    traj = np.array([[[2.0, 2.0], [2.0, 8.0], [2.0, 13.0]], [[np.nan, np.nan]] * 3])  # second subject lost
    still = trajectory_still(frame, traj, colours=[(255, 0, 0), (0, 255, 0)], scale=4)
    assert still.shape == (64, 64, 3) and still.dtype == np.uint8
    red = (still[..., 0] > 200) & (still[..., 1] < 60)
    ys, xs = np.nonzero(red)
    assert abs(np.median(xs) - 2.5 * 4) <= 2  # the vertical line at x = 2 (pixel centre 2.5, x4)
    assert ys.min() <= 3 * 4 and ys.max() >= 13 * 4  # from the start to the end point
    assert not ((still[..., 1] > 200) & (still[..., 0] < 60)).any()  # nothing drawn for a lost subject
    assert not still[:, 40:].any()  # far from the line the black frame stays black


def test_trajectory_panel_and_frames_shapes():
    video = np.full((5, 8, 8, 3), 40, np.uint8)
    traj = np.stack([np.stack([np.arange(5.0), np.full(5, 3.0)], -1)] * 2)
    panel = trajectory_panel(video, traj, frames=4, scale=2)
    assert panel.shape == (16, 5 * 16 + 4 * 2, 3)  # 4 frames + the still, 2 px gaps
    frames = trajectory_frames(video, traj, scale=3)
    assert frames.shape == (5, 24, 24, 3)
    assert (frames[0] == frames[0, 0, 0]).sum() > (frames[-1] == frames[-1, 0, 0]).sum()  # the trail grows


def test_best_and_worst_rank_correct_then_confidence():
    rows = [
        {"relation_correct": False, "tracked": True, "target_probability": 0.4},
        {"relation_correct": True, "tracked": True, "target_probability": 0.6},
        {"relation_correct": True, "tracked": True, "target_probability": 0.9},
        {"relation_correct": False, "tracked": False, "target_probability": 0.3},
    ]
    assert best_and_worst(rows) == (2, 3)


def test_case_verdict_says_why_a_video_is_not_correct():
    row = {"relation_correct": False, "tracked": False, "predicted_relation": "high_fiving"}
    assert _verdict(row) == "subjects not both tracked (read as high_fiving)"
    assert _verdict({**row, "tracked": True, "predicted_relation": "pushing"}) == "predicted pushing"
    assert _verdict({**row, "relation_correct": True, "tracked": True}) == "correct"


def test_paired_rows_by_hand():
    jobs = make_jobs(
        "pushing", [["star", "red", "circle", "blue"], ["cross", "blue", "diamond", "yellow"]], [0, 1]
    )
    assert all(isinstance(j, Job) for j in jobs)

    def scores(correct):
        return [{"relation_correct": c, "leakage": 0.0} for c in correct]

    data = {
        "untuned": scores([False, False, False, False]),
        "direct_lora": scores([True, False, False, True]),
        "dreamrelation": scores([True, True, True, False]),
    }
    rows = {r["comparison"]: r for r in paired_rows(data, jobs, n_boot=4000)}
    untuned = rows["dreamrelation - untuned"]
    assert untuned["relation_correct"] == 0.75
    # two prompt clusters with mean differences 1 and 0.5: resample means 0.5, 0.75, 1 -> interval [0.5, 1]
    assert untuned["relation_correct_ci95"] == [0.5, 1.0] and untuned["relation_correct_significant"]
    lora = rows["dreamrelation - direct_lora"]
    assert lora["relation_correct"] == 0.25 and not lora["relation_correct_significant"]
    assert lora["leakage_ci95"] == [0.0, 0.0] and not lora["leakage_significant"]


@pytest.mark.slow
@pytest.mark.parametrize("bundle", ["tiny_bundle", "tiny_wan_bundle"])
def test_short_demo_end_to_end(bundle, request, tmp_path):
    cfg = DemoConfig(
        bundle=str(request.getfixturevalue(bundle)),
        num_exemplars=3,
        subjects=[["star", "red", "circle", "blue"], ["triangle", "yellow", "square", "green"]],
        seeds=[0],
        num_inference_steps=2,
        train_steps=3,
        batch_size=2,
        warmup_steps=1,
        rank=4,
        n_boot=200,
        out_dir=str(tmp_path / "demo"),
    )
    data = run_demo(cfg, progress=False)
    out = tmp_path / "demo"
    report = json.loads((out / "report.json").read_text())
    assert [row["method"] for row in report["results"]] == ["untuned", "direct_lora", "dreamrelation"]
    for row in report["results"]:
        assert row["n"] == 2
        for key in ("relation_correct", "appearance", "leakage", "temporal_consistency"):
            low, high = row[f"{key}_ci95"]
            assert 0.0 <= low <= row[key] <= high <= 1.0
    assert [d["comparison"] for d in report["differences"]] == [
        "dreamrelation - untuned",
        "dreamrelation - direct_lora",
    ]
    assert report["prompts"][0] == "A red star is high-fiving with a blue circle."
    text = (out / "report.md").read_text()
    assert (
        "| dreamrelation |" in text
        and "Paired differences" in text
        and "cases/dreamrelation_best.gif" in text
    )
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.size[0] > 2 * (5 * 128)  # two columns of 4 frames + a trajectory still each
    for name in ("exemplar", "untuned_best", "untuned_worst", "direct_lora_best", "dreamrelation_worst"):
        frames, _ = read_video(out / "cases" / f"{name}.gif")
        assert frames.shape[1:] == (192, 192, 3)  # identical frames of a still video may be merged
        assert frames.shape[0] > 10 or name != "exemplar"  # the exemplar moves
    for entry in data["videos"]:
        frames, _ = read_video(out / entry["video"])
        assert frames.shape[0] == 25 and frames.dtype == np.uint8
        assert (out / entry["video"]).with_suffix(".gif").is_file()
        assert 0.0 <= entry["target_probability"] <= 1.0
    # the exemplar folder is written in the paper's layout and can be trained from
    assert len(list((out / "exemplars" / "masks").iterdir())) == 3
    assert (
        (out / "exemplars" / "videos" / "exemplar000.txt").read_text().startswith("A person is high-fiving")
    )
    for method in ("direct_lora", "dreamrelation"):
        assert list((out / "train" / method / "adapters").glob("*.safetensors"))
