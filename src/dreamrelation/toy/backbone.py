"""The toy backbones: a genuine diffusers Mochi (or Wan 2.1) stack - VAE, transformer, T5, tokenizer - at
CPU size.

A bundle is saved as a diffusers-format directory that ``MochiPipeline.from_pretrained`` (or
``WanPipeline.from_pretrained``) loads, so the toy model and the real backbone go through the same code
everywhere else. ``ToyBackboneConfig.architecture`` picks the stack: ``mochi`` (the shipped bundle:
``AutoencoderKLMochi``, ``MochiTransformer3DModel``, ``T5EncoderModel``) or ``wan``
(``AutoencoderKLWan``, ``WanTransformer3DModel``, ``UMT5EncoderModel``, flow-prediction UniPC).

The toy VAE is trained to reproduce a fixed, *analytic* latent space (see :func:`analytic_latents`):
the colour of each 4x4-pixel sub-cell at every keyframe (every 6th frame for Mochi, every 4th for Wan: the
frames the causal VAE keeps), packed into 12 latent channels per 8x8 cell (Wan 2.2: 48 channels per 16x16
cell, the same sub-cells). That makes the VAE trainable in minutes on a CPU and lets the transformer
pretrain on latents computed without the VAE.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dreamrelation.backbones.registry import get_backbone
from dreamrelation.toy import world

SPATIAL_FACTOR = 8  # Mochi and Wan VAEs: 8x8 pixels per latent cell (hard-coded in diffusers' MochiPipeline)
TEMPORAL_FACTOR = 6  # Mochi: 6 frames per latent frame, the first frame alone
TEMPORAL_FACTORS = {"mochi": 6, "wan": 4, "wan22": 4}
ARCHITECTURES = tuple(TEMPORAL_FACTORS)  # the toy world's backbones (wan22: Wan 2.2 TI2V-5B's layout)
LATENT_CHANNELS = 12
WAN22_LATENT_CHANNELS = 48  # the Wan 2.2 VAE: 16x16 pixels (2x2 patches of 8x8) per cell, 48 channels
WAN22_SPATIAL_FACTOR = 16
SUBCELL = 4  # analytic latent: colour of 4x4 sub-cells, 2x2 of them per latent cell
MAX_SEQUENCE_LENGTH = 32

_SPECIAL = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,'-!?"


@dataclass
class ToyBackboneConfig:
    """Sizes of the toy stack. Defaults: a customization step well under a second on 2 CPU cores.

    ``architecture``: ``mochi``, ``wan`` or ``wan22`` (Wan 2.2 TI2V-5B's configuration: residual
    patchified VAE with 16x16 spatial compression to 48 channels, ``expand_timesteps``). The
    ``vae_*_channels`` / ``vae_layers_per_block`` sizes are the Mochi VAE's; ``wan_vae_base_dim`` and
    ``wan_ffn_dim`` size the Wan VAE and feed-forward layers.
    """

    architecture: str = "mochi"
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
    # initialise the text encoder's relative attention so heads look at the next / previous word: a random T5
    # averages over the caption (a bag of words), and Mochi/Wan give text tokens no positions, so the
    # transformer could not tell which colour belongs to which shape (see `toy check`'s caption binding)
    text_local_attention: bool = False
    time_embed_dim: int = 64
    wan_vae_base_dim: int = 16
    wan_ffn_dim: int = 256

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"toy architecture {self.architecture!r}: choose one of {', '.join(ARCHITECTURES)}"
            )

    @property
    def latent_channels(self) -> int:
        """Latent channels of this architecture's VAE."""
        return WAN22_LATENT_CHANNELS if self.architecture == "wan22" else LATENT_CHANNELS

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent cell side of this architecture's VAE."""
        return WAN22_SPATIAL_FACTOR if self.architecture == "wan22" else SPATIAL_FACTOR

    @property
    def temporal_factor(self) -> int:
        """Frames per latent frame of this architecture's VAE (the first frame alone)."""
        return TEMPORAL_FACTORS[self.architecture]


def toy_words() -> list[str]:
    """Every word of the toy world's captions (articles, colours, shapes, relation phrases)."""
    return sorted(world.caption_words())


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


