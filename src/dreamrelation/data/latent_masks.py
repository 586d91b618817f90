"""Pixel-space subject masks -> latent-space masks matching Mochi's VAE (8x8 spatial, 6x causal temporal)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def latent_frame_count(num_frames: int, temporal: int = 6) -> int:
    """Latent frames for ``num_frames`` video frames (must be ``temporal * k + 1``)."""
    if num_frames < 1 or (num_frames - 1) % temporal:
        raise ValueError(
            f"{num_frames} frames: the VAE needs {temporal}k+1 frames (e.g. {temporal * 10 + 1})"
        )
    return (num_frames - 1) // temporal + 1


def latent_masks(pixel_masks: torch.Tensor, spatial: int = 8, temporal: int = 6) -> torch.Tensor:
    """(S, T, H, W) bool/float masks -> (S, F, h, w) float latent masks, F = (T - 1) / temporal + 1.

    Spatially a latent cell is foreground if any of its ``spatial x spatial`` pixels is (max-pool, so thin
    subjects survive; partial border cells count). Temporally the first frame is its own group and each
    following group of ``temporal`` frames is averaged, like the causal VAE's frame grouping.
    """
    if pixel_masks.ndim != 4:
        raise ValueError(
            f"expected (subjects, frames, height, width) masks, got shape {tuple(pixel_masks.shape)}"
        )
    s, t, h, w = pixel_masks.shape
    f = latent_frame_count(t, temporal)
    x = pixel_masks.float().reshape(s * t, 1, h, w)
    x = F.max_pool2d(x, kernel_size=spatial, stride=spatial, ceil_mode=True)
    x = x.reshape(s, t, x.shape[-2], x.shape[-1])
    rest = x[:, 1:].reshape(s, f - 1, temporal, x.shape[-2], x.shape[-1]).mean(dim=2)
    return torch.cat([x[:, :1], rest], dim=1)
