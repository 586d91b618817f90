"""The toy backbone: a genuine diffusers Mochi stack (VAE, transformer, T5, tokenizer) at CPU size.

The bundle is saved as a diffusers-format directory that ``diffusers.MochiPipeline.from_pretrained``
loads, so the toy model and the real Mochi 1 go through the same code everywhere else.

The toy VAE is trained to reproduce a fixed, *analytic* latent space (see :func:`analytic_latents`):
the colour of each 4x4-pixel sub-cell at every 6th frame (the keyframes the causal VAE keeps), packed
into Mochi's 12 latent channels per 8x8 cell. That makes the VAE trainable in minutes on a CPU and lets
the transformer pretrain on latents computed without the VAE.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SPATIAL_FACTOR = 8  # Mochi VAE: 8x8 pixels per latent cell (hard-coded in diffusers' MochiPipeline)
TEMPORAL_FACTOR = 6  # 6 frames per latent frame, the first frame alone
LATENT_CHANNELS = 12
SUBCELL = 4  # analytic latent: colour of 4x4 sub-cells, 2x2 of them per latent cell
MAX_SEQUENCE_LENGTH = 32

_SPECIAL = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,'-!?"


@dataclass
class ToyBackboneConfig:
    """Sizes of the toy Mochi stack. Defaults: a customization step well under a second on 2 CPU cores."""

    vae_encoder_channels: list[int] = field(default_factory=lambda: [32, 32, 64, 128])
    vae_decoder_channels: list[int] = field(default_factory=lambda: [32, 64, 64, 128])
    vae_layers_per_block: list[int] = field(default_factory=lambda: [1, 1, 1, 1, 1])
    num_layers: int = 6
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    patch_size: int = 2
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    time_embed_dim: int = 64


def toy_words() -> list[str]:
    """Every word of the toy world's captions (articles, colours, shapes, relation phrases)."""
    from dreamrelation.toy import world

    words = {"a", "an", "is", "person", "with", *world.COLOURS, *world.SHAPES}
    for relation in world.RELATIONS.values():
        words.update(relation.phrase.split())
    return sorted(words)


def toy_vocabulary(words: list[str]) -> list[tuple[str, float]]:
    """A unigram vocabulary: whole toy-world words first, then single characters for unknown words."""
    pieces: dict[str, float] = {}
    for word in words:
        for variant in {word, word.lower(), word.capitalize()}:
            pieces.setdefault("\u2581" + variant, -1.0)
    vocab = list(_SPECIAL) + sorted(pieces.items())
    vocab += [("\u2581", -5.0)] + [(c, -10.0) for c in _CHARS]
    return vocab


def build_tokenizer(words: list[str]):
    """A T5 tokenizer built in code from the toy world's words (no download)."""
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=toy_vocabulary(words), extra_ids=0)


