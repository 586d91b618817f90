"""Sampling: load a Mochi-architecture pipeline (toy bundle or real Mochi), pick adapters, generate."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dreamrelation.errors import UserError

TOY_BUNDLE = Path(__file__).resolve().parent.parent / "assets" / "toy-mochi"


def load_pipeline(path: str | Path | None = None, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """A ``MochiPipeline`` from a diffusers-format directory (default: the shipped toy bundle)."""
    from diffusers import MochiPipeline

    path = Path(path) if path else TOY_BUNDLE
    if not (path / "model_index.json").is_file():
        hint = " (run `dreamrelation toy pretrain` to rebuild the toy bundle)" if path == TOY_BUNDLE else ""
        raise UserError(f"{path}: not a diffusers MochiPipeline directory (no model_index.json){hint}")
    pipe = MochiPipeline.from_pretrained(path, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def video_geometry(pipe) -> tuple[int, int, int]:
    """Default ``(num_frames, height, width)``: the toy bundle's, else Mochi's 61 x 480 x 848."""
    info = getattr(pipe, "toy_info", None)
    if info is None and pipe.transformer.config.max_sequence_length <= 64:
        from dreamrelation.toy import world

        return world.NUM_FRAMES, world.HEIGHT, world.WIDTH
    return 61, 480, 848


@torch.no_grad()
def generate_videos(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int],
    num_inference_steps: int = 64,
    guidance_scale: float = 6.0,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
) -> list[np.ndarray]:
    """One uint8 ``(T, H, W, 3)`` video per (prompt, seed) pair, in order; the active adapters apply."""
    if len(prompts) != len(seeds):
        raise ValueError("prompts and seeds must have equal length")
    default_frames, default_height, default_width = video_geometry(pipe)
    videos = []
    for prompt, seed in zip(prompts, seeds, strict=True):
        out = pipe(
            prompt=prompt,
            negative_prompt="",
            num_frames=num_frames or default_frames,
            height=height or default_height,
            width=width or default_width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=torch.Generator().manual_seed(int(seed)),
            max_sequence_length=int(pipe.transformer.config.max_sequence_length),
            output_type="np",
        )
        videos.append((np.clip(out.frames[0], 0, 1) * 255).round().astype(np.uint8))
    return videos
