"""The single-process trainer on a tiny, randomly initialised MochiTransformer3DModel."""

from __future__ import annotations

import csv
import math
import os
import signal

import pytest
import torch
from diffusers import MochiTransformer3DModel
from omegaconf import OmegaConf
from safetensors.torch import load_file
from tiny import TINY_TRANSFORMER

from dreamrelation.adapters.triplet import load_adapters
from dreamrelation.core.samples import TrainingSample
from dreamrelation.errors import UserError
from dreamrelation.training.config import PRESET_NAMES, OptimConfig, TrainConfig, preset
from dreamrelation.training.trainer import (
    batch_indices,
    collate,
    latest_checkpoint,
    lr_at,
    train_adapters,
)

TINY = TINY_TRANSFORMER


def tiny() -> MochiTransformer3DModel:
    torch.manual_seed(0)
    return MochiTransformer3DModel(**TINY)


def samples(n: int = 3, logvar: bool = False) -> list[TrainingSample]:
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        masks = torch.zeros(2, 3, 4, 4)
        masks[0, :, :2] = 1.0  # subject 1 on top, subject 2 at the bottom
        masks[1, :, 2:] = 0.5
        out.append(
            TrainingSample(
                latents=torch.randn(12, 3, 4, 4, generator=g),
                prompt_embeds=torch.randn(8, 32, generator=g),
                prompt_mask=torch.arange(8) < 6,
                masks=masks,
                latent_logvar=torch.full((12, 3, 4, 4), -4.0) if logvar else None,
                name=f"video{i}",
            )
        )
    return out


def small(cfg: TrainConfig, steps: int = 2) -> TrainConfig:
    cfg.optim.steps = steps
    cfg.optim.warmup_steps = 1
    cfg.optim.batch_size = 2
    cfg.optim.lr = 1e-2
    cfg.optim.checkpoint_every = 2
    return cfg


def trained_b(model: torch.nn.Module, role: str) -> bool:
    """LoRA B starts at zero (and weight decay keeps zero at zero): nonzero means the role was updated."""
    return any(p.any() for n, p in model.named_parameters() if f".lora_B.{role}." in n)


