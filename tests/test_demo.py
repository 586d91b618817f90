import json

import numpy as np
import pytest

from dreamrelation.demo import DemoConfig, run_demo
from dreamrelation.utils.media import read_video


@pytest.mark.slow
@pytest.mark.parametrize("bundle", ["tiny_bundle", "tiny_wan_bundle"])
def test_short_demo_end_to_end(bundle, request, tmp_path):
    cfg = DemoConfig(
        bundle=str(request.getfixturevalue(bundle)),
        num_exemplars=3,
        subjects=[["star", "red", "circle", "blue"]],
        seeds=[0],
        num_inference_steps=2,
        train_steps=3,
        batch_size=2,
        warmup_steps=1,
        rank=4,
        out_dir=str(tmp_path / "demo"),
    )
    data = run_demo(cfg, progress=False)
    out = tmp_path / "demo"
    report = json.loads((out / "report.json").read_text())
    assert [row["method"] for row in report["results"]] == ["untuned", "direct_lora", "dreamrelation"]
    for row in report["results"]:
        assert 0.0 <= row["relation_correct"] <= 1.0 and 0.0 <= row["temporal_consistency"] <= 1.0
    assert report["prompts"] == ["A red star is high-fiving with a blue circle."]
    assert "| dreamrelation |" in (out / "report.md").read_text()
    assert (out / "contact_sheet.png").stat().st_size > 0
    for entry in data["videos"]:
        frames, _ = read_video(out / entry["video"])
        assert frames.shape[0] == 25 and frames.dtype == np.uint8
        assert (out / entry["video"]).with_suffix(".gif").is_file()
    # the exemplar folder is written in the paper's layout and can be trained from
    assert len(list((out / "exemplars" / "masks").iterdir())) == 3
    assert (
        (out / "exemplars" / "videos" / "exemplar000.txt").read_text().startswith("A person is high-fiving")
    )
    for method in ("direct_lora", "dreamrelation"):
        assert list((out / "train" / method / "adapters").glob("*.safetensors"))
