"""Issue 15: every bad input a user tried ends in one clear line (or a recorded warning), no traceback, and
nothing already produced is lost. One test per row of the issue's table, plus kill -9 and a fuzz test."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from test_prepare_folder import TOY, _toy, _write

from dreamrelation.data.mask_io import write_colour_masks
from dreamrelation.data.prepare_folder import PrepareConfig, load_prepared, prepare_folder
from dreamrelation.errors import InputWarning, UserError
from dreamrelation.training.config import OptimConfig, check_optim_config
from dreamrelation.utils.io import RunLock, ensure_output_dir

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC}
    cmd = [sys.executable, "-m", "dreamrelation.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)


def _one_clear_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """The run failed with exit 2 and one ``error:`` line holding every fragment, without a traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert all(f in errors[0] for f in fragments), (fragments, errors[0])
    return errors[0]


TRAIN = ["optim.steps=1", "optim.warmup_steps=0", "adapter.rank=2", "contrastive.enabled=false"]


# --------------------------------------------------------------------------------------------- training


def test_train_on_a_raw_folder_prepares_it_like_prepare(tmp_path, tiny_bundle):
    """Rows 1-2: raw exemplar folders go through prepare's streaming decode and frame choice (35-frame
    videos included, which the VAE could not take whole) into OUT/prepared, reused on a re-run."""
    data, run = tmp_path / "data", tmp_path / "run"
    for i in range(2):
        _write(data, f"v{i}", _toy(60 + i, num_frames=35))
    result = _cli("train", str(data), *TRAIN, "--model", str(tiny_bundle), "--out", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((run / "prepared" / "manifest.json").read_text())
    assert sorted(manifest["videos"]) == ["v0", "v1"]
    assert all(e["source_frames"] == list(range(25)) for e in manifest["videos"].values())  # 8 fps = source
    assert (run / "adapters" / "relation.safetensors").is_file() and not (run / RunLock.FILE).exists()


def test_train_on_a_folder_with_a_bad_video_stops_before_training(tmp_path, tiny_bundle):
    data, run = tmp_path / "data", tmp_path / "run"
    _write(data, "good", _toy(62))
    _write(data, "nocaption", _toy(63), caption=False)
    result = _cli("train", str(data), *TRAIN, "--model", str(tiny_bundle), "--out", str(run))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "nocaption.txt: missing caption file" in result.stderr
    assert not (run / "checkpoints").exists()


@pytest.mark.parametrize("steps", [0, -5])
def test_zero_or_negative_steps_are_refused_before_anything_runs(tmp_path, steps):
    run = tmp_path / "run"
    result = _cli("train", str(tmp_path / "nowhere"), f"optim.steps={steps}", "--out", str(run))
    _one_clear_line(result, f"optim.steps={steps}", "at least 1")
    assert not run.exists()


def test_warm_up_longer_than_the_run_warns_with_the_fix():
    with pytest.warns(InputWarning, match=r"warmup_steps=200 >= optim.steps=20.*optim.warmup_steps=2"):
        check_optim_config(OptimConfig(steps=20, warmup_steps=200))
    with pytest.raises(UserError, match="optim.lr"):
        check_optim_config(OptimConfig(lr=0.0))


def test_a_run_folder_is_locked_and_a_stale_lock_is_reported(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        with RunLock(run):  # re-entrant in one process (the CLI locks, then the trainer)
            pass
        assert (run / RunLock.FILE).is_file()  # the inner exit did not release the outer lock
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from dreamrelation.utils.io import RunLock; RunLock({str(run)!r}).__enter__()",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": SRC},
        )
        assert other.returncode != 0 and "in use by another run" in other.stderr
    assert not (run / RunLock.FILE).exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / RunLock.FILE).write_text(f"{socket.gethostname()} {dead.pid}\n")
    with pytest.raises(UserError, match=rf"stale lock .*pid {dead.pid}.*rm .*\.lock"):
        RunLock(run).__enter__()


def test_a_second_train_on_a_locked_folder_gets_a_clear_error(tmp_path, tiny_bundle):
    data, run = tmp_path / "data", tmp_path / "run"
    _write(data, "v0", _toy(64))
    with RunLock(run):  # another process's lock: this test's pid is not the CLI's
        result = _cli("train", str(data), *TRAIN, "--model", str(tiny_bundle), "--out", str(run))
    _one_clear_line(result, str(run), "in use by another run")


# ------------------------------------------------------------------------------------------------ prepare