def test_lr_warmup_then_cosine() -> None:
    oc = OptimConfig(lr=1.0, warmup_steps=4, steps=14)
    assert [lr_at(s, oc) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert math.isclose(lr_at(9, oc), 0.5)  # half-way through the cosine part
    assert lr_at(14, oc) == pytest.approx(0.0, abs=1e-12)


def test_batches_walk_through_epochs_without_repeats() -> None:
    seen = [i for step in range(5) for i in batch_indices(step, 2, 5, seed=0)]
    assert sorted(seen[:5]) == list(range(5)) and sorted(seen[5:]) == list(range(5))
    assert seen == [i for step in range(5) for i in batch_indices(step, 2, 5, seed=0)]


def test_caption_dropout_zeroes_embedding_and_mask() -> None:
    batch = collate(
        samples(), [0, 1], torch.device("cpu"), torch.Generator().manual_seed(0), caption_dropout=1.0
    )
    assert not batch["prompt_embeds"].any() and not batch["prompt_mask"].any()
    kept = collate(
        samples(), [0, 1], torch.device("cpu"), torch.Generator().manual_seed(0), caption_dropout=0.0
    )
    assert kept["prompt_mask"].sum() == 12 and kept["latents"].shape == (2, 12, 3, 4, 4)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_placement_preset_trains(name: str, tmp_path) -> None:
    cfg = small(preset(name))
    model = tiny()
    result = train_adapters(model, samples(), cfg, tmp_path, progress=False)
    roles = list(cfg.adapter.placement)
    assert len(result.losses) == 2 and all(math.isfinite(x) for x in result.losses)
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == sorted(
        f"{r}.safetensors" for r in roles
    )
    if not cfg.hmt.enabled:
        assert result.choices == ["all", "all"] and result.parts["mask"] == [0.0, 0.0]

    def output(choice: str) -> set[str]:  # the paper's output adapter trains on every step unless told
        return {"output"} if choice in cfg.hmt.shared_on else set()

    expected = {
        "relation": {"relation", "subject1", "subject2"} | output("relation"),
        "subject1": {"subject1"} | output("subject1"),
        "subject2": {"subject2"} | output("subject2"),
        "all": set(roles),
    }
    trained = set().union(*(expected[c] for c in result.choices)) & set(roles)
    assert {r for r in roles if trained_b(model, r)} == trained, result.choices
    fresh = tiny()
    load_adapters(fresh, tmp_path / "adapters", cfg.adapter.inference_roles)


def test_subject_step_leaves_other_adapters_untouched(tmp_path) -> None:
    cfg = small(TrainConfig())
    cfg.hmt.probs = {"relation": 0.0, "subject1": 1.0, "subject2": 0.0}
    model = tiny()
    result = train_adapters(model, samples(), cfg, tmp_path, progress=False)
    assert result.choices == ["subject1", "subject1"]
    # inactive adapters get no gradient, hence no AdamW update and no weight decay
    assert {r: trained_b(model, r) for r in cfg.adapter.placement} == {
        "relation": False,
        "subject1": True,
        "subject2": False,
        "output": True,
    }
    relation_a = [p for n, p in model.named_parameters() if ".lora_A.relation." in n]
    torch.manual_seed(0)
    untouched = tiny()
    from dreamrelation.adapters.triplet import add_relation_adapters

    with torch.random.fork_rng():
        torch.manual_seed(cfg.optim.seed)
        add_relation_adapters(untouched, cfg.adapter)
    init_a = [p for n, p in untouched.named_parameters() if ".lora_A.relation." in n]
    assert all(torch.equal(a, b) for a, b in zip(relation_a, init_a, strict=True))


@pytest.mark.parametrize("name", ["dreamrelation", "output_relation_steps"])
def test_output_adapter_trains_on_the_steps_hmt_shared_on_names(name: str, tmp_path) -> None:
    cfg = small(preset(name))
    cfg.hmt.probs = {"relation": 0.0, "subject1": 0.5, "subject2": 0.5}  # subject steps only
    model = tiny()
    result = train_adapters(model, samples(), cfg, tmp_path, progress=False)
    assert set(result.choices) <= {"subject1", "subject2"}
    assert trained_b(model, "output") == (name == "dreamrelation")
    assert not trained_b(model, "relation")


def test_unknown_hmt_shared_on_choice_is_a_user_error(tmp_path) -> None:
    cfg = small(TrainConfig())
    cfg.hmt.shared_on = ["relation", "subject3"]
    with pytest.raises(UserError, match="hmt.shared_on"):
        train_adapters(tiny(), samples(), cfg, tmp_path, progress=False)


def test_resume_reproduces_an_uninterrupted_run(tmp_path) -> None:
    cfg = small(TrainConfig(), steps=6)
    data = samples(logvar=True)  # also exercises per-step latent sampling
    full = train_adapters(tiny(), data, cfg, tmp_path / "full", progress=False)

    def stop_at_3(step: int, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_adapters(tiny(), data, cfg, tmp_path / "cut", progress=False, callback=stop_at_3)
    assert latest_checkpoint(tmp_path / "cut").name == "step_000003.safetensors"
    ckpt = load_file(str(latest_checkpoint(tmp_path / "cut")))
    assert ckpt["rcl.pos"].numel() > 0 and any(k.startswith("optim.") for k in ckpt)

    resumed = train_adapters(tiny(), data, cfg, tmp_path / "cut", progress=False, resume=True)
    assert resumed.start_step == 3
    assert resumed.losses == full.losses and resumed.choices == full.choices
    for role in cfg.adapter.placement:
        a = load_file(str(tmp_path / "full" / "adapters" / f"{role}.safetensors"))
        b = load_file(str(tmp_path / "cut" / "adapters" / f"{role}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with open(tmp_path / "cut" / "loss.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))


def test_nan_loss_raises_user_error_and_keeps_last_good_checkpoint(tmp_path) -> None:
    cfg = small(TrainConfig(), steps=6)
    data = samples()

    def poison(step: int, loss: float) -> None:
        if step == 2:
            for s in data:
                s.latents.fill_(float("nan"))

    with pytest.raises(UserError, match="loss became nan"):
        train_adapters(tiny(), data, cfg, tmp_path, progress=False, callback=poison)
    assert latest_checkpoint(tmp_path).name == "step_000002.safetensors"
    # the good checkpoint still resumes once the data is fixed
    result = train_adapters(tiny(), samples(), cfg, tmp_path, progress=False, resume=True)
    assert result.start_step == 2 and len(result.losses) == 6


def test_accepts_an_omegaconf_structured_config(tmp_path) -> None:
    cfg = OmegaConf.structured(small(TrainConfig()))
    result = train_adapters(tiny(), samples(), cfg, tmp_path, progress=False)
    assert len(result.losses) == 2 and result.seconds_per_step > 0


def test_resume_refuses_a_different_adapter_config(tmp_path) -> None:
    train_adapters(tiny(), samples(), small(TrainConfig()), tmp_path, progress=False)
    with pytest.raises(UserError, match="adapter config"):
        train_adapters(tiny(), samples(), small(preset("q_kv")), tmp_path, progress=False, resume=True)


def test_missing_masks_is_a_user_error(tmp_path) -> None:
    data = samples()
    data[1].masks = None
    with pytest.raises(UserError, match="video1"):
        train_adapters(tiny(), data, small(TrainConfig()), tmp_path, progress=False)


def test_bf16_base_with_fp32_adapters_on_cpu(tmp_path) -> None:
    cfg = small(TrainConfig())
    cfg.mixed_precision = "bf16"
    model = tiny()
    result = train_adapters(model, samples(), cfg, tmp_path, progress=False)
    assert all(math.isfinite(x) for x in result.losses)
    lora = {n for n, _ in model.named_parameters() if ".lora_" in n}
    assert {p.dtype for n, p in model.named_parameters() if n in lora} == {torch.float32}
    assert {p.dtype for n, p in model.named_parameters() if n not in lora} == {torch.bfloat16}


def test_gradient_checkpointing_gives_the_same_run(tmp_path) -> None:
    runs = []
    for flag in (False, True):
        cfg = small(TrainConfig(), steps=3)
        cfg.gradient_checkpointing = flag
        model = tiny()
        runs.append(
            (train_adapters(model, samples(), cfg, tmp_path / str(flag), progress=False).losses, model)
        )
    assert runs[0][0] == runs[1][0]
    a, b = (dict(m.named_parameters()) for _, m in runs)
    assert all(torch.equal(a[n], b[n]) for n in a if ".lora_" in n)


def test_ctrl_c_finishes_the_step_saves_and_reraises(tmp_path) -> None:
    previous = signal.getsignal(signal.SIGINT)

    def press_ctrl_c(step: int, loss: float) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train_adapters(
            tiny(), samples(), small(TrainConfig(), steps=6), tmp_path, progress=False, callback=press_ctrl_c
        )
    assert latest_checkpoint(tmp_path).name == "step_000002.safetensors"
    assert signal.getsignal(signal.SIGINT) is previous


@pytest.mark.parametrize("shift", [1.0, 5.0])
def test_training_noise_levels_follow_optim_sigma_shift(shift: float) -> None:
    """The transformer sees the timesteps of the shifted draws (Mochi: (1 - sigma) * 1000, sigma shifted)."""
    from dreamrelation.training.losses import shift_sigmas
    from dreamrelation.training.trainer import compute_losses

    transformer = tiny()
    seen = {}
    transformer.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    cfg = TrainConfig()
    cfg.optim.sigma_shift = shift
    batch = collate(samples(2), [0, 1], torch.device("cpu"), [torch.Generator() for _ in range(2)], 0.0)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    compute_losses(transformer, batch, "relation", cfg, None, torch.Generator(), gens)
    uniform = torch.stack([torch.rand(1, generator=torch.Generator().manual_seed(i))[0] for i in range(2)])
    expected = (1 - shift_sigmas(uniform, shift)) * 1000
    torch.testing.assert_close(seen["timestep"].float(), expected, rtol=0, atol=1e-3)


def test_optim_sigma_shift_must_be_positive() -> None:
    from dreamrelation.training.config import check_optim_config

    with pytest.raises(UserError, match="optim.sigma_shift=0"):
        check_optim_config(OptimConfig(sigma_shift=0))
