"""benchmarks/gpu_mochi.py: its whole code path with a tiny model on the CPU, and its clean refusal without CUDA."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_mochi.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_mochi", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_mochi"] = module
    spec.loader.exec_module(module)
    return module


def test_full_geometry_is_the_paper_clip(bench: ModuleType) -> None:
    assert bench.FULL.latent == (12, 11, 60, 106)
    assert (bench.FULL.text_tokens, bench.FULL.text_dim) == (256, 4096)


def test_tiny_run_covers_every_mode_inference_and_decode(bench: ModuleType, tmp_path, capsys) -> None:
    out = tmp_path / "tiny.json"
    argv = ["--tiny", "--device", "cpu", "--steps", "2", "--warmup", "1", "--inference-steps", "3"]
    assert bench.main([*argv, "--vae-decode", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["train"]) == set(bench.MODES)
    blocks = {m: r["checkpointed_blocks"] for m, r in result["train"].items()}
    assert blocks == {"bf16_ckpt_all": 3, "fp8_ckpt_all": 3, "bf16_ckpt_partial": 2}
    for mode, r in result["train"].items():
        assert r["status"] == "ok", (mode, r)
        assert len(r["step_seconds"]) == 2 and r["seconds_per_step"] > 0
        assert len(r["losses"]) == 3 and all(math.isfinite(x) for x in r["losses"])
        assert r["adapter_dtypes"] == ["torch.float32"]
    assert result["train"]["fp8_ckpt_all"]["memory"]["fp8_base"] is True
    inf = result["inference"]
    assert inf["status"] == "ok" and inf["finite"] and inf["timed_steps"] == 3
    assert inf["seconds_per_video"] == pytest.approx(inf["seconds_per_step"] * 3)
    assert result["vae_decode"]["video_shape"] == [1, 3, 13, 32, 32]
    text = capsys.readouterr().out
    assert "bf16_ckpt_partial" in text and "s/video" in text


def test_refuses_cleanly_without_cuda(bench: ModuleType, monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--out", str(tmp_path / "x.json")]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert not (tmp_path / "x.json").exists()
    assert bench.main(["--modes", "nope", "--tiny", "--device", "cpu"]) == 2