def test_caption_that_is_not_utf8_is_one_problem_and_the_good_video_is_prepared(tmp_path, tiny_bundle):
    src, out = tmp_path / "src", tmp_path / "out"
    _write(src, "good", _toy(70))
    _write(src, "latin1", _toy(71))
    (src / "latin1.txt").write_bytes("Un carr\xe9 rouge pousse un cercle.\n".encode("latin-1"))
    report = prepare_folder(src, out, tiny_bundle, PrepareConfig(**TOY), progress=False)
    assert report.prepared == ["good"]
    (problem,) = report.problems
    assert "latin1.txt: not UTF-8" in problem and "save the caption as UTF-8" in problem


def test_outputs_under_a_regular_file_fail_before_the_work(tmp_path, tiny_bundle):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match=r"is a file; choose another --out"):
        ensure_output_dir(blocker / "sub")
    src = tmp_path / "src"
    _write(src, "v0", _toy(72))
    _one_clear_line(
        _cli("prepare", str(src), str(blocker / "cache"), "--model", str(tiny_bundle)), "is a file"
    )
    result = _cli(
        "generate",
        "A red star is pushing a blue circle.",
        "--model",
        str(tiny_bundle),
        "--out",
        str(blocker / "g"),
    )
    _one_clear_line(result, str(blocker), "is a file")
    _one_clear_line(_cli("export", str(tmp_path), str(blocker / "x.safetensors")), "is a file")
    _one_clear_line(_cli("import", str(blocker), str(blocker / "imported")), "is a file")


def test_import_of_a_junk_pickle_is_one_line(tmp_path):
    junk = tmp_path / "model_2000.lora.pt"
    junk.write_bytes(b"junk" * 100)
    _one_clear_line(_cli("import", str(junk), str(tmp_path / "out")), str(junk), "refused to load")


def test_mask_track_of_another_length_is_resampled_with_a_recorded_warning(tmp_path, tiny_bundle):
    """10 mask PNGs for a 35-frame video: resampled in time (within the 4x bound), warned, recorded."""
    src, out = tmp_path / "src", tmp_path / "out"
    video = _toy(73, num_frames=35)
    _write(src, "v", video)
    write_colour_masks(src / "masks" / "v", video.masks[:, np.linspace(0, 34, 10).round().astype(int)])
    for extra in sorted((src / "masks" / "v").glob("*.png"))[10:]:
        extra.unlink()
    report = prepare_folder(src, out, tiny_bundle, PrepareConfig(**TOY, resize="pad"), progress=False)
    assert report.ok and report.prepared == ["v"]
    (warning,) = report.warnings
    assert "10 mask frames for 35 video frames; resampled in time" in warning
    assert json.loads((out / "manifest.json").read_text())["videos"]["v"]["warnings"] == [warning]
    again = prepare_folder(src, out, tiny_bundle, PrepareConfig(**TOY, resize="pad"), progress=False)
    assert again.skipped == ["v"] and again.warnings == [warning]  # an up-to-date video still says so


