"""generate_to_folder on the tiny random toy bundle: files, sidecars, determinism, strengths, early errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import MochiTransformer3DModel

from dreamrelation.adapters.triplet import adapter_parameters, add_relation_adapters, save_adapters
from dreamrelation.backbones.loading import load_pipeline
from dreamrelation.core.roles import AdapterConfig
from dreamrelation.errors import UserError
from dreamrelation.inference.generate import GenerationConfig, generate_to_folder, guidance_values, read_jobs
from dreamrelation.inference.run import parse_roles

PROMPTS = ["A red circle is high-fiving a blue square.", "A bear is shaking hands with a raccoon."]


def make_adapters(transformer: torch.nn.Module, out: Path) -> Path:
    """Random (non-zero) relation triplet + output adapters on ``transformer``, saved to ``out``."""
    add_relation_adapters(transformer, AdapterConfig(rank=4, alpha=4.0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for params in adapter_parameters(transformer).values():
            for p in params:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    save_adapters(transformer, out, metadata={"method": "test", "inference_roles": ["relation", "output"]})
    return out


@pytest.fixture(scope="module")
def adapters(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    transformer = MochiTransformer3DModel.from_pretrained(tiny_bundle / "transformer")
    return make_adapters(transformer, tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="module")
def pipe(tiny_bundle: Path):
    return load_pipeline(tiny_bundle)


def run(tiny_bundle: Path, out: Path, pipe=None, **kwargs):
    kwargs.setdefault("steps", 2)
    kwargs.setdefault("prompts", PROMPTS[:1])
    kwargs.setdefault("adapters", None)
    return generate_to_folder(GenerationConfig(model=tiny_bundle, out_dir=out, **kwargs), pipe=pipe)


def test_generate_to_folder_writes_videos_sidecars_and_sheet(
    tiny_bundle: Path, adapters: Path, tmp_path: Path
) -> None:
    result = run(tiny_bundle, tmp_path / "out", adapters=adapters, prompts=PROMPTS, seeds=[7], gif=True)
    names = [p.name for p in result.videos]
    assert names[0].startswith("000_a-red-circle-is-high-fiving") and names[0].endswith("_seed7.mp4")
    assert names[1] == "001_a-bear-is-shaking-hands-with-a-raccoon_seed7.mp4"
    for video, sidecar, gif in zip(result.videos, result.sidecars, result.gifs, strict=True):
        assert video.stat().st_size > 0 and gif.stat().st_size > 0
        assert sidecar == video.with_suffix(".json")
    assert result.contact_sheet.is_file()
    assert result.frames[0].shape == (25, 64, 64, 3) and result.frames[0].dtype == np.uint8

    meta = json.loads(result.sidecars[1].read_text())
    assert meta["prompt"] == PROMPTS[1] and meta["seed"] == 7
    assert meta["model"] == str(tiny_bundle.resolve())
    assert [(a["role"], a["scale"]) for a in meta["adapters"]] == [("relation", 1.0), ("output", 1.0)]
    assert meta["adapters"][0]["file"] == str((adapters / "relation.safetensors").resolve())
    assert len(meta["adapters"][0]["sha256"]) == 64
    settings = meta["settings"]
    assert settings["steps"] == 2 and settings["guidance"] == 4.0  # toy default CFG
    assert settings["invert_sigmas"] and settings["negative_prompt_zeroed"]
    assert (settings["num_frames"], settings["height"], settings["width"]) == (25, 64, 64)
    assert meta["files"] == {"mp4": result.videos[1].name, "gif": result.gifs[1].name}
    manifest = json.loads(result.manifest.read_text())
    assert [v["prompt"] for v in manifest["videos"]] == PROMPTS


def test_same_seed_same_video_and_strengths_matter(
    tiny_bundle: Path, adapters: Path, pipe, tmp_path: Path
) -> None:
    first = run(tiny_bundle, tmp_path / "a", pipe, adapters=adapters, seeds=[3]).frames[0]
    again = run(tiny_bundle, tmp_path / "b", pipe, adapters=adapters, seeds=[3]).frames[0]
    np.testing.assert_array_equal(first, again)
    other_seed = run(tiny_bundle, tmp_path / "c", pipe, adapters=adapters, seeds=[4]).frames[0]
    assert not np.array_equal(first, other_seed)
    strong = run(
        tiny_bundle,
        tmp_path / "d",
        pipe,
        adapters=adapters,
        roles={"relation": 4.0, "output": 1.0},
        seeds=[3],
    ).frames[0]
    assert not np.array_equal(first, strong)
    off = run(
        tiny_bundle,
        tmp_path / "e",
        pipe,
        adapters=adapters,
        roles={"relation": 0, "output": 0},
        seeds=[3],
    )
    base = run(tiny_bundle, tmp_path / "f", pipe, seeds=[3])
    np.testing.assert_array_equal(off.frames[0], base.frames[0])
    assert not getattr(pipe.transformer, "peft_config", None)  # adapters loaded into a given pipe are removed


def test_guidance_schedule_runs_per_step(tiny_bundle: Path, pipe, tmp_path: Path) -> None:
    const = run(tiny_bundle, tmp_path / "a", pipe, guidance=4.0).frames[0]
    same = run(tiny_bundle, tmp_path / "b", pipe, guidance_schedule=[4.0, 4.0]).frames[0]
    np.testing.assert_array_equal(const, same)
    ramp = run(tiny_bundle, tmp_path / "c", pipe, guidance_schedule="linear:4->1.5")
    assert not np.array_equal(const, ramp.frames[0])
    assert json.loads(ramp.sidecars[0].read_text())["settings"]["guidance_schedule"] == [4.0, 1.5]


def test_missing_adapter_file_and_shape_mismatch_fail_early(
    tiny_bundle: Path, adapters: Path, tmp_path: Path
) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "relation.safetensors").write_bytes((adapters / "relation.safetensors").read_bytes())
    with pytest.raises(UserError, match=r"output\.safetensors"):
        run(tiny_bundle, tmp_path / "out", adapters=partial)
    with pytest.raises(UserError, match="nowhere"):
        run(tiny_bundle, tmp_path / "out", adapters=[tmp_path / "nowhere.safetensors"])
    with pytest.raises(UserError, match="model path not found"):
        generate_to_folder(GenerationConfig(PROMPTS, tmp_path / "no-model", out_dir=tmp_path / "out"))

    torch.manual_seed(0)
    other = MochiTransformer3DModel(
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=8,
        pooled_projection_dim=32,
        in_channels=12,
        text_embed_dim=32,
        time_embed_dim=16,
        max_sequence_length=32,
    )
    wrong = make_adapters(other, tmp_path / "wrong")
    with pytest.raises(UserError, match="features"):
        run(tiny_bundle, tmp_path / "out", adapters=wrong)
    assert not (tmp_path / "out").exists()  # nothing written before the checks


def test_prompt_files_roles_and_schedules(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("# comment\nA cat.\n\nA dog.\n")
    assert read_jobs(tmp_path / "p.txt", [1, 2]) == [
        ("A cat.", 1),
        ("A cat.", 2),
        ("A dog.", 1),
        ("A dog.", 2),
    ]
    (tmp_path / "p.csv").write_text('prompt,seed\nA cat.,5\n"A dog, running.",\n')
    assert read_jobs(tmp_path / "p.csv", [0]) == [("A cat.", 5), ("A dog, running.", 0)]
    (tmp_path / "bad.csv").write_text("text\nA cat.\n")
    with pytest.raises(UserError, match="prompt"):
        read_jobs(tmp_path / "bad.csv")
    with pytest.raises(UserError, match="not found"):
        read_jobs(tmp_path / "missing.txt")
    assert parse_roles(["relation=0.5,output", "subject1:2"]) == {
        "relation": 0.5,
        "output": 1.0,
        "subject1": 2.0,
    }
    assert guidance_values("linear:6->3", 4, 1.0) == [6.0, 5.0, 4.0, 3.0]
    assert guidance_values(None, 2, 6.0) == [6.0, 6.0]
    assert guidance_values("6,1", 2, 6.0)[1] == pytest.approx(1.0, abs=1e-5)
    for bad in ("6,0.5", "1,0.5", "6", "linear:6"):
        with pytest.raises(UserError):
            guidance_values(bad, 2, 6.0)


def test_cli_bodies_export_import_generate(tiny_bundle: Path, adapters: Path, tmp_path: Path) -> None:
    from dreamrelation.inference.run import cli_generation_config, run_export, run_generate, run_import

    exported = run_export(
        adapters, tmp_path / "genmo.safetensors", format="genmo", roles=["relation=1", "output"]
    )
    imported = run_import(
        exported.path, tmp_path / "imported", model=tiny_bundle
    )  # shapes checked (meta device)
    assert imported.roles and imported.inference_roles == ["direct"]
    with pytest.raises(UserError, match="features"):
        run_import(exported.path, tmp_path / "x", model=_other_bundle(tmp_path))
    (tmp_path / "prompts.csv").write_text("prompt,seed\nA cat is high-fiving a dog.,9\n")
    cfg = cli_generation_config(
        None,
        tmp_path / "prompts.csv",
        [tmp_path / "imported"],
        None,
        model=tiny_bundle,
        out_dir=tmp_path / "gen",
        steps=2,
    )
    result = run_generate(cfg)
    meta = json.loads(result.sidecars[0].read_text())
    assert meta["seed"] == 9 and [a["role"] for a in meta["adapters"]] == ["direct"]
    with pytest.raises(UserError, match="no prompts"):
        cli_generation_config(None, None, None, None, model=tiny_bundle)


def _other_bundle(tmp_path: Path) -> Path:
    """A directory with only a transformer config of another width (enough for the import check)."""
    other = MochiTransformer3DModel(
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=8,
        pooled_projection_dim=32,
        in_channels=12,
        text_embed_dim=32,
        time_embed_dim=16,
        max_sequence_length=32,
    )
    other.save_config(tmp_path / "other" / "transformer")
    return tmp_path / "other"


def test_group_offload_samples_the_same_video(tiny_bundle: Path, adapters: Path) -> None:
    """``offload="group"`` (diffusers' block-level group offloading, installed after the adapters as
    generate does) changes where weights live, not the video. The CPU is both devices here, so this checks
    the wiring - the hooks run around every block with the adapters inside them."""
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    from dreamrelation.inference.generate import (
        Sampling,
        enable_offload,
        generate_videos,
        load_adapter_choices,
        resolve_adapters,
    )

    videos = []
    for mode in ("none", "group"):
        pipe = load_pipeline(tiny_bundle)
        load_adapter_choices(pipe, resolve_adapters(adapters, {"relation": 1.0, "output": 1.0}))
        enable_offload(pipe, mode, "cpu")
        assert _is_group_offload_enabled(pipe.transformer) == (mode == "group")
        videos.append(generate_videos(pipe, PROMPTS[:1], [3], Sampling(2))[0])
    np.testing.assert_array_equal(videos[0], videos[1])
    with pytest.raises(UserError, match="choose one of none, model, group, sequential"):
        enable_offload(pipe, "blocks", "cpu")
