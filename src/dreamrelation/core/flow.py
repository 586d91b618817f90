"""The rectified-flow conventions of the backbones' samplers (used by the registry and the losses)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

NUM_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class FlowConvention:
    """How a backbone's sampler reads a rectified flow ``z_sigma = (1 - sigma) z + sigma eps``.

    ``timestep_is_noise``: the model is fed ``sigma * 1000`` (Wan, FLUX) instead of ``(1 - sigma) * 1000``
    (Mochi). ``velocity_to_data``: the model predicts ``z - eps`` (Mochi) instead of ``eps - z`` (Wan's
    ``flow_prediction``: the scheduler takes ``x0 = x - sigma * v``).
    """

    timestep_is_noise: bool = False
    velocity_to_data: bool = True

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Model timestep for noise level ``sigma``."""
        return (sigma if self.timestep_is_noise else 1.0 - sigma) * NUM_TRAIN_TIMESTEPS

    def noise_level(self, timestep: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`timestep`."""
        t = timestep / NUM_TRAIN_TIMESTEPS
        return t if self.timestep_is_noise else 1.0 - t

    def target(self, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Velocity the model is trained to predict."""
        return z - eps if self.velocity_to_data else eps - z


#: Mochi / genmo: timestep ``(1 - sigma) * 1000``, target ``z - eps`` (the default everywhere).
MOCHI_FLOW = FlowConvention()