def _faststart_video(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    """An MP4 whose index (moov) comes first, so a file cut in half still opens and announces every frame."""
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


def test_a_video_missing_its_second_half_is_prepared_with_a_warning(tmp_path, tiny_bundle):
    src, out = tmp_path / "src", tmp_path / "out"
    video = _toy(74, num_frames=73)
    _write(src, "cut", video)
    _faststart_video(src / "cut.mp4", video.frames)
    data = (src / "cut.mp4").read_bytes()
    (src / "cut.mp4").write_bytes(data[: int(len(data) * 0.6)])
    report = prepare_folder(src, out, tiny_bundle, PrepareConfig(**TOY), progress=False)
    assert report.ok and report.prepared == ["cut"], report.problems
    (warning,) = report.warnings
    assert "cut.mp4: only" in warning and "of 73 frames decode (truncated file?)" in warning


def test_other_settings_never_drop_a_caches_samples(tmp_path, tiny_bundle):
    src, out = tmp_path / "src", tmp_path / "out"
    _write(src, "v0", _toy(75))
    assert prepare_folder(src, out, tiny_bundle, PrepareConfig(**TOY), progress=False).ok
    before = (out / "samples" / "v0.safetensors").read_bytes()
    with pytest.raises(UserError, match=r"num_frames 25 -> 37.*prepare into a new folder"):
        prepare_folder(src, out, tiny_bundle, PrepareConfig(**{**TOY, "num_frames": 37}), progress=False)
    assert (out / "samples" / "v0.safetensors").read_bytes() == before


def test_prepare_on_an_empty_folder_fails_and_writes_nothing(tmp_path, tiny_bundle):
    (tmp_path / "empty").mkdir()
    result = _cli("prepare", str(tmp_path / "empty"), str(tmp_path / "out"), "--model", str(tiny_bundle))
    assert result.returncode == 2 and "no videos" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_toy_render_then_prepare_reads_every_rendered_frame_once(tmp_path, tiny_bundle):
    """Row 13: `toy render` writes the toy world's 8 fps; `prepare` for a toy model samples at 8 fps."""
    data = tmp_path / "data"
    assert _cli("toy", "render", str(data), "--relation", "pushing", "--num", "1").returncode == 0
    report = prepare_folder(
        data, tmp_path / "out", tiny_bundle, PrepareConfig.for_model(tiny_bundle), progress=False
    )
    assert report.ok and not report.warnings, (report.problems, report.warnings)
    entry = json.loads((tmp_path / "out" / "manifest.json").read_text())["videos"]["exemplar000"]
    assert entry["source_frames"] == list(range(25)) and entry["source_fps"] == entry["clip_fps"] == 8


def test_upsampling_time_repeats_frames_with_a_warning(tmp_path, tiny_bundle):
    src = tmp_path / "src"
    _write(src, "v", _toy(76))  # 8 fps
    report = prepare_folder(
        src,
        tmp_path / "out",
        tiny_bundle,
        PrepareConfig(**{**TOY, "fps": 30, "num_frames": 25}),
        progress=False,
    )
    (warning,) = report.warnings
    assert "8 fps source sampled at 30 fps repeats" in warning and "--fps 8" in warning


def test_unknown_words_for_the_toy_model_are_named(tiny_bundle):
    from dreamrelation.backbones.loading import load_pipeline
    from dreamrelation.inference.generate import warn_unknown_words

    pipe = load_pipeline(tiny_bundle)
    with pytest.warns(InputWarning, match="no token for: bear, raccoon"):
        assert warn_unknown_words(pipe, ["A bear is high-fiving with a raccoon.", "A red star"]) == [
            "bear",
            "raccoon",
        ]
    assert warn_unknown_words(pipe, ["A red star is pushing a blue circle."]) == []


def test_cli_output_is_quiet_and_shows_per_step_progress(tmp_path, tiny_bundle):
    result = _cli(
        "generate",
        "A red star is pushing a blue circle.",
        "--model",
        str(tiny_bundle),
        "--steps",
        "2",
        "--out",
        str(tmp_path / "g"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Warning" not in result.stderr and "Loading pipeline components" not in result.stderr
    assert "video 1/1:" in result.stderr and "/2 [" in result.stderr  # tqdm's per-step bar
    verbose = _cli(
        "--verbose",
        "generate",
        "A red star",
        "--model",
        str(tiny_bundle),
        "--steps",
        "2",
        "--out",
        str(tmp_path / "v"),
    )
    assert verbose.returncode == 0 and "Loading pipeline components" in verbose.stderr


def test_one_sampling_step_on_mochi_is_one_line_and_leaves_no_folder(tmp_path, tiny_bundle):
    """The UI's Steps = 1 gave `float division by zero` (Mochi's sigma schedule needs two steps)."""
    out = tmp_path / "g"
    result = _cli("generate", "A red star", "--model", str(tiny_bundle), "--steps", "1", "--out", str(out))
    _one_clear_line(result, "steps=1", "must be at least 2")
    assert not out.exists()


# ----------------------------------------------------------------------------------------------- kill -9

_KILL_ON_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    import safetensors.torch as st
    calls, real = [0], st.save_file
    def dying_save(tensors, filename, metadata=None):
        calls[0] += 1
        if calls[0] == int(os.environ["KILL_ON_SAVE"]):
            with open(filename, "wb") as f:
                f.write(b"half a file")
            os.kill(os.getpid(), signal.SIGKILL)
        return real(tensors, filename, metadata=metadata)
    st.save_file = dying_save
    import dreamrelation.data.prepare_folder as pf, dreamrelation.training.trainer as tr
    pf.save_file = tr.save_file = dying_save
    sys.argv = ["dreamrelation", *sys.argv[1:]]
    from dreamrelation.cli import main
    main()
    """
)


def _cli_killed_on_save(n: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC, "KILL_ON_SAVE": str(n)}
    return subprocess.run(
        [sys.executable, "-c", _KILL_ON_SAVE, *args], capture_output=True, text=True, env=env
    )


def test_kill_9_during_a_checkpoint_write_then_resume(tmp_path, tiny_bundle):
    src, cache = tmp_path / "src", tmp_path / "cache"
    for i in range(2):
        _write(src, f"v{i}", _toy(80 + i))
    assert prepare_folder(src, cache, tiny_bundle, PrepareConfig(**TOY), progress=False).ok
    args = [
        "optim.steps=4",
        "optim.checkpoint_every=2",
        "optim.warmup_steps=0",
        "adapter.rank=2",
        "--model",
        str(tiny_bundle),
    ]
    killed = _cli_killed_on_save(2, "train", str(cache), *args, "--out", str(tmp_path / "run"))
    assert killed.returncode == -signal.SIGKILL
    ckpts = tmp_path / "run" / "checkpoints"
    (landed,) = ckpts.glob("step_*.safetensors")  # step 4's never landed
    assert int(landed.stem.removeprefix("step_")) == 2
    assert list(ckpts.glob(".*tmp*"))  # the half-written temp file a kill leaves behind
    blocked = _cli("train", str(cache), *args, "--out", str(tmp_path / "run"), "--resume")
    _one_clear_line(blocked, "stale lock", "rm ")  # the killed run's lock: reported with how to clear it
    (tmp_path / "run" / RunLock.FILE).unlink()
    resumed = _cli("train", str(cache), *args, "--out", str(tmp_path / "run"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(ckpts.glob(".*tmp*"))
    straight = _cli("train", str(cache), *args, "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0
    from safetensors.torch import load_file

    for role in ("relation", "output"):
        a = load_file(str(tmp_path / "run" / "adapters" / f"{role}.safetensors"))
        b = load_file(str(tmp_path / "straight" / "adapters" / f"{role}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_kill_9_during_prepare_then_rerun_redoes_nothing_finished(tmp_path, tiny_bundle):
    src, out = tmp_path / "src", tmp_path / "out"
    for i in range(3):
        _write(src, f"v{i}", _toy(90 + i))
    killed = _cli_killed_on_save(2, "prepare", str(src), str(out), "--model", str(tiny_bundle))
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in (out / "samples").glob("[!.]*.safetensors")] == ["v0.safetensors"]
    assert list((out / "samples").glob(".v1.*tmp*"))  # the half-written temp file the kill left
    stamp = (out / "samples" / "v0.safetensors").stat().st_mtime_ns
    report = prepare_folder(src, out, tiny_bundle, PrepareConfig.for_model(tiny_bundle), progress=False)
    assert report.ok and report.skipped == ["v0"] and report.prepared == ["v1", "v2"]
    assert (out / "samples" / "v0.safetensors").stat().st_mtime_ns == stamp
    assert [s.name for s in load_prepared(out)] == ["v0", "v1", "v2"] and not list(out.rglob(".*tmp*"))


# ------------------------------------------------------------------------------------------------- fuzz


def _corrupt(src: Path, rng: np.random.Generator, name: str) -> None:
    """One random corruption of video ``name``'s files."""
    files = sorted(p for p in src.rglob("*") if p.is_file() and name in str(p.relative_to(src)))
    target = files[rng.integers(len(files))]
    kind = rng.integers(7)
    if kind == 0:
        target.write_bytes(target.read_bytes()[: int(rng.integers(0, max(target.stat().st_size, 1)))])
    elif kind == 1:
        target.unlink()
    elif kind == 2:  # swap with another file of the same video
        other = files[rng.integers(len(files))]
        a, b = target.read_bytes(), other.read_bytes()
        target.write_bytes(b)
        other.write_bytes(a)
    elif kind == 3:
        (src / "masks" / name / "subjects.json").write_text(
            json.dumps({"subject1": [0, 0, 255], "subject2": [9, 9, 9]})
        )
    elif kind == 4:
        (src / "masks" / name / "subjects.json").write_text("{not json")
    elif kind == 5:
        target.write_bytes(bytes(rng.integers(0, 256, 300, dtype=np.uint8)))
    else:
        (src / f"{name}.txt").write_bytes(b"\xff\xfe\x00bad caption")


def test_fuzz_corrupted_folders_never_crash_and_keep_the_untouched_videos(tmp_path, tiny_bundle):
    """Seeded and bounded: 12 corrupted copies of a valid 3-video folder (colour masks with subjects.json);
    prepare never raises anything but a reported problem, prepares the untouched videos, and the cache
    reads back."""
    base = tmp_path / "base"
    for i in range(3):
        _write(base, f"v{i}", _toy(100 + i))
        (base / "masks" / f"v{i}" / "subjects.json").write_text(
            json.dumps({"subject1": [255, 0, 0], "subject2": [0, 255, 0]})
        )
    import shutil

    rng = np.random.default_rng(1234)
    cfg = PrepareConfig(**TOY)
    for case in range(12):
        src, out = tmp_path / f"src{case}", tmp_path / f"out{case}"
        shutil.copytree(base, src)
        broken = {f"v{i}" for i in rng.choice(3, size=int(rng.integers(1, 3)), replace=False)}
        for name in sorted(broken):
            _corrupt(src, rng, name)
        report = prepare_folder(
            src, out, tiny_bundle, cfg, progress=False
        )  # anything but UserError fails here
        untouched = sorted({"v0", "v1", "v2"} - broken)
        assert set(untouched) <= set(report.prepared), (case, broken, report.problems)
        assert all("\n" not in p for p in report.problems)
        if report.prepared:
            assert sorted(s.name for s in load_prepared(out)) == sorted(report.prepared)
