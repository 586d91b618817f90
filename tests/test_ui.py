"""The web UI: plain helpers (loss curve, validation listing, roles, cached generation) and one live app."""

from __future__ import annotations

import csv
import math
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import MochiTransformer3DModel
from PIL import Image

from dreamrelation.adapters.triplet import adapter_parameters, add_relation_adapters, save_adapters
from dreamrelation.core.roles import AdapterConfig
from dreamrelation.errors import InputWarning, UserError
from dreamrelation.ui import (
    LossLog,
    PipelineCache,
    adapter_roles_in,
    generate_one,
    list_validation_steps,
    loss_curve_image,
    loss_curve_png,
    model_defaults,
    parse_role_spec,
    parse_seeds,
    read_loss_csv,
    resolve_adapter_folder,
    role_spec,
    run_summary,
)
from dreamrelation.utils.media import save_png, write_video

PROMPT = "A red circle is high-fiving a blue square."


def write_loss_csv(folder: Path, n: int = 120) -> Path:
    """A ``loss.csv`` shaped like the trainer's: a noisy falling loss, a warm-up then constant lr."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "loss.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "choice", "loss", "mse", "mask_mse", "rcl", "lr", "seconds"])
        for i in range(1, n + 1):
            loss = 1.0 / math.sqrt(i) + 0.05 * rng.random()
            w.writerow([i, "relation", f"{loss:.6g}", loss, "", 0.1, 1e-4 * min(1.0, i / 10), 0.5])
    return folder / "loss.csv"


@pytest.fixture(scope="module")
def run_dir(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake training run: loss.csv, random relation/subject/output adapters, two validation steps."""
    run = tmp_path_factory.mktemp("run")
    write_loss_csv(run)
    transformer = MochiTransformer3DModel.from_pretrained(tiny_bundle / "transformer")
    add_relation_adapters(transformer, AdapterConfig(rank=4, alpha=4.0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for params in adapter_parameters(transformer).values():
            for p in params:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    save_adapters(transformer, run / "adapters", metadata={"inference_roles": ["relation", "output"]})
    frames = np.zeros((5, 16, 16, 3), np.uint8)
    for step in (20, 5):
        folder = run / "validation" / f"step_{step:06d}"
        write_video(folder / "00_seed0.mp4", frames, fps=8)
        write_video(folder / "01_seed1.mp4", frames, fps=8)
        if step == 20:
            save_png(folder / "contact_sheet.png", np.full((8, 8, 3), 200, np.uint8))
    (run / "validation" / "notes").mkdir()
    (run / "config.json").write_text('{"method": "dreamrelation"}')
    return run


# ----------------------------------------------------------------------------------------------
# plain helpers
# ----------------------------------------------------------------------------------------------


def test_read_loss_csv_keeps_numeric_columns(tmp_path: Path) -> None:
    log = read_loss_csv(write_loss_csv(tmp_path, n=30))
    assert log.steps == list(range(1, 31))
    assert "choice" not in log.columns and {"loss", "lr", "rcl"} <= set(log.columns)
    assert all(math.isnan(v) for v in log.columns["mask_mse"])  # blank cells
    assert read_loss_csv(tmp_path).columns["loss"] == log.columns["loss"]  # the run folder works too
    with pytest.raises(UserError, match="no loss log"):
        read_loss_csv(tmp_path / "missing")


def test_loss_curve_png(tmp_path: Path) -> None:
    write_loss_csv(tmp_path)
    path = loss_curve_png(tmp_path)
    assert path == tmp_path / "loss.png"
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (420, 760, 3)
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    assert (20, 80, 180) in colours and (200, 110, 20) in colours  # smoothed loss and lr lines drawn
    # few points, NaNs, no lr: still an image; no loss column: a message instead of a chart
    small = loss_curve_image(LossLog([1, 2, 3], {"loss": [1.0, math.nan, 0.5]}), width=300, height=200)
    assert small.size == (300, 200)
    assert loss_curve_image(LossLog([1], {"mse": [1.0]})).size == (760, 420)


def test_list_validation_steps_and_summary(run_dir: Path, tmp_path: Path) -> None:
    steps = list_validation_steps(run_dir)
    assert [s.step for s in steps] == [5, 20]
    assert steps[0].contact_sheet is None and steps[1].contact_sheet is not None
    assert [v.name for v in steps[1].videos] == ["00_seed0.mp4", "01_seed1.mp4"]
    assert list_validation_steps(tmp_path) == []
    summary = run_summary(run_dir)
    assert "120 logged steps" in summary and "dreamrelation" in summary and "2 step(s) (5 .. 20)" in summary


def test_roles_and_adapter_folders(run_dir: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    assert resolve_adapter_folder(run_dir) == run_dir / "adapters"
    assert resolve_adapter_folder(run_dir / "adapters") == run_dir / "adapters"
    assert resolve_adapter_folder("  ") is None
    with pytest.raises(UserError, match="no adapter files"):
        resolve_adapter_folder(tmp_path)
    roles, defaults = adapter_roles_in(run_dir)
    assert roles == ["output", "relation", "subject1", "subject2"] and defaults == ["relation", "output"]
    assert parse_role_spec("") is None and parse_role_spec("none") == {}
    assert parse_role_spec("relation=0.5, output") == {"relation": 0.5, "output": 1.0}
    spec = role_spec(roles, [True, True, False, False], [0.8, 1.0, 1.0, 1.0])
    assert spec == "output=0.8, relation=1" and parse_role_spec(spec) == {"output": 0.8, "relation": 1.0}
    assert role_spec(roles, [False] * 4, [1.0] * 4) == "none"
    assert model_defaults(tiny_bundle) == (32, 4.0)
    assert model_defaults(tmp_path) == (64, 6.0)


def test_generate_one_reuses_cached_pipeline(run_dir: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    cache = PipelineCache()
    first = generate_one(
        PROMPT,
        model=tiny_bundle,
        adapters=run_dir,
        roles="relation=0.5",
        steps=2,
        out_dir=tmp_path,
        cache=cache,
    )
    second = generate_one(
        PROMPT, model=tiny_bundle, adapters=None, steps="2", seed=1, out_dir=tmp_path, cache=cache
    )  # form values arrive as text
    assert cache.loads == 1 and tiny_bundle in cache
    assert first.video.suffix == ".mp4" and first.video.stat().st_size > 0 and first.sidecar.is_file()
    assert first.folder != second.folder and first.folder.parent == tmp_path
    assert [(a["role"], a["scale"]) for a in first.info["adapters"]] == [("relation", 0.5)]
    assert second.info["adapters"] == [] and second.info["seed"] == 1
    assert first.info["settings"]["steps"] == 2 and second.info["settings"]["steps"] == 2
    # the cached pipeline is left without adapters after each call
    assert not getattr(cache.get(tiny_bundle).transformer, "peft_config", None)
    with pytest.raises(UserError, match="empty prompt"):
        generate_one(" ", model=tiny_bundle, cache=cache)
    with pytest.raises(UserError, match="no adapters folder"):
        generate_one(PROMPT, model=tiny_bundle, roles="relation=1", cache=cache)
    before = sorted(tmp_path.iterdir())
    for kwargs, message in (
        ({"steps": 1}, "steps=1: must be at least 2"),  # was 'float division by zero'
        ({"seed": " "}, "no seed given"),
        ({"seed": "1.5"}, "seed '1.5': give whole numbers"),
        ({"seed": 2**64}, "must be between 0 and 2**63 - 1"),
        ({"num_frames": 0}, "num_frames=0: must be at least 1"),
    ):
        with pytest.raises(UserError, match=re.escape(message)):
            generate_one(PROMPT, model=tiny_bundle, out_dir=tmp_path, cache=cache, **kwargs)
    assert sorted(tmp_path.iterdir()) == before  # a failed request writes nothing


def test_parse_seeds_and_negative_prompt(tiny_bundle: Path, tmp_path: Path) -> None:
    assert parse_seeds("0, 1 7") == [0, 1, 7] and parse_seeds(3) == [3]
    drawn = parse_seeds("random, random")
    assert len(drawn) == 2 and all(0 <= s < 2**31 for s in drawn)
    with pytest.raises(UserError, match="at most 16"):
        parse_seeds(",".join(["1"] * 17))
    steps: list[tuple[int, int]] = []
    made = generate_one(
        PROMPT,
        model=tiny_bundle,
        seed="0, 1",
        steps=2,
        out_dir=tmp_path,
        negative_prompt="blurry",
        gif=True,
        on_step=lambda video, step: steps.append((video, step)),
    )
    assert steps == [(0, 1), (0, 2), (1, 1), (1, 2)]  # per-step progress of each video
    assert (
        len(made.videos) == 2 and len(made.gifs) == 2 and made.info["settings"]["negative_prompt"] == "blurry"
    )

    def cancel(video: int, step: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_one(PROMPT, model=tiny_bundle, seed="0, 1", steps=3, out_dir=tmp_path, on_step=cancel)


def test_generate_one_from_a_photo(tiny_wan22_bundle: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    """Image-to-video in the UI: the photo (a PIL image, as Gradio's ``gr.Image`` gives it) is fitted to the
    video's frame and recorded; a text-only model refuses it in one line and nothing is written."""
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 90, 3), dtype=np.uint8))
    with pytest.warns(InputWarning, match="the image"):
        made = generate_one(PROMPT, model=tiny_wan22_bundle, steps=2, out_dir=tmp_path, image=photo)
    settings = made.info["settings"]
    assert settings["image"]["size"] == [90, 40] and settings["image"]["fitted"] != "used as is"
    assert made.video.stat().st_size > 0
    before = sorted(tmp_path.iterdir())
    with pytest.raises(UserError, match="cannot take an image"):
        generate_one(PROMPT, model=tiny_bundle, steps=2, out_dir=tmp_path, image=photo)
    assert sorted(tmp_path.iterdir()) == before
    assert list(tmp_path.iterdir()) == [made.folder]  # the cancelled request left nothing


# ----------------------------------------------------------------------------------------------
# the live app
# ----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_app_generates_over_http(run_dir: Path, tiny_bundle: Path, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("gradio", reason="the web UI is optional: pip install 'dreamrelation[ui]'")
    from gradio_client import Client, handle_file

    from dreamrelation.ui import launch

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.chdir(tmp_path)
    app, url = launch(
        "127.0.0.1", _free_port(), default_model=tiny_bundle, default_run=run_dir, out_dir="ui", block=False
    )
    try:
        assert url.startswith("http://127.0.0.1:")
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        args = [str(tiny_bundle), str(run_dir), "relation=1, output=0.5", PROMPT, "", "3", 2, 4.0]
        video, sidecar, note, files, _ = client.predict(
            *args, None, None, None, None, True, None, api_name="/generate"
        )
        path = Path(video["video"] if isinstance(video, dict) else video)
        assert path.suffix == ".mp4" and path.stat().st_size > 0
        assert sidecar["seed"] == 3 and sidecar["settings"]["steps"] == 2
        assert {a["role"]: a["scale"] for a in sidecar["adapters"]} == {"relation": 1.0, "output": 0.5}
        assert "pipeline loaded" in note and len(list((tmp_path / "ui" / "generate").glob("*/*.mp4"))) == 1
        assert sorted(Path(f).suffix for f in files) == [".gif", ".json", ".mp4"]
        # bad input: one line each, and no output folder for a failed request
        for seeds, message in (("", "no seed given"), (str(2**70), "must be between 0 and 2**63 - 1")):
            with pytest.raises(Exception, match=re.escape(message)):
                client.predict(
                    *args[:5], seeds, 2, 4.0, None, None, None, None, False, None, api_name="/generate"
                )
        photo = save_png(tmp_path / "photo.png", np.zeros((16, 16, 3), dtype=np.uint8))
        with pytest.raises(Exception, match="cannot take an image"):  # the tiny Mochi is text-to-video only
            client.predict(
                *args, None, None, None, None, False, handle_file(str(photo)), api_name="/generate"
            )
        assert len(list((tmp_path / "ui" / "generate").iterdir())) == 1
        _, chart, summary, videos, sheets = client.predict(str(run_dir), api_name="/load_run")
        assert "120 logged steps" in summary and len(sheets) == 1 and len(videos) == 4
        with pytest.raises(Exception, match="not a training run folder"):
            client.predict(str(tmp_path / "ui"), api_name="/load_run")
    finally:
        app.close()