def tokenize_captions(tokenizer, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention masks ``(N, L)`` at the toy sequence length."""
    tokens = tokenizer(
        captions, padding="max_length", max_length=MAX_SEQUENCE_LENGTH, truncation=True, return_tensors="pt"
    )
    return tokens.input_ids, tokens.attention_mask


def build_text_encoder(vocab_size: int, cfg: ToyBackboneConfig, seed: int = 0):
    """A small randomly initialised ``T5EncoderModel`` (Wan: ``UMT5EncoderModel``), frozen: the
    transformer learns to read it."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    config_cls, model_cls = (
        (T5Config, T5EncoderModel) if cfg.architecture == "mochi" else (UMT5Config, UMT5EncoderModel)
    )
    config = config_cls(
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
    model = model_cls(config).eval()
    if cfg.text_local_attention:
        focus_on_neighbours(model)
    return model


def _buckets(attention, offsets: torch.Tensor) -> torch.Tensor:
    """Relative-position buckets of ``offsets`` (key minus query) in a T5 or UMT5 encoder attention."""
    from transformers.models.umt5.modeling_umt5 import UMT5Attention

    if isinstance(attention, UMT5Attention):  # a method that reads its own settings
        return attention._relative_position_bucket(offsets)
    return attention._relative_position_bucket(
        offsets,
        bidirectional=True,
        num_buckets=attention.relative_attention_num_buckets,
        max_distance=attention.relative_attention_max_distance,
    )


LOCAL_ATTENTION_BIAS = (
    8.0  # logit added for the attended neighbour: e^8 ~ 3000 times the weight of the others
)


@torch.no_grad()
def focus_on_neighbours(text_encoder) -> None:
    """Set the relative attention biases so head 0 attends to the next token, head 1 to the previous one and
    head 2 to itself (other heads keep their random biases): every word embedding then carries its
    neighbours, the way a pretrained T5's contextual embeddings carry word order."""
    offsets = (1, -1, 0)
    for module in text_encoder.modules():
        if not getattr(module, "has_relative_attention_bias", False):
            continue
        if getattr(module, "is_decoder", False):
            continue
        buckets = _buckets(module, torch.tensor(offsets))
        weight = module.relative_attention_bias.weight  # (num_buckets, heads)
        for head, bucket in enumerate(buckets.tolist()[: weight.shape[1]]):
            weight[:, head] = 0.0
            weight[bucket, head] = LOCAL_ATTENTION_BIAS


def build_vae(cfg: ToyBackboneConfig, latents_mean=None, latents_std=None):
    """A small ``AutoencoderKLMochi`` (8x8 spatial, 6x temporal compression to 12 channels, like Mochi's),
    or for ``architecture="wan"`` a small ``AutoencoderKLWan`` (8x8 spatial, 4x temporal, 12 channels)."""
    from diffusers import AutoencoderKLMochi, AutoencoderKLWan

    mean = list(latents_mean if latents_mean is not None else [0.0] * cfg.latent_channels)
    std = list(latents_std if latents_std is not None else [1.0] * cfg.latent_channels)
    if cfg.architecture == "wan22":
        return _wan22_vae(cfg, mean, std)
    if cfg.architecture == "wan":
        return AutoencoderKLWan(
            base_dim=cfg.wan_vae_base_dim,
            z_dim=LATENT_CHANNELS,
            dim_mult=[1, 2, 4, 4],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
            latents_mean=mean,
            latents_std=std,
        )
    return AutoencoderKLMochi(
        encoder_block_out_channels=tuple(cfg.vae_encoder_channels),
        decoder_block_out_channels=tuple(cfg.vae_decoder_channels),
        layers_per_block=tuple(cfg.vae_layers_per_block),
        add_attention_block=(False,) * len(cfg.vae_layers_per_block),
        latents_mean=tuple(mean),
        latents_std=tuple(std),
    )


def _wan22_vae(cfg: ToyBackboneConfig, mean: list[float], std: list[float]):
    """A small ``AutoencoderKLWan`` in Wan 2.2's layout: 2x2 pixel patches (12 input channels), residual
    blocks, 16x16 spatial / 4x temporal compression to 48 channels."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=cfg.wan_vae_base_dim,
        z_dim=WAN22_LATENT_CHANNELS,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_spatial=16,
        scale_factor_temporal=4,
        latents_mean=mean,
        latents_std=std,
    )


def build_transformer(cfg: ToyBackboneConfig, seed: int = 0):
    """A small ``MochiTransformer3DModel`` (same class and attention layout as Mochi 1's 10B DiT), or a
    small ``WanTransformer3DModel`` (Wan 2.1's class) for ``architecture="wan"`` (``"wan22"``: reading 48
    latent channels)."""
    from diffusers import MochiTransformer3DModel, WanTransformer3DModel

    torch.manual_seed(seed)
    if cfg.architecture in ("wan", "wan22"):
        return WanTransformer3DModel(
            patch_size=(1, cfg.patch_size, cfg.patch_size),
            num_attention_heads=cfg.num_attention_heads,
            attention_head_dim=cfg.attention_head_dim,
            in_channels=cfg.latent_channels,
            out_channels=cfg.latent_channels,
            text_dim=cfg.text_dim,
            freq_dim=cfg.time_embed_dim,
            ffn_dim=cfg.wan_ffn_dim,
            num_layers=cfg.num_layers,
            rope_max_seq_len=64,
        )
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


def silence_block(block: torch.nn.Module) -> None:
    """Make a transformer block the identity on both streams while leaving it trainable.

    Mochi's residual branches are scaled by ``tanh(gate)`` with the gates read from ``norm1``/``norm1_context``
    (chunks 2 and 4 of their linear): zero gates close them, and their gradient is not zero. Wan's branches
    add their output projection's result (self- and cross-attention, FFN): those projections are zeroed.
    """
    with torch.no_grad():
        if hasattr(block, "norm1") and hasattr(block.norm1, "linear"):  # Mochi
            for norm in (block.norm1, getattr(block, "norm1_context", None)):
                if norm is None or not hasattr(norm, "linear"):
                    continue  # a last block reads no context and writes none
                width = norm.linear.out_features // 4
                for chunk in (1, 3):  # scale_msa, gate_msa, scale_mlp, gate_mlp
                    norm.linear.weight[chunk * width : (chunk + 1) * width].zero_()
                    norm.linear.bias[chunk * width : (chunk + 1) * width].zero_()
        else:  # Wan
            for linear in (block.attn1.to_out[0], block.attn2.to_out[0], block.ffn.net[-1]):
                linear.weight.zero_()
                linear.bias.zero_()


def load_deepened(transformer, state: dict[str, torch.Tensor], layers: int) -> list[int]:
    """Load the weights of a ``layers``-block toy transformer of the same width into a deeper ``transformer``.

    The loaded blocks keep their order and the last stays last (Mochi's last block reads no context); the
    new blocks, inserted before it, start as the identity (:func:`silence_block`), so the deeper model computes
    exactly what the loaded one did and training grows it from there. Returns the new blocks' indices.
    """
    backbone = get_backbone(transformer)
    prefix, blocks = backbone.blocks + ".", backbone.block_list(transformer)
    total = len(blocks)
    if not 0 < layers <= total:
        raise ValueError(f"cannot deepen {layers} blocks into {total}")
    new = list(range(layers - 1, total - 1))
    renamed = {}
    for key, value in state.items():
        if key.startswith(prefix):
            index, rest = key[len(prefix) :].split(".", 1)
            index = int(index)
            key = f"{prefix}{total - 1 if index == layers - 1 else index}.{rest}"
        renamed[key] = value
    own = transformer.state_dict()
    for index in new:  # the new blocks keep their own (random) weights, then are silenced
        renamed.update({k: v for k, v in own.items() if k.startswith(f"{prefix}{index}.")})
    transformer.load_state_dict(renamed)
    for index in new:
        silence_block(blocks[index])
    return new


def build_scheduler(architecture: str = "mochi"):
    """Mochi's sampler: flow-matching Euler with inverted sigmas (timestep = (1 - sigma) * 1000); Wan's:
    flow-prediction UniPC (timestep = sigma * 1000), no shift at the toy's 64x64 (Wan 2.1 uses 3 at 480p)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if architecture in ("wan", "wan22"):
        return UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=1.0
        )
    return FlowMatchEulerDiscreteScheduler(invert_sigmas=True)


def analytic_latents(
    video: torch.Tensor, temporal: int = TEMPORAL_FACTOR, spatial: int = SPATIAL_FACTOR
) -> torch.Tensor:
    """The toy latent of videos ``(B, 3, T, H, W)`` in [-1, 1] -> ``(B, 3 (spatial/4)^2, F, H/s, W/s)``.

    Latent frame ``i`` is the keyframe ``temporal * i`` (frame 0 alone, then the last frame of each group of
    ``temporal``: 6 for Mochi, 4 for Wan); each ``spatial`` x ``spatial`` cell holds the mean colour of its
    r x r sub-cells of 4x4 pixels (r = spatial / 4), channel ``c*r*r + r*dy + dx``: 12 channels per 8x8
    cell (Mochi, Wan 2.1), 48 per 16x16 cell (Wan 2.2).
    """
    b, c, t, h, w = video.shape
    if (t - 1) % temporal or h % spatial or w % spatial:
        raise ValueError(
            f"video of {t} frames {h}x{w}: frames must be {temporal}k+1 and sizes multiples of {spatial}"
        )
    keyframes = video[:, :, ::temporal]  # (B, 3, F, H, W)
    f = keyframes.shape[2]
    pooled = F.avg_pool2d(keyframes.transpose(1, 2).reshape(b * f, c, h, w), SUBCELL)  # (BF, 3, H/4, W/4)
    packed = F.pixel_unshuffle(pooled, spatial // SUBCELL)  # (BF, 3 r^2, H/s, W/s)
    return packed.reshape(b, f, -1, h // spatial, w // spatial).transpose(1, 2)


def analytic_decode(latents: torch.Tensor, temporal: int = TEMPORAL_FACTOR) -> torch.Tensor:
    """The reference inverse of :func:`analytic_latents`: ``(B, 3 r^2, F, h, w)`` ->
    ``(B, 3, temporal (F-1) + 1, 4 r h, 4 r w)``.

    Sub-cell colours are upsampled (nearest) and the frames between keyframes linearly interpolated; the
    trained VAE decoder should do at least this well (it can also sharpen edges).
    """
    b, channels, f, h, w = latents.shape
    r = math.isqrt(channels // 3)
    cells = F.pixel_shuffle(latents.transpose(1, 2).reshape(b * f, channels, h, w), r)
    keyframes = F.interpolate(cells, scale_factor=SUBCELL, mode="nearest")
    keyframes = keyframes.reshape(b, f, 3, h * SUBCELL * r, w * SUBCELL * r).transpose(1, 2)
    frames = [keyframes[:, :, :1]]
    weights = torch.arange(1, temporal + 1, dtype=latents.dtype).view(1, 1, -1, 1, 1) / temporal
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
    """Write a diffusers-format MochiPipeline (or, for a Wan transformer, WanPipeline) directory:
    ``model_index.json`` + one folder per part, and ``toy_info.json`` (the text length the toy trains with
    and ``info``)."""
    from diffusers import MochiPipeline, WanPipeline, WanTransformer3DModel

    parts = dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)
    if isinstance(transformer, WanTransformer3DModel):
        ti2v = vae.config.get("z_dim") == WAN22_LATENT_CHANNELS  # Wan 2.2's per-token timesteps
        pipe = WanPipeline(scheduler=build_scheduler("wan"), expand_timesteps=ti2v, **parts)
    else:
        pipe = MochiPipeline(scheduler=build_scheduler(), force_zeros_for_empty_prompt=True, **parts)
    out_dir = Path(out_dir)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    info = {"max_sequence_length": MAX_SEQUENCE_LENGTH, **(info or {})}
    (out_dir / "toy_info.json").write_text(json.dumps(info, indent=2))


def config_dict(cfg: ToyBackboneConfig) -> dict:
    """The backbone sizes as a plain dict (recorded in the bundle's ``toy_info.json``)."""
    return asdict(cfg)
