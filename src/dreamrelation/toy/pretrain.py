"""Pretraining of the toy backbone: the VAE on random moving shapes, the transformer on base relations.

``dreamrelation toy pretrain`` runs both stages (seeded, reproducible) and writes a diffusers-format
MochiPipeline directory, or a WanPipeline one with ``--architecture wan`` (Wan 2.1) or ``wan22`` (Wan 2.2
TI2V-5B's layout, pretrained for text- and image-to-video: ``image_condition_prob``). Held-out relations
never appear in the transformer's data.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dreamrelation.backbones.registry import get_backbone
from dreamrelation.errors import UserError
from dreamrelation.toy import world
from dreamrelation.toy.backbone import (
    ToyBackboneConfig,
    analytic_latents,
    build_text_encoder,
    build_tokenizer,
    build_transformer,
    build_vae,
    frames_to_tensor,
    load_deepened,
    save_bundle,
    tokenize_captions,
    toy_words,
)
from dreamrelation.toy.render import render_video
from dreamrelation.training.losses import condition_on_first_frames, flow_matching_inputs

VAE_LOGVAR_TARGET = -10.0  # near-deterministic posterior: the analytic latent is the mean


@dataclass
class PretrainConfig:
    """Budget of the two pretraining stages (defaults: the shipped bundle)."""

    seed: int = 0
    vae_steps: int = 2000
    vae_batch: int = 8
    vae_lr: float = 1e-3
    vae_crop: int = 32
    vae_frames: int | None = None  # frames per training clip; None: Mochi 7, Wan 9 (see train_vae)
    vae_long_steps: int | None = None  # then steps on toy-length clips; None: Mochi 0, Wan 300 (extend_vae)
    vae_long_batch: int = 4
    vae_long_lr: float = 3e-4
    vae_long_crop: int | None = None  # crop size of the long-clip phase; None: vae_crop
    vae_latent_noise: float = 0.03
    # a VAE folder, or a toy bundle with one, that the VAE stage starts from (a fine-tune), else random
    vae_init_from: str | None = None
    num_videos: int = 6000
    transformer_steps: int = 10000
    transformer_batch: int = 16
    transformer_lr: float = 8e-4
    caption_dropout: float = 0.1
    train_text_encoder: bool = False  # train the toy T5/UMT5 with the transformer, frozen in the bundle
    text_encoder_lr: float | None = None  # None: transformer_lr
    checkpoint_every: int = 250  # transformer steps between resumable checkpoints in the work dir
    # decay of an exponential moving average of the trained weights (diffusers' EMAModel, with its warm-up
    # (1 + step) / (10 + step)); the bundle then holds the average. 0: no average, the last weights
    ema_decay: float = 0.0
    # share of pretraining captions whose relation phrase is a made-up word outside the vocabulary: the model
    # learns to keep both subjects when it cannot read the relation (a user's relation comes with its own word)
    unknown_word_prob: float = 0.0
    # noise levels drawn for the transformer, shifted towards pure noise (training.losses.shift_sigmas): a toy
    # base decides its layout (how many blobs, which colour where) at sigma > 0.8 and fails there
    sigma_shift: float = 1.0
    # a toy bundle whose transformer and text encoder start the transformer stage (a fine-tune), else random
    init_from: str | None = None
    # share of transformer steps conditioned on a clean first latent frame (timestep 0 there, no loss), as
    # Wan 2.2 TI2V-5B is trained for text+image-to-video; the others are text-to-video. Wan 2.2 only.
    image_condition_prob: float = 0.0
    backbone: ToyBackboneConfig = field(default_factory=ToyBackboneConfig)


def cosine_lr(step: int, total: int, base: float, warmup: int = 100) -> float:
    """Linear warm-up then cosine decay to 5% of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def random_shape_clips(batch: int, frames: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Clips ``(B, 3, T, size, size)`` in [-1, 1]: 1-3 discs/boxes/diamonds moving over dark backgrounds."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    bg = torch.rand(batch, 3, 1, 1, 1, generator=gen) * 0.4 - 1.0
    tilt = (torch.rand(batch, 3, 1, 1, 1, generator=gen) - 0.5) * 0.3
    stripes = torch.sin(yy / (3 + 5 * torch.rand(1, generator=gen)) + xx * 0.1)[None, None, None]
    texture = (torch.rand(batch, 1, 1, 1, 1, generator=gen) < 0.3) * 0.08 * stripes
    video = (bg + tilt * (yy / size)[None, None, None] + texture).expand(batch, 3, frames, size, size).clone()
    t = torch.arange(frames).float()[None, :, None, None]
    for _ in range(3):
        present = torch.rand(batch, 1, 1, 1, generator=gen) < 0.8
        colour = torch.rand(batch, 3, 1, 1, 1, generator=gen) * 2 - 1
        colour[:, torch.randint(0, 3, (1,), generator=gen)] = 1.0  # saturated, bright
        cx, cy = (torch.rand(2, batch, 1, 1, 1, generator=gen) * size).unbind(0)
        vx, vy = ((torch.rand(2, batch, 1, 1, 1, generator=gen) - 0.5) * 6).unbind(0)
        radius = torch.rand(batch, 1, 1, 1, generator=gen) * 6 + 3
        kind = torch.randint(0, 3, (batch, 1, 1, 1), generator=gen)
        dx, dy = xx - (cx + vx * t), yy - (cy + vy * t)
        disc = dx**2 + dy**2 <= radius**2
        box = (dx.abs() <= radius) & (dy.abs() <= radius * 0.8)
        diamond = dx.abs() + dy.abs() <= radius * 1.2
        inside = torch.where(kind == 0, disc, torch.where(kind == 1, box, diamond)) & present
        video = torch.where(inside[:, None], colour, video)
    return video.clamp(-1.0, 1.0)


def vae_moments(vae, clips: torch.Tensor) -> torch.Tensor:
    """The encoder's ``(B, 2 C, F, h, w)`` posterior moments (mean, then log-variance) of ``clips``."""
    from diffusers import AutoencoderKLWan

    if isinstance(vae, AutoencoderKLWan):
        return vae._encode(clips)  # the causal chunked encoder; its temporal downsampling needs the cache
    return vae.encoder(clips)[0]


def vae_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Decoded frames ``(B, 3, t (F - 1) + 1, H, W)`` of un-normalised latents (Mochi's leading extra frames
    dropped, as its pipeline does)."""
    from diffusers import AutoencoderKLWan

    if isinstance(vae, AutoencoderKLWan):
        return vae._decode(latents).sample
    return vae.decoder(latents)[0][:, :, vae.temporal_compression_ratio - 1 :]


def _fit_vae(
    vae,
    cfg: PretrainConfig,
    steps: int,
    clips: tuple[int, int, int],
    lr: float,
    gen,
    desc: str,
    progress: bool,
) -> list[dict]:
    """Adam on encoder -> analytic latent plus decoder(latent + noise) -> pixels, on random-shape ``clips``
    of (batch, frames, crop size); returns the loss log."""
    temporal, spatial = cfg.backbone.temporal_factor, cfg.backbone.spatial_factor
    channels = cfg.backbone.latent_channels
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    log = []
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup=min(100, steps // 10))
        video = random_shape_clips(*clips, gen)
        target = analytic_latents(video, temporal, spatial)
        moments = vae_moments(vae, video)
        encoder_loss = F.mse_loss(moments[:, :channels], target) + 0.01 * F.mse_loss(
            moments[:, channels:], torch.full_like(target, VAE_LOGVAR_TARGET)
        )
        noisy = target + cfg.vae_latent_noise * torch.randn(target.shape, generator=gen)
        decoder_loss = F.mse_loss(vae_decode(vae, noisy), video)
        (encoder_loss + decoder_loss).backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        log.append({"step": step, "encoder_mse": encoder_loss.item(), "decoder_mse": decoder_loss.item()})
        bar.set_postfix(enc=f"{encoder_loss.item():.4f}", dec=f"{decoder_loss.item():.4f}")
    vae.eval()
    return log


def train_vae(cfg: PretrainConfig, out_dir: Path, progress: bool = True):
    """Train the toy VAE (``AutoencoderKLMochi`` or ``AutoencoderKLWan``): encoder -> analytic latent,
    decoder -> pixels from it. Returns ``(vae, seconds)`` and writes ``vae_log.json``."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    vae = build_vae(cfg.backbone)
    temporal = cfg.backbone.temporal_factor
    # Mochi's VAE convolves the whole clip: two latent frames generalise to any length. Wan's encodes and
    # decodes chunk by chunk through a feature cache, and a chunk after a 4-frame chunk sees another cache
    # than the one after the lone first frame: three latent frames (9 frames) cover both cases.
    frames = cfg.vae_frames or (temporal + 1 if cfg.backbone.architecture == "mochi" else 2 * temporal + 1)
    start = time.time()
    if cfg.vae_init_from:
        vae.load_state_dict(_vae_weights(Path(cfg.vae_init_from), type(vae)))
    shape = (cfg.vae_batch, frames, cfg.vae_crop)
    log = _fit_vae(vae, cfg, cfg.vae_steps, shape, cfg.vae_lr, gen, "toy VAE", progress)
    seconds = time.time() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vae_log.json").write_text(json.dumps({"seconds": seconds, "log": log}))
    return vae, seconds


def _vae_weights(source: Path, vae_cls) -> dict:
    """The state dict of the VAE in ``source``: a VAE folder, or a toy bundle / work dir with ``vae/``."""
    folder = source / "vae" if (source / "vae" / "config.json").is_file() else source
    if not (folder / "config.json").is_file():
        raise UserError(f"vae_init_from={source}: no VAE there; give a VAE folder or a toy bundle")
    return vae_cls.from_pretrained(folder).float().state_dict()


def long_clip_steps(cfg: PretrainConfig) -> int:
    """Steps of :func:`extend_vae`: ``vae_long_steps``, else 0 for Mochi and 300 for Wan."""
    if cfg.vae_long_steps is not None:
        return int(cfg.vae_long_steps)
    return 0 if cfg.backbone.architecture == "mochi" else 300


def extend_vae(vae, cfg: PretrainConfig, out_dir: Path, progress: bool = True):
    """Continue training on clips of the toy world's full length (25 frames), with a fresh optimizer.

    Wan's chunked decoder, trained on 9-frame clips only, drifts over its own longer rollouts (decode error
    0.05 on the first 9 frames, about 0.2 after frame 13); a short phase on full-length clips stabilises it.
    ``vae_long_crop``: the crop size of this phase. The Wan 2.2 layout needs the toy's 64x64 here: its VAE
    trained on 32x32 crops (2x2 latent cells) encodes 64x64 videos badly (latent error 0.11 vs 0.01).
    Returns ``(vae, seconds)`` and writes ``vae_long_log.json``; a no-op for 0 steps.
    """

    steps = long_clip_steps(cfg)
    if steps <= 0:
        return vae, 0.0
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    start = time.time()
    vae.train()
    shape = (cfg.vae_long_batch, world.NUM_FRAMES, cfg.vae_long_crop or cfg.vae_crop)
    log = _fit_vae(vae, cfg, steps, shape, cfg.vae_long_lr, gen, "toy VAE, long clips", progress)
    seconds = time.time() - start
    (out_dir / "vae_long_log.json").write_text(json.dumps({"seconds": seconds, "log": log}))
    return vae, seconds


def vae_report(vae) -> dict:
    """:func:`vae_quality` on 16 held-out 13-frame clips and, under ``toy_length``, on 25-frame ones."""

    clips = random_shape_clips(16, 13, 64, torch.Generator().manual_seed(10_000))
    full = random_shape_clips(8, world.NUM_FRAMES, 64, torch.Generator().manual_seed(10_001))
    return {**vae_quality(vae, clips), "toy_length": vae_quality(vae, full)}


@torch.no_grad()
def vae_quality(vae, clips: torch.Tensor) -> dict:
    """L1 errors (pixels in [-1, 1]) of decode(analytic), decode(encode) and a per-clip mean-colour guess."""

    backbone = get_backbone(vae)
    target = analytic_latents(clips, backbone.temporal_compression, backbone.spatial_compression)
    moments = vae_moments(vae, clips)[:, : target.shape[1]]
    from_analytic = vae_decode(vae, target)
    round_trip = vae_decode(vae, moments)
    return {
        "encoder_mse": F.mse_loss(moments, target).item(),
        "decode_analytic_l1": (from_analytic - clips).abs().mean().item(),
        "round_trip_l1": (round_trip - clips).abs().mean().item(),
        "mean_colour_l1": (clips - clips.mean(dim=(2, 3, 4), keepdim=True)).abs().mean().item(),
    }


def render_pretraining_set(
    num_videos: int, seed: int, progress: bool = True, temporal: int = 6, spatial: int = 8
) -> tuple[torch.Tensor, list[str]]:
    """Render base-relation videos (never held-out ones) -> analytic latents ``(N, C, F, h, w)`` with
    ``temporal`` frames per latent frame and ``spatial`` pixels per cell side, and captions."""

    rng = np.random.default_rng(seed)
    base = list(world.BASE_RELATIONS)
    latents, captions = None, []
    for i in tqdm(range(num_videos), desc="render base relations", disable=not progress):
        spec = world.sample_video_spec(rng, relations=base)
        video = render_video(spec)
        latent = analytic_latents(frames_to_tensor(video.frames), temporal, spatial)[0]
        if latents is None:
            # one buffer: small tensors kept between the large per-video ones fragment the heap (a list of
            # 24000 latents grew the process to 17 GB at 14000 videos)
            latents = torch.empty((num_videos, *latent.shape), dtype=latent.dtype)
        latents[i] = latent
        captions.append(video.caption)
    return latents, captions


def cached_pretraining_set(
    work: Path, num_videos: int, seed: int, progress: bool = True, temporal: int = 6, spatial: int = 8
) -> tuple[torch.Tensor, list[str]]:
    """:func:`render_pretraining_set`, kept in ``work`` so a resumed run does not render it again."""
    cells = "" if spatial == 8 else f"_s{spatial}"
    path = work / f"pretraining_set_{num_videos}_seed{seed}_t{temporal}{cells}.pt"
    if path.is_file():
        data = torch.load(path, weights_only=True)
        return data["latents"], list(data["captions"])
    latents, captions = render_pretraining_set(num_videos, seed, progress, temporal, spatial)
    tmp = path.with_suffix(".tmp")
    torch.save({"latents": latents, "captions": captions}, tmp)
    tmp.replace(path)
    return latents, captions


def _pretraining_set(cfg: PretrainConfig, work: Path, progress: bool) -> tuple[torch.Tensor, list[str]]:
    """The cached pretraining set in the geometry of ``cfg``'s backbone."""
    geometry = cfg.backbone.temporal_factor, cfg.backbone.spatial_factor
    return cached_pretraining_set(work, cfg.num_videos, cfg.seed, progress, *geometry)


def with_made_up_words(captions: list[str], probability: float, seed: int) -> list[str]:
    """``captions`` with the relation phrase of a random ``probability`` share replaced by made-up words."""

    if probability <= 0:
        return list(captions)
    rng = np.random.default_rng(seed + 7)
    replace = rng.random(len(captions)) < probability
    return [
        world.with_relation_word(text, world.made_up_word(rng)) if swap else text
        for text, swap in zip(captions, replace, strict=True)
    ]


@dataclass
class CaptionSet:
    """Tokenised captions ``ids``/``masks`` ``(N, L)`` and the empty prompt's ``(L,)`` (caption dropout).

    ``zero_dropped``: a dropped caption is an all-zero embedding and mask (Mochi's zeroed empty prompt);
    otherwise it is the encoded empty prompt (WanPipeline's unconditional input).
    """

    ids: torch.Tensor
    masks: torch.Tensor
    null_ids: torch.Tensor
    null_mask: torch.Tensor
    zero_dropped: bool

    def encode(
        self, text_encoder, idx: torch.Tensor, drop: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings and masks of captions ``idx`` with ``drop`` ones replaced by the unconditional input."""
        ids, mask = self.ids[idx].clone(), self.masks[idx].clone()
        if not self.zero_dropped:
            ids[drop], mask[drop] = self.null_ids, self.null_mask
        emb = text_encoder(ids, attention_mask=mask)[0]
        if self.zero_dropped:
            keep = (~drop).to(emb.dtype).view(-1, 1, 1)
            emb, mask = emb * keep, mask * (~drop).to(mask.dtype).view(-1, 1)
        return emb, mask


def _checkpoint_path(work: Path) -> Path:
    return work / "transformer_checkpoint.pt"


def _resumable_config(cfg: PretrainConfig) -> dict:
    """The settings a checkpoint must agree with to resume exactly (all but the checkpoint cadence)."""
    record = asdict(cfg)
    record.pop("checkpoint_every")
    return record


def _save_checkpoint(
    work: Path, cfg: PretrainConfig, step: int, seconds: float, models, opt, ema, gen, log
) -> None:
    """Everything needed to continue bit-exactly: weights, optimizer, weight average, random streams, loss log."""
    state = {
        "ema": ema.state_dict() if ema is not None else None,
        "config": _resumable_config(cfg),
        "step": step,
        "seconds": seconds,
        "models": [m.state_dict() for m in models],
        "optimizer": opt.state_dict(),
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "log": log,
    }
    path = _checkpoint_path(work)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _same_settings(saved: dict, current: dict, defaults: dict) -> bool:
    """Whether a checkpoint's settings equal ``current``; a setting added to the code after the checkpoint
    was written matches when it is at its default (so an upgrade does not strand a run)."""
    for key, value in current.items():
        if key not in saved:
            if value != defaults.get(key):
                return False
        elif isinstance(value, dict) and isinstance(saved[key], dict):
            if not _same_settings(saved[key], value, defaults.get(key, {})):
                return False
        elif saved[key] != value:
            return False
    return set(saved) <= set(current)


def _load_checkpoint(work: Path | None, cfg: PretrainConfig) -> dict | None:
    path = _checkpoint_path(work) if work is not None else None
    if path is None or not path.is_file():
        return None
    state = torch.load(path, weights_only=False)
    if not _same_settings(state["config"], _resumable_config(cfg), _resumable_config(PretrainConfig())):
        raise UserError(
            f"{path}: a checkpoint of other pretraining settings; resume with the same settings, "
            "or use another --work-dir"
        )
    return state


def _trained_parameters(cfg: PretrainConfig, transformer, text_encoder) -> list[torch.nn.Parameter]:
    """The parameters the transformer stage trains, in the order of the optimizer and the weight average."""
    return [*transformer.parameters(), *(text_encoder.parameters() if cfg.train_text_encoder else ())]


def _load_bundle_weights(bundle: Path, transformer: torch.nn.Module, text_encoder: torch.nn.Module) -> None:
    """Start from a toy bundle's transformer and text encoder (same architecture, else one clear line).

    A bundle transformer with fewer layers and otherwise the same configuration grows into this one: its
    blocks are kept and the new ones start as the identity (:func:`load_deepened`).
    """
    for module, folder in ((transformer, "transformer"), (text_encoder, "text_encoder")):
        if not (bundle / folder / "config.json").is_file():
            raise UserError(f"init_from={bundle}: no {folder}/ there; give a toy bundle folder")
        loaded = type(module).from_pretrained(bundle / folder)  # load_state_dict casts to the module dtype
        try:
            if module is transformer and _shallower(loaded.config, module.config):
                load_deepened(module, loaded.state_dict(), loaded.config.num_layers)
            else:
                module.load_state_dict(loaded.state_dict())
        except RuntimeError as exc:
            raise UserError(f"init_from={bundle}: its {folder} is not the backbone.* architecture") from exc


def _shallower(loaded, target) -> bool:
    """Whether ``loaded`` is ``target``'s transformer configuration with fewer layers."""
    rest = {k: v for k, v in loaded.items() if k != "num_layers" and not k.startswith("_")}
    same = rest == {k: v for k, v in target.items() if k != "num_layers" and not k.startswith("_")}
    return same and loaded.num_layers < target.num_layers


def train_transformer(
    cfg: PretrainConfig,
    latents: torch.Tensor,
    captions: CaptionSet,
    text_encoder,
    progress: bool = True,
    work: Path | None = None,
):
    """Full-weight rectified-flow pretraining of the toy transformer on normalised latents, with the flow
    convention of its backbone's sampler; with ``cfg.train_text_encoder`` the text encoder learns too.

    With ``work``, a checkpoint is written every ``cfg.checkpoint_every`` steps and a run that finds one
    continues from it exactly (same weights and losses as an uninterrupted run).
    Returns ``(transformer, seconds, losses)``; ``text_encoder`` is trained in place.
    """

    from diffusers.training_utils import EMAModel

    backbone = get_backbone(cfg.backbone.architecture)
    if cfg.image_condition_prob > 0 and not backbone.takes_image:
        raise UserError(
            f"image_condition_prob={cfg.image_condition_prob}: the {cfg.backbone.architecture} toy cannot take "
            "an image; image-conditioned pretraining needs --architecture wan22"
        )
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    transformer = build_transformer(cfg.backbone, seed=cfg.seed)
    if cfg.init_from:
        _load_bundle_weights(Path(cfg.init_from), transformer, text_encoder)
    groups = [{"params": list(transformer.parameters()), "lr": cfg.transformer_lr}]
    text_lr = cfg.text_encoder_lr or cfg.transformer_lr
    if cfg.train_text_encoder:
        groups.append({"params": list(text_encoder.parameters()), "lr": text_lr})
    text_encoder.requires_grad_(cfg.train_text_encoder).train(cfg.train_text_encoder)
    opt = torch.optim.AdamW(groups, lr=cfg.transformer_lr, weight_decay=0.01)
    trained = _trained_parameters(cfg, transformer, text_encoder)
    ema = EMAModel(trained, decay=cfg.ema_decay) if cfg.ema_decay > 0 else None
    log, first, spent = [], 0, 0.0
    state = _load_checkpoint(work, cfg)
    if state is not None:
        for module, weights in zip((transformer, text_encoder), state["models"], strict=True):
            module.load_state_dict(weights)
        opt.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        log, first, spent = state["log"], state["step"], state["seconds"]
    start = time.time()
    bar = tqdm(range(first, cfg.transformer_steps), desc="toy transformer", disable=not progress)
    for step in bar:
        for group, base in zip(opt.param_groups, (cfg.transformer_lr, text_lr), strict=False):
            group["lr"] = cosine_lr(step, cfg.transformer_steps, base, warmup=200)
        idx = torch.randint(0, latents.shape[0], (cfg.transformer_batch,), generator=gen)
        drop = torch.rand(len(idx), generator=gen) < cfg.caption_dropout
        with torch.set_grad_enabled(cfg.train_text_encoder):
            emb, mask = captions.encode(text_encoder, idx, drop)
        noisy, timestep, target, _ = flow_matching_inputs(latents[idx], gen, backbone.flow, cfg.sigma_shift)
        clean = int(cfg.image_condition_prob > 0 and torch.rand((), generator=gen) < cfg.image_condition_prob)
        if clean:  # image-to-video: the first latent frame is the image, the loss is on the others
            noisy, timestep = condition_on_first_frames(latents[idx], noisy, timestep)
        pred = backbone.forward(transformer, noisy, timestep, emb, mask)
        loss = F.mse_loss(pred[:, :, clean:], target[:, :, clean:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(trained)
        log.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(log[-50:]):.4f}")
        if work is not None and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.transformer_steps:
            seconds = spent + time.time() - start
            _save_checkpoint(work, cfg, step + 1, seconds, (transformer, text_encoder), opt, ema, gen, log)
    if ema is not None:
        ema.copy_to(trained)
    transformer.eval()
    text_encoder.requires_grad_(False).eval()
    return transformer, spent + time.time() - start, log


def _vae_stage(cfg: PretrainConfig, work: Path, progress: bool) -> None:
    vae, seconds = train_vae(cfg, work, progress)
    vae, long_seconds = extend_vae(vae, cfg, work, progress)
    vae.save_pretrained(work / "vae")
    record = {"architecture": cfg.backbone.architecture, "seconds": seconds + long_seconds, **vae_report(vae)}
    (work / "vae_quality.json").write_text(json.dumps(record, indent=2))


def adopt_vae(bundle: Path, work: Path) -> None:
    """Use the VAE of an existing toy ``bundle`` as this work dir's VAE stage (its quality record too)."""
    info_file = Path(bundle) / "toy_info.json"
    if not (Path(bundle) / "vae").is_dir() or not info_file.is_file():
        raise UserError(f"{bundle}: not a toy bundle (needs vae/ and toy_info.json)")
    info = json.loads(info_file.read_text())
    architecture = info.get("config", {}).get("backbone", {}).get("architecture", "mochi")
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "vae", ignore_errors=True)
    shutil.copytree(Path(bundle) / "vae", work / "vae")
    record = {"architecture": architecture, "adopted_from": str(bundle), **info.get("vae", {})}
    (work / "vae_quality.json").write_text(json.dumps(record, indent=2))


def _transformer_stage(cfg: PretrainConfig, work: Path, tokenizer, text_encoder, progress: bool) -> None:
    latents, captions = _pretraining_set(cfg, work, progress)
    mean = latents.mean(dim=(0, 2, 3, 4))
    std = latents.std(dim=(0, 2, 3, 4))
    normalised = (latents - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)
    ids, masks = tokenize_captions(tokenizer, with_made_up_words(captions, cfg.unknown_word_prob, cfg.seed))
    null_ids, null_mask = tokenize_captions(tokenizer, [""])
    # WanPipeline encodes the empty negative prompt; Mochi's pipeline zeroes it
    zeroed = get_backbone(cfg.backbone.architecture).empty_prompt_zeroed
    caption_set = CaptionSet(ids, masks, null_ids[0], null_mask[0], zero_dropped=zeroed)
    transformer, seconds, log = train_transformer(cfg, normalised, caption_set, text_encoder, progress, work)
    _save_transformer_stage(work, cfg, transformer, text_encoder, (mean, std), seconds, log)


def _save_transformer_stage(stage: Path, cfg: PretrainConfig, transformer, text_encoder, stats, seconds, log):
    text_encoder.save_pretrained(stage / "text_encoder")
    transformer.save_pretrained(stage / "transformer")
    record = {
        "architecture": cfg.backbone.architecture,
        "latents_mean": stats[0].tolist(),
        "latents_std": stats[1].tolist(),
        "seconds": seconds,
        "steps": len(log),
        "final_loss": float(np.mean(log[-200:])),
        "text_encoder_trained": cfg.train_text_encoder,
    }
    (stage / "transformer_stats.json").write_text(json.dumps(record, indent=2))


def snapshot_bundle(out_dir: Path, cfg: PretrainConfig, work_dir: Path) -> Path:
    """Write a bundle from the transformer stage's latest checkpoint, to check a run while it trains."""
    work = Path(work_dir)
    state = _load_checkpoint(work, cfg)
    if state is None:
        raise UserError(
            f"{work}: no transformer checkpoint yet (one is written every checkpoint_every steps)"
        )
    latents, _ = _pretraining_set(cfg, work, False)
    stats = (latents.mean(dim=(0, 2, 3, 4)), latents.std(dim=(0, 2, 3, 4)))
    tokenizer = build_tokenizer(toy_words())
    transformer = build_transformer(cfg.backbone, seed=cfg.seed)
    text_encoder = build_text_encoder(len(tokenizer), cfg.backbone, seed=cfg.seed)
    for module, weights in zip((transformer, text_encoder), state["models"], strict=True):
        module.load_state_dict(weights)
    if state.get("ema") is not None:  # the bundle holds the weight average, as at the end of the run
        trained = _trained_parameters(cfg, transformer, text_encoder)
        for param, average in zip(trained, state["ema"]["shadow_params"], strict=True):
            param.data.copy_(average)
    stage = work / "snapshot"
    stage.mkdir(exist_ok=True)
    _save_transformer_stage(stage, cfg, transformer, text_encoder, stats, state["seconds"], state["log"])
    return _assemble(out_dir, cfg, work, tokenizer, stage)


def _assemble(out_dir: Path, cfg: PretrainConfig, work: Path, tokenizer, stage: Path | None = None) -> Path:
    """Write the bundle from the work dir's VAE and the transformer stage in ``stage`` (default: ``work``)."""

    arch = cfg.backbone.architecture
    stage = stage or work
    transformer_cls, _, vae_cls = get_backbone(arch).classes()
    stats = json.loads((stage / "transformer_stats.json").read_text())
    vae_record = json.loads((work / "vae_quality.json").read_text())
    found = {vae_record.get("architecture", "mochi"), stats.get("architecture", "mochi")}
    if found != {arch}:
        raise UserError(
            f"{work}: its stages were trained for {', '.join(sorted(found))}, not {arch}; "
            "use another --work-dir or run both stages"
        )
    vae = vae_cls.from_pretrained(work / "vae")
    vae.register_to_config(latents_mean=list(stats["latents_mean"]), latents_std=list(stats["latents_std"]))
    transformer = transformer_cls.from_pretrained(stage / "transformer")
    text_encoder = build_text_encoder(len(tokenizer), cfg.backbone, seed=cfg.seed)
    if (stage / "text_encoder").is_dir():  # the one the transformer learned to read (trained or not)
        text_encoder = type(text_encoder).from_pretrained(stage / "text_encoder").eval()
    info = {
        "config": asdict(cfg),
        "vae": vae_record,
        "transformer": {k: stats[k] for k in ("seconds", "final_loss") if k in stats}
        | {"steps": stats.get("steps")},
    }
    # fp16 storage keeps the shipped bundle small; load with torch_dtype=torch.float32 to compute in fp32
    save_bundle(
        Path(out_dir),
        vae=vae.half(),
        transformer=transformer.half(),
        text_encoder=text_encoder.half(),
        tokenizer=tokenizer,
        info=info,
    )
    return Path(out_dir)


def pretrain(
    out_dir: Path,
    cfg: PretrainConfig | None = None,
    stages: tuple[str, ...] = ("vae", "transformer"),
    work_dir: Path = Path("runs/toy-pretrain"),
    progress: bool = True,
) -> Path | None:
    """Run the requested stages and write the bundle to ``out_dir``; stage results are kept in ``work_dir``
    so a stage not requested is read from an earlier run, and an interrupted transformer stage resumes
    from its last checkpoint there."""
    cfg = cfg or PretrainConfig()
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(toy_words())
    if "vae" in stages:
        _vae_stage(cfg, work, progress)
    if "transformer" in stages:
        text_encoder = build_text_encoder(len(tokenizer), cfg.backbone, seed=cfg.seed)
        _transformer_stage(cfg, work, tokenizer, text_encoder, progress)
    if not ((work / "vae").is_dir() and (work / "transformer").is_dir()):
        return None  # a stage is still missing: the bundle is assembled once both exist
    return _assemble(out_dir, cfg, work, tokenizer)
