"""Pixel-space subject masks -> latent-space masks matching the backbone's VAE.

Geometry per backbone (see :mod:`dreamrelation.backbones.registry`): Mochi 8x8 spatial and 6x causal temporal
(6k+1 frames), Wan 2.1 8x8 and 4x (4k+1 frames), Wan 2.2 TI2V-5B 16x16 and 4x (4k+1 frames). The defaults
are Mochi's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dreamrelation.backbones.registry import get_backbone


def _geometry(backbone: Any, spatial: int, temporal: int) -> tuple[int, int]:
    if backbone is None:
        return spatial, temporal

    return get_backbone(backbone).mask_geometry


def latent_frame_count(num_frames: int, temporal: int = 6, backbone: Any = None) -> int:
    """Latent frames for ``num_frames`` video frames (must be ``temporal * k + 1``; ``backbone``, a name,
    model or pipeline, overrides ``temporal``)."""
    _, temporal = _geometry(backbone, 8, temporal)
    if num_frames < 1 or (num_frames - 1) % temporal:
        raise ValueError(
            f"{num_frames} frames: the VAE needs {temporal}k+1 frames (e.g. {temporal * 10 + 1})"
        )
    return (num_frames - 1) // temporal + 1


def latent_masks(
    pixel_masks: torch.Tensor, spatial: int = 8, temporal: int = 6, backbone: Any = None
) -> torch.Tensor:
    """(S, T, H, W) bool/float masks -> (S, F, h, w) float latent masks, F = (T - 1) / temporal + 1.

    ``backbone`` (a name, model or pipeline) overrides ``spatial`` and ``temporal`` with its VAE's geometry.

    Spatially a latent cell is foreground if any of its ``spatial x spatial`` pixels is (max-pool, so thin
    subjects survive; partial border cells count). Temporally the first frame is its own group and each
    following group of ``temporal`` frames is averaged, like the causal VAE's frame grouping.
    """
    if pixel_masks.ndim != 4:
        raise ValueError(
            f"expected (subjects, frames, height, width) masks, got shape {tuple(pixel_masks.shape)}"
        )
    spatial, temporal = _geometry(backbone, spatial, temporal)
    s, t, h, w = pixel_masks.shape
    f = latent_frame_count(t, temporal)
    x = pixel_masks.float().reshape(s * t, 1, h, w)
    x = F.max_pool2d(x, kernel_size=spatial, stride=spatial, ceil_mode=True)
    x = x.reshape(s, t, x.shape[-2], x.shape[-1])
    rest = x[:, 1:].reshape(s, f - 1, temporal, x.shape[-2], x.shape[-1]).mean(dim=2)
    return torch.cat([x[:, :1], rest], dim=1)
