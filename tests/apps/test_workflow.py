"""The web UI's training-run bookkeeping without a browser: the state a run folder is in (from its job file,
its process and its log), and the Train tab's refresh, which must not miss a change that happens while it
reads the folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dreamrelation.apps import workflow
from dreamrelation.apps.workflow import JOB_FILE, LOG_FILE, run_state


def _fake_run(run: Path, pid: int, log: str, steps_logged: int, checkpoint: bool = True) -> None:
    """A run folder as ``start_training`` and the trainer leave it."""
    run.mkdir(parents=True, exist_ok=True)
    (run / JOB_FILE).write_text(json.dumps({"pid": pid, "steps": 10}))
    (run / LOG_FILE).write_text(log)
    rows = [f"{i + 1},0.5,0.4,0.1,0.0" for i in range(steps_logged)]
    (run / "loss.csv").write_text("\n".join(["step,loss,mse,mask_mse,rcl", *rows]) + "\n")
    if checkpoint:
        (run / "checkpoints").mkdir(exist_ok=True)
        (run / "checkpoints" / "step_000003.safetensors").write_bytes(b"x")


def _ended_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_run_states_follow_the_process_and_its_last_line(tmp_path: Path) -> None:
    assert run_state(tmp_path / "empty").state == "new"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _fake_run(tmp_path / "a", sleeper.pid, "train: 30%\ninterrupted: step 3 saved\n", 3)
        running = run_state(tmp_path / "a")
        assert (running.state, running.step, running.total) == ("running", 3, 10)
        assert running.message.startswith("interrupted")  # printed, but the process has not exited yet
    finally:
        sleeper.kill()
        sleeper.wait()
    stopped = run_state(tmp_path / "a")
    assert (stopped.state, stopped.step) == ("stopped", 3)
    _fake_run(tmp_path / "b", _ended_pid(), "train: 100%\nadapters: /x/adapters\n", 10)
    assert run_state(tmp_path / "b").state == "finished"
    _fake_run(tmp_path / "c", _ended_pid(), "error: out of memory\n", 2, checkpoint=False)
    failed = run_state(tmp_path / "c")
    assert (failed.state, failed.message) == ("failed", "out of memory")


def test_stop_refuses_a_run_that_is_not_running(tmp_path: Path) -> None:
    from dreamrelation.errors import UserError

    _fake_run(tmp_path / "a", _ended_pid(), "adapters: /x\n", 10)
    with pytest.raises(UserError, match="no training is running there"):
        workflow.stop_training(tmp_path / "a")


def test_train_tab_refresh_sees_a_process_that_ends_while_the_folder_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The training process exits between the state being read and the refresh finishing: the next timer
    tick must still show "stopped" (the page used to stay at "running" for good)."""
    gr = pytest.importorskip("gradio", reason="the web UI is optional: pip install 'dreamrelation[ui]'")
    from dreamrelation import ui

    run = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    _fake_run(run, sleeper.pid, "interrupted: step 3 saved\n", 3)
    listed = ui.list_validation_steps

    def process_exits_meanwhile(path):  # load_run reads the validation samples after the state
        sleeper.kill()
        sleeper.wait()
        return listed(path)

    monkeypatch.setattr(ui, "list_validation_steps", process_exits_meanwhile)
    cb = ui._Callbacks(gr, ui.PipelineCache(), tmp_path / "out")
    try:
        first = cb.load_run(str(run))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert "running: step 3/10" in first[0]
    monkeypatch.setattr(ui, "list_validation_steps", listed)
    update = cb.tick(str(run))
    assert "stopped: step 3/10" in update[0]
    assert cb.tick(str(run)) == (gr.skip(),) * 5  # then nothing is sent until the folder changes again
