import pytest
from diffusers import MochiPipeline

from dreamrelation.adapters.triplet import active_roles
from dreamrelation.errors import UserError
from dreamrelation.evaluation.toy_study import render_exemplars
from dreamrelation.training.config import preset
from dreamrelation.training.monitor import TrainingMonitor
from dreamrelation.training.trainer import lr_at, train_adapters


def _cfg(**monitor):
    cfg = preset("dreamrelation")
    cfg.optim.steps, cfg.optim.batch_size, cfg.optim.warmup_steps = 4, 2, 1
    cfg.adapter.rank, cfg.adapter.alpha = 4, 4.0
    for key, value in monitor.items():
        setattr(cfg.monitor, key, value)
    return cfg


def test_monitor_logs_scalars_and_writes_validation_samples(tiny_bundle, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pipe = MochiPipeline.from_pretrained(tiny_bundle)
    pipe.set_progress_bar_config(disable=True)
    samples = render_exemplars(pipe, "pushing", 2, seed=0).samples
    cfg = _cfg(
        tensorboard=True,
        validate_every=2,
        prompts=["A red star is pushing a blue circle."],
        num_inference_steps=2,
    )
    monitor = TrainingMonitor(cfg, tmp_path, pipe=pipe)
    result = train_adapters(pipe.transformer, samples, cfg, tmp_path, progress=False, callback=monitor)
    monitor.close()
    for step in (2, 4):
        folder = tmp_path / "validation" / f"step_{step:06d}"
        assert (folder / "00_seed0.mp4").stat().st_size > 0 and (folder / "contact_sheet.png").is_file()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    lrs = [e.value for e in events.Scalars("train/lr")]
    assert losses == pytest.approx(result.losses, rel=1e-6)
    assert lrs == pytest.approx([lr_at(s, cfg.optim) for s in range(4)], rel=1e-6)
    assert active_roles(pipe.transformer)  # training left adapters active (the trainer re-sets them per step)


def test_validation_without_prompts_or_pipeline_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="monitor.prompts"):
        TrainingMonitor(_cfg(validate_every=2), tmp_path, pipe=object())
    with pytest.raises(UserError, match="pipeline"):
        TrainingMonitor(_cfg(validate_every=2, prompts=["x"]), tmp_path, pipe=None)
    assert TrainingMonitor(_cfg(), tmp_path).writer is None  # nothing configured: nothing opened
