"""Samplers a pipeline can run with: its backbone's release sampler, or the flow-matching ancestral sampler.

* ``release``: the scheduler the backbone's release samples with (Mochi: inverted-sigma flow-matching Euler
  on the linear-quadratic schedule; Wan: flow-prediction UniPC) - a deterministic ODE solver.
* ``ancestral``: at each step the model's prediction of the clean latent is noised again to the next noise
  level with *fresh* noise, ``x_next = (1 - s_next) * x0_hat + s_next * eps_new``
  (:class:`FlowMatchAncestralScheduler`; Mochi: on the release's linear-quadratic noise levels; Wan: evenly
  spaced levels under its ``flow_shift``). Where a small model decides its layout badly from near pure noise
  (the toy bases: a subject drawn twice where it hedges between two directions of travel), re-drawing the
  noise each step lets later, better-informed steps revise that decision.

The fresh noise of video ``i`` comes from the same generator as its initial noise, after it, so a video
depends only on its prompt and seed, whatever batch it is generated in.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteSchedulerOutput

from dreamrelation.backbones.registry import model_profile
from dreamrelation.errors import UserError

SAMPLERS = ("release", "ancestral")


def resolve_sampler(pipe, sampler: str | None) -> str:
    """``sampler``, or the model's default when None (the toy Mochi: ancestral, else the release's);
    :class:`UserError` naming the choices for an unknown one."""
    name = sampler or model_profile(pipe).default_sampler(pipe)
    check_sampler(name)
    return name


def check_sampler(sampler: str) -> None:
    """:class:`UserError` unless ``sampler`` is one of :data:`SAMPLERS`."""
    if sampler not in SAMPLERS:
        raise UserError(f"sampler={sampler!r}: expected one of {', '.join(SAMPLERS)}")


class FlowMatchAncestralScheduler(FlowMatchEulerDiscreteScheduler):
    """Flow-matching ancestral sampling on :class:`FlowMatchEulerDiscreteScheduler`'s noise levels.

    Both of its conventions: with ``invert_sigmas`` (Mochi) a sigma is the share of data and the model predicts
    ``data - noise``; without it a sigma is the noise level and the model predicts ``noise - data``.
    (diffusers' own ``stochastic_sampling`` reads only the second.) ``noise_generators``: one CPU generator
    per video of the batch for the fresh noise; None: ``step``'s ``generator``.
    """

    noise_generators: Sequence[torch.Generator] | None = None

    def step(self, model_output, timestep, sample, *args, generator=None, return_dict=True, **kwargs):
        """One ancestral step: ``x0_hat`` from ``sample`` and the velocity, then noised to the next level."""
        if kwargs.get("per_token_timesteps") is not None:
            raise ValueError("FlowMatchAncestralScheduler: per-token timesteps are not supported")
        if self.step_index is None:
            self._init_step_index(timestep)
        sample = sample.float()
        velocity = model_output.float()
        sigma, sigma_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        if self.config.invert_sigmas:
            level, next_level = 1.0 - sigma, 1.0 - sigma_next
            clean = sample + level * velocity
        else:
            level, next_level = sigma, sigma_next
            clean = sample - level * velocity
        prev_sample = (1.0 - next_level) * clean + next_level * self._fresh_noise(sample, generator)
        self._step_index += 1
        prev_sample = prev_sample.to(model_output.dtype)
        if not return_dict:
            return (prev_sample,)
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev_sample)

    def _fresh_noise(self, sample: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Standard normal noise shaped like ``sample``: per video from ``noise_generators`` when set."""
        if self.noise_generators is None:
            noise = torch.randn(sample.shape, generator=generator, dtype=torch.float32)
        else:
            if len(self.noise_generators) != sample.shape[0]:
                raise ValueError(
                    f"{len(self.noise_generators)} noise generators for a batch of {sample.shape[0]} videos"
                )
            noise = torch.stack([torch.randn(sample.shape[1:], generator=g) for g in self.noise_generators])
        return noise.to(sample.device)


def ancestral_scheduler(scheduler) -> FlowMatchAncestralScheduler:
    """The ancestral counterpart of a pipeline's scheduler, on the same noise levels: Mochi's inverted-sigma
    Euler config as it is (the pipeline passes its linear-quadratic sigmas), Wan's UniPC as flow matching
    with its ``flow_shift``."""
    config = dict(scheduler.config)
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return FlowMatchAncestralScheduler.from_config(config, stochastic_sampling=False)
    if config.get("prediction_type") == "flow_prediction":
        return FlowMatchAncestralScheduler(
            num_train_timesteps=config.get("num_train_timesteps", 1000), shift=config.get("flow_shift") or 1.0
        )
    raise ValueError(f"no ancestral sampler for {type(scheduler).__name__}: not a flow-matching scheduler")


@contextmanager
def sampler_installed(pipe, sampler: str, generators: Sequence[torch.Generator]) -> Iterator[None]:
    """Within the block ``pipe`` samples with ``sampler`` (one of :data:`SAMPLERS`), the fresh noise of an
    ancestral sampler drawn from ``generators`` (one per video); the scheduler is restored afterwards."""
    check_sampler(sampler)
    if sampler == "release":
        yield
        return
    release = pipe.scheduler
    ancestral = ancestral_scheduler(release)
    ancestral.noise_generators = list(generators)
    pipe.scheduler = ancestral
    try:
        yield
    finally:
        pipe.scheduler = release
