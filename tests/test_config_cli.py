import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from dreamrelation.config import load_config, to_yaml
from dreamrelation.errors import UserError
from dreamrelation.training.config import TrainConfig, preset


@dataclass
class Inner:
    lr: float = 1e-3
    names: list[str] = field(default_factory=lambda: ["a"])


@dataclass
class Outer:
    steps: int = 10
    inner: Inner = field(default_factory=Inner)


def test_defaults_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 20\ninner:\n  lr: 0.5\n")
    cfg = load_config(Outer, path, ["inner.names=[x,y]", "steps=30"])
    assert cfg.steps == 30 and cfg.inner.lr == 0.5 and cfg.inner.names == ["x", "y"]
    assert isinstance(cfg, Outer) and isinstance(cfg.inner, Inner)


def test_instance_gives_defaults():
    cfg = load_config(preset("direct_lora"), None, ["optim.lr=0.1"])
    assert isinstance(cfg, TrainConfig)
    assert cfg.adapter.placement == {"direct": ["q", "k", "v", "out"]} and cfg.optim.lr == 0.1
    assert "placement" in to_yaml(cfg)


@pytest.mark.parametrize(
    "overrides, match",
    [(["inner.nope=1"], "inner.nope"), (["steps=abc"], "steps"), (["steps"], "key.path=value")],
)
def test_bad_overrides_name_the_key(overrides, match):
    with pytest.raises(UserError, match=match):
        load_config(Outer, None, overrides)


def test_bad_file_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(Outer, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("inner:\n  lr: [1, 2\n")
    with pytest.raises(UserError, match="bad.yaml"):
        load_config(Outer, bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("inner:\n  lrr: 1\n")
    with pytest.raises(UserError, match="wrong.yaml.*inner.lrr"):
        load_config(Outer, wrong)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "dreamrelation.cli", *args], capture_output=True, text=True)


def test_cli_bad_override_is_one_line_exit_2():
    result = _cli("demo", "train_stepz=3")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "train_stepz" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_lists_relations():
    result = _cli("toy", "relations")
    assert result.returncode == 0
    lines = result.stdout.strip().splitlines()
    assert sum("held-out" in line for line in lines) == 4 and len(lines) >= 8


def test_cli_train_reports_missing_files(tmp_path):
    (tmp_path / "videos").mkdir()
    result = _cli("train", str(tmp_path))
    assert result.returncode == 2 and "no videos" in result.stderr and "Traceback" not in result.stderr


def test_cli_render_then_train_from_folder(tiny_bundle, tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    result = _cli("toy", "render", str(data), "--relation", "pushing", "--num", "2", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (data / "videos").iterdir()) == [
        "exemplar000.mp4",
        "exemplar000.txt",
        "exemplar001.mp4",
        "exemplar001.txt",
    ]
    overrides = ["optim.steps=2", "optim.batch_size=2", "optim.warmup_steps=1", "adapter.rank=4"]
    result = _cli("train", str(data), *overrides, "--model", str(tiny_bundle), "--out", str(run))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (run / "adapters").glob("*.safetensors")) == [
        "output.safetensors",
        "relation.safetensors",
        "subject1.safetensors",
        "subject2.safetensors",
    ]
    assert len((run / "loss.csv").read_text().strip().splitlines()) == 3  # header + 2 steps
