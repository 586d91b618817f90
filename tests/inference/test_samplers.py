"""The ancestral flow-matching sampler: its step against the flow's definition in both conventions, the
clean latent reached with an exact model, and generation with it (per-video noise, restored scheduler)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from dreamrelation.backbones.loading import load_pipeline
from dreamrelation.errors import UserError
from dreamrelation.inference.generate import GenerationConfig, Sampling, generate_to_folder, generate_videos
from dreamrelation.inference.samplers import (
    FlowMatchAncestralScheduler,
    ancestral_scheduler,
    sampler_installed,
)

SHAPE = (2, 3, 2, 4, 4)
SIGMAS = np.array([1.0, 0.7, 0.35, 0.1])  # noise levels, as MochiPipeline passes its schedule


def velocity(clean: torch.Tensor, noise: torch.Tensor, invert: bool) -> torch.Tensor:
    """What the model predicts for this clean latent and noise: Mochi ``data - noise``, Wan ``noise - data``."""
    return clean - noise if invert else noise - clean


def scheduler(invert: bool) -> FlowMatchAncestralScheduler:
    sched = FlowMatchAncestralScheduler(invert_sigmas=invert)
    sched.set_timesteps(sigmas=SIGMAS.copy())
    return sched


@pytest.mark.parametrize("invert", [True, False], ids=["mochi", "wan"])
def test_step_noises_the_predicted_clean_latent_to_the_next_level(invert: bool) -> None:
    g = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    sched = scheduler(invert)
    sched.noise_generators = [torch.Generator().manual_seed(10 + i) for i in range(SHAPE[0])]
    level, next_level = SIGMAS[1], SIGMAS[2]
    sched._step_index = 1
    x = (1 - level) * clean + level * noise
    out = sched.step(velocity(clean, noise, invert), sched.timesteps[1], x).prev_sample
    fresh = torch.stack(
        [torch.randn(SHAPE[1:], generator=torch.Generator().manual_seed(10 + i)) for i in range(2)]
    )
    torch.testing.assert_close(out, (1 - next_level) * clean + next_level * fresh, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("invert", [True, False], ids=["mochi", "wan"])
def test_an_exact_model_ends_at_its_clean_latent_on_the_release_noise_levels(invert: bool) -> None:
    clean = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    sched = scheduler(invert)
    release = FlowMatchEulerDiscreteScheduler(invert_sigmas=invert)
    release.set_timesteps(sigmas=SIGMAS.copy())
    torch.testing.assert_close(sched.sigmas, release.sigmas)
    torch.testing.assert_close(sched.timesteps, release.timesteps)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(SHAPE, generator=g)
    for i, t in enumerate(sched.timesteps):
        level = float(SIGMAS[i])
        noise = (x - (1 - level) * clean) / level  # the noise this sample holds at its level
        x = sched.step(velocity(clean, noise, invert), t, x, generator=g).prev_sample
    torch.testing.assert_close(x, clean, rtol=1e-4, atol=1e-4)


def test_ancestral_counterparts_of_the_release_schedulers() -> None:
    mochi = FlowMatchEulerDiscreteScheduler(invert_sigmas=True, shift=1.0)
    assert ancestral_scheduler(mochi).config.invert_sigmas is True
    unipc = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    wan = ancestral_scheduler(unipc)
    assert not wan.config.invert_sigmas and wan.config.shift == 3.0
    with pytest.raises(ValueError, match="not a flow-matching scheduler"):
        ancestral_scheduler(UniPCMultistepScheduler())


@pytest.fixture(scope="module")
def pipe(tiny_bundle: Path):
    return load_pipeline(tiny_bundle)


def test_generation_is_per_video_and_restores_the_scheduler(pipe) -> None:
    release_scheduler = pipe.scheduler
    sampling = Sampling(steps=3, guidance=2.0, sampler="ancestral")
    prompts = ["A red star is chasing a blue circle.", "A green square is passing a pink heart."]
    together = generate_videos(pipe, prompts, [5, 6], sampling, batch_size=2)
    alone = [generate_videos(pipe, [p], [s], sampling)[0] for p, s in zip(prompts, [5, 6], strict=True)]
    for a, b in zip(together, alone, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert pipe.scheduler is release_scheduler
    release = generate_videos(pipe, prompts[:1], [5], Sampling(steps=3, guidance=2.0, sampler="release"))[0]
    assert not np.array_equal(release, alone[0])
    # the toy Mochi's default is the ancestral sampler
    default = generate_videos(pipe, prompts[:1], [5], Sampling(steps=3, guidance=2.0))[0]
    np.testing.assert_array_equal(default, alone[0])


def test_scheduler_restored_when_sampling_fails(pipe) -> None:
    release_scheduler = pipe.scheduler
    with pytest.raises(RuntimeError, match="stop"), sampler_installed(pipe, "ancestral", []):
        assert isinstance(pipe.scheduler, FlowMatchAncestralScheduler)
        raise RuntimeError("stop")
    assert pipe.scheduler is release_scheduler


def test_wan_samples_with_its_release_by_default_and_ancestral_on_request(
    tiny_wan_bundle: Path, tmp_path: Path
):
    def run(out: str, **kwargs):
        cfg = GenerationConfig(model=tiny_wan_bundle, prompts=["A red star"], steps=3, out_dir=tmp_path / out)
        for key, value in kwargs.items():
            setattr(cfg, key, value)
        result = generate_to_folder(cfg)
        return result.frames[0], json.loads(result.sidecars[0].read_text())["settings"]

    default, settings = run("default")
    assert settings["sampler"] == "release" and settings["scheduler"] == "UniPCMultistepScheduler"
    ancestral, settings = run("ancestral", sampler="ancestral")
    assert settings["sampler"] == "ancestral"
    assert not np.array_equal(default, ancestral)
    with pytest.raises(UserError, match="sampler='sde'"):
        run("bad", sampler="sde")
