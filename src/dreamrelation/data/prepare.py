"""Turn videos, captions and subject masks into training samples for the relation adapters.

The same code serves the toy bundle, the real Mochi and the other registered backbones (Wan 2.1): latents
come from the pipeline's VAE and are normalised exactly as the pipeline de-normalises them before decoding;
prompts go through the pipeline's own ``encode_prompt`` (T5); pixel masks become latent masks (every
foreground pixel kept, frame groups of the VAE's temporal stride averaged). See
:mod:`dreamrelation.backbones.registry`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dreamrelation.backbones.registry import MOCHI, Backbone, get_backbone
from dreamrelation.core.samples import TrainingSample
from dreamrelation.data.latent_masks import latent_masks
from dreamrelation.errors import UserError


def _backbone(obj) -> Backbone:
    try:
        return get_backbone(obj)
    except ValueError:
        return MOCHI


def latent_normalisation(vae) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(mean, std, scaling_factor)`` of the VAE config (the backbone's convention), shaped to broadcast over
    ``(C, F, h, w)``: ``latent = (mu - mean) * scaling / std``."""
    return _backbone(vae).latent_normalisation(vae)


@torch.no_grad()
def encode_video(vae, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``(T, H, W, 3)`` -> normalised latent mean and log-variance ``(C, F, h, w)`` (fp32, CPU)."""
    param = next(vae.parameters())
    video = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1.0)
    video = video.permute(3, 0, 1, 2)[None].to(param.device, param.dtype)
    posterior = vae.encode(video).latent_dist
    mean, std, scaling = latent_normalisation(vae)
    latent = (posterior.mean[0].float().cpu() - mean) * scaling / std
    logvar = posterior.logvar[0].float().cpu() + 2 * torch.log(torch.tensor(scaling) / std)
    return latent, logvar


@torch.no_grad()
def encode_prompts(pipe, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """T5 embeddings ``(N, L, D)`` and masks ``(N, L)`` at the transformer's sequence length."""
    return _backbone(pipe).encode_prompts(pipe, prompts)


def null_prompt_for(pipe) -> tuple[torch.Tensor, torch.Tensor] | None:
    """What a dropped caption becomes in training, matching the unconditional input of the backbone's
    sampler: None (zeros) where the pipeline zeroes the empty negative prompt (Mochi), else the encoded
    empty prompt (Wan), as embedding ``(L, D)`` and mask ``(L,)``."""
    if _backbone(pipe).empty_prompt_zeroed:
        return None
    embeds, mask = encode_prompts(pipe, [""])
    return embeds[0], mask[0]


def prepare_samples(
    pipe,
    videos: Sequence[np.ndarray],
    captions: Sequence[str],
    masks: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
) -> list[TrainingSample]:
    """Encode videos (uint8 ``(T, H, W, 3)``), captions and masks (bool ``(2, T, H, W)``) into samples."""
    names = list(names) if names is not None else [f"video{i:03d}" for i in range(len(videos))]
    if not (len(videos) == len(captions) == len(masks) == len(names)):
        raise UserError("prepare: videos, captions and masks must come in equal numbers")
    embeds, prompt_masks = encode_prompts(pipe, captions)
    backbone = _backbone(pipe)
    samples = []
    for i, (frames, mask, name) in enumerate(zip(videos, masks, names, strict=True)):
        if mask.shape[1:] != frames.shape[:3]:
            raise UserError(f"{name}: masks {mask.shape[1:]} do not match the video {frames.shape[:3]}")
        latent, logvar = encode_video(pipe.vae, frames)
        samples.append(
            TrainingSample(
                latents=latent,
                latent_logvar=logvar,
                prompt_embeds=embeds[i],
                prompt_mask=prompt_masks[i],
                masks=latent_masks(torch.from_numpy(mask), backbone=backbone),
                name=name,
            )
        )
    return samples
