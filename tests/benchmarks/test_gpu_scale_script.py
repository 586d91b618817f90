"""benchmarks/gpu_scale.py: release configs, its whole code path with tiny models on the CPU for every
backbone, and its clean refusal without CUDA."""

from __future__ import annotations

import json
import math
from types import ModuleType

import pytest
import torch


def test_full_configs_are_the_releases(bench: ModuleType) -> None:
    from diffusers import MochiTransformer3DModel, WanTransformer3DModel

    mochi, wan = bench.SPECS["mochi"], bench.SPECS["wan"]
    assert mochi.full.latent == (12, 11, 60, 106) and (mochi.full.text_tokens, mochi.full.text_dim) == (
        256,
        4096,
    )
    assert wan.full.latent == (16, 21, 60, 104) and (wan.full.text_tokens, wan.full.text_dim) == (512, 4096)
    with torch.device("meta"):
        sizes = {
            "mochi": sum(p.numel() for p in MochiTransformer3DModel(**mochi.model).parameters()),
            "wan": sum(p.numel() for p in WanTransformer3DModel(**wan.model).parameters()),
        }
    assert 9.9e9 < sizes["mochi"] < 10.1e9  # Mochi 1: 10 B
    assert 1.35e9 < sizes["wan"] < 1.5e9  # Wan 2.1 "1.3B": 1.42 B with embeddings


def test_wan22_config_is_the_ti2v_5b_release(bench: ModuleType) -> None:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    spec = bench.SPECS["wan22"]
    assert spec.full.latent == (48, 31, 44, 80)  # 121 x 704 x 1280 through 16x16 / 4x
    assert (spec.inference_steps, spec.guidance, spec.flow_shift) == (50, 5.0, 5.0)
    assert spec.clean_frames == 1 and (spec.target_gb, spec.target_mode) == (24.0, "target_24gb")
    with torch.device("meta"):
        size = sum(p.numel() for p in WanTransformer3DModel(**spec.model).parameters())
        vae = AutoencoderKLWan(**spec.vae)
    assert 4.9e9 < size < 5.1e9  # "5B"
    assert (vae.config.z_dim, vae.config.scale_factor_spatial, vae.config.patch_size) == (48, 16, 2)


@pytest.mark.parametrize("backbone", ["mochi", "wan", "wan22"])
def test_tiny_run_covers_every_mode_inference_and_decode(
    bench: ModuleType, backbone: str, tmp_path, capsys
) -> None:
    argv = ["--tiny", "--device", "cpu", "--steps", "2", "--warmup", "1", "--inference-steps", "3"]
    assert bench.main([*argv, "--backbone", backbone, "--vae-decode", "--out-dir", str(tmp_path)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == [f"gpu_{backbone}_tiny.json"]
    result = json.loads((tmp_path / f"gpu_{backbone}_tiny.json").read_text())
    assert set(result["train"]) == set(bench.MODES)
    blocks = {m: r["checkpointed_blocks"] for m, r in result["train"].items()}
    assert blocks == {
        "bf16_ckpt_all": 3,
        "fp8_ckpt_all": 3,
        "bf16_ckpt_partial": 2,
        "bf16_swap_half": 3,
        "target_24gb": 3,
    }
    swapped = {m: r["swapped_blocks"] for m, r in result["train"].items()}
    assert swapped["bf16_swap_half"] == 1 and swapped["bf16_ckpt_all"] == 0
    # Mochi 38 of 48 and Wan 2.2 28 of 30 swapped at full size, capped at 2 of 3 here; Wan 2.1 1.3B none
    assert swapped["target_24gb"] == (0 if backbone == "wan" else 2)
    base = result["train"]["bf16_ckpt_all"]["losses"]
    assert result["train"]["bf16_swap_half"]["losses"] == base  # swapping changes no number
    for mode, r in result["train"].items():
        assert r["status"] == "ok", (mode, r)
        assert len(r["step_seconds"]) == 2 and r["seconds_per_step"] > 0
        assert len(r["losses"]) == 3 and all(math.isfinite(x) for x in r["losses"])
        assert r["adapter_dtypes"] == ["torch.float32"]
    assert result["train"]["fp8_ckpt_all"]["memory"]["fp8_base"] is True
    inf = result["inference"]
    assert inf["status"] == "ok" and inf["finite"] and inf["timed_steps"] == 3
    assert inf["seconds_per_video"] == pytest.approx(inf["seconds_per_step"] * 3)
    assert inf["guidance"] == bench.SPECS[backbone].guidance
    geo = bench.SPECS[backbone].tiny
    assert result["vae_decode"]["video_shape"] == [1, 3, 13, geo.height, geo.width]
    if backbone == "wan22":  # image-to-video training steps, checked against the 24 GB target
        assert all(r["clean_frames"] == 1 and r["fits_target"] is None for r in result["train"].values())
    text = capsys.readouterr().out
    assert "bf16_ckpt_partial" in text and "s/video" in text


def test_refuses_cleanly_without_cuda(bench: ModuleType, monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--out-dir", str(tmp_path)]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())
    assert bench.main(["--modes", "nope", "--tiny", "--device", "cpu"]) == 2
    assert bench.valid_mode("fp8_swap12") and not bench.valid_mode("fp8_swapx")
    assert bench.memory_config("fp8_swap12", 40).blocks_to_swap == 12


def test_running_out_of_memory_is_recorded_not_raised(bench: ModuleType) -> None:
    out: dict = {}
    with bench._measurement(out, torch.device("cpu")):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
    assert out == {
        "status": "oom",
        "error": "CUDA out of memory. Tried to allocate 2.00 GiB",
        "peak_gb": None,
    }
    with pytest.raises(ValueError), bench._measurement({}, torch.device("cpu")):
        raise ValueError("a bug is not an out-of-memory")


def test_fsdp_mode_shards_the_base_over_gloo_processes(bench: ModuleType, tmp_path) -> None:
    argv = [
        "--tiny",
        "--device",
        "cpu",
        "--backbone",
        "mochi",
        "--modes",
        "bf16_ckpt_all",
        "--skip-inference",
    ]
    assert (
        bench.main([*argv, "--steps", "1", "--warmup", "0", "--fsdp-gpus", "2", "--out-dir", str(tmp_path)])
        == 0
    )
    result = json.loads((tmp_path / "gpu_mochi_tiny.json").read_text())
    assert set(result["train"]) == {"bf16_ckpt_all", "fsdp2"}
    single, fsdp = result["train"]["bf16_ckpt_all"], result["train"]["fsdp2"]
    assert fsdp["status"] == "ok" and fsdp["world_size"] == 2 and fsdp["memory"]["fsdp"]
    # each rank holds its shard of every frozen weight: together the whole base, each about half
    held = fsdp["frozen_parameters_per_rank"]
    assert sum(held) == result["parameters"] and max(held) < 0.6 * result["parameters"]
    # the same clip on each rank and the same weights: the first step's loss is the single process's
    assert fsdp["losses"][0] == pytest.approx(single["losses"][0], rel=1e-3)
    assert fsdp["adapter_dtypes"] == ["torch.float32"]