def build_text_encoder(vocab_size: int, cfg: ToyBackboneConfig, seed: int = 0):
    """A small randomly initialised ``T5EncoderModel`` (frozen: the transformer learns to read it)."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size,
        d_model=cfg.text_dim,
        d_kv=cfg.text_dim // cfg.text_heads,
        d_ff=cfg.text_dim * 2,
        num_layers=cfg.text_layers,
        num_heads=cfg.text_heads,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval()


def build_vae(cfg: ToyBackboneConfig, latents_mean=None, latents_std=None):
    """A small ``AutoencoderKLMochi`` (8x8 spatial, 6x temporal compression to 12 channels, like Mochi's)."""
    from diffusers import AutoencoderKLMochi

    return AutoencoderKLMochi(
        encoder_block_out_channels=tuple(cfg.vae_encoder_channels),
        decoder_block_out_channels=tuple(cfg.vae_decoder_channels),
        layers_per_block=tuple(cfg.vae_layers_per_block),
        add_attention_block=(False,) * len(cfg.vae_layers_per_block),
        latents_mean=tuple(latents_mean if latents_mean is not None else [0.0] * LATENT_CHANNELS),
        latents_std=tuple(latents_std if latents_std is not None else [1.0] * LATENT_CHANNELS),
    )


def build_transformer(cfg: ToyBackboneConfig, seed: int = 0):
    """A small ``MochiTransformer3DModel`` (same class and attention layout as Mochi 1's 10B DiT)."""
    from diffusers import MochiTransformer3DModel

    torch.manual_seed(seed)
    return MochiTransformer3DModel(
        patch_size=cfg.patch_size,
        num_attention_heads=cfg.num_attention_heads,
        attention_head_dim=cfg.attention_head_dim,
        num_layers=cfg.num_layers,
        pooled_projection_dim=cfg.text_dim,
        in_channels=LATENT_CHANNELS,
        text_embed_dim=cfg.text_dim,
        time_embed_dim=cfg.time_embed_dim,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
    )


def build_scheduler():
    """Mochi's sampler: flow-matching Euler with inverted sigmas (timestep = (1 - sigma) * 1000)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(invert_sigmas=True)


def analytic_latents(video: torch.Tensor) -> torch.Tensor:
    """The toy latent of videos ``(B, 3, T, H, W)`` in [-1, 1] -> ``(B, 12, F, H/8, W/8)``.

    Latent frame ``i`` is the keyframe ``6 i`` (frame 0 alone, then the last frame of each group of 6);
    each 8x8 cell holds the mean colour of its 2x2 sub-cells of 4x4 pixels, channel ``c*4 + 2*dy + dx``.
    """
    b, c, t, h, w = video.shape
    if (t - 1) % TEMPORAL_FACTOR or h % SPATIAL_FACTOR or w % SPATIAL_FACTOR:
        raise ValueError(f"video of {t} frames {h}x{w}: frames must be 6k+1 and sizes multiples of 8")
    keyframes = video[:, :, ::TEMPORAL_FACTOR]  # (B, 3, F, H, W)
    f = keyframes.shape[2]
    pooled = F.avg_pool2d(keyframes.transpose(1, 2).reshape(b * f, c, h, w), SUBCELL)  # (BF, 3, H/4, W/4)
    packed = F.pixel_unshuffle(pooled, 2)  # (BF, 12, H/8, W/8), channel = c*4 + 2*dy + dx
    return packed.reshape(b, f, LATENT_CHANNELS, h // SPATIAL_FACTOR, w // SPATIAL_FACTOR).transpose(1, 2)


def analytic_decode(latents: torch.Tensor) -> torch.Tensor:
    """The reference inverse of :func:`analytic_latents`: ``(B, 12, F, h, w)`` -> ``(B, 3, 6(F-1)+1, 8h, 8w)``.

    Sub-cell colours are upsampled (nearest) and the frames between keyframes linearly interpolated; the
    trained VAE decoder should do at least this well (it can also sharpen edges).
    """
    b, _, f, h, w = latents.shape
    cells = F.pixel_shuffle(latents.transpose(1, 2).reshape(b * f, LATENT_CHANNELS, h, w), 2)
    keyframes = F.interpolate(cells, scale_factor=SUBCELL, mode="nearest")
    keyframes = keyframes.reshape(b, f, 3, h * SPATIAL_FACTOR, w * SPATIAL_FACTOR).transpose(1, 2)
    frames = [keyframes[:, :, :1]]
    weights = torch.arange(1, TEMPORAL_FACTOR + 1, dtype=latents.dtype).view(1, 1, -1, 1, 1) / TEMPORAL_FACTOR
    for i in range(1, f):
        prev, nxt = keyframes[:, :, i - 1 : i], keyframes[:, :, i : i + 1]
        frames.append(prev + (nxt - prev) * weights)
    return torch.cat(frames, dim=2)


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` or ``(B, T, H, W, 3)`` -> float ``(B, 3, T, H, W)`` in [-1, 1]."""
    x = torch.from_numpy(np.asarray(frames)).float() / 127.5 - 1.0
    if x.ndim == 4:
        x = x[None]
    return x.permute(0, 4, 1, 2, 3).contiguous()


def tensor_to_frames(video: torch.Tensor) -> np.ndarray:
    """float ``(3, T, H, W)`` in [-1, 1] -> uint8 ``(T, H, W, 3)``."""
    x = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return x.permute(1, 2, 3, 0).cpu().numpy()


def save_bundle(
    out_dir: Path, *, vae, transformer, text_encoder, tokenizer, info: dict | None = None
) -> None:
    """Write a diffusers-format MochiPipeline directory (``model_index.json`` + one folder per part)."""
    from diffusers import MochiPipeline

    pipe = MochiPipeline(
        scheduler=build_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        force_zeros_for_empty_prompt=True,
    )
    out_dir = Path(out_dir)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    if info is not None:
        (out_dir / "toy_info.json").write_text(json.dumps(info, indent=2))


def config_dict(cfg: ToyBackboneConfig) -> dict:
    """The backbone sizes as a plain dict (recorded in the bundle's ``toy_info.json``)."""
    return asdict(cfg)
