"""One encoded training video: what ``data`` produces and ``training`` consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TrainingSample:
    """One training video, already encoded.

    ``latents`` (C, F, h, w): VAE latents normalised as the backbone's pipeline (Mochi 1 or Wan 2.1) expects
    (or the posterior mean when ``latent_logvar`` is given; then a latent is sampled every step).
    ``prompt_embeds`` (L, D) and ``prompt_mask`` (L,) from T5. ``masks`` (2, F, h, w): latent masks of
    subject 1 and 2 (needed for HMT).
    """

    latents: torch.Tensor
    prompt_embeds: torch.Tensor
    prompt_mask: torch.Tensor
    masks: torch.Tensor | None = None
    latent_logvar: torch.Tensor | None = None
    name: str = ""
