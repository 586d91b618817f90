"""Wan 2.2 TI2V-5B: registry entry and geometry, image-to-video training steps (tiny random models)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tiny import TINY_WAN22_TOY

from dreamrelation.backbones.loading import load_pipeline
from dreamrelation.backbones.registry import (
    WAN,
    WAN22,
    backbone_of_model_dir,
    get_backbone,
    token_timesteps,
)
from dreamrelation.core.samples import TrainingSample
from dreamrelation.data.latent_masks import latent_masks
from dreamrelation.errors import UserError
from dreamrelation.toy.backbone import build_transformer
from dreamrelation.training.config import TrainConfig
from dreamrelation.training.losses import RelationalContrastiveLoss, condition_on_first_frames
from dreamrelation.training.trainer import (
    collate,
    compute_losses,
    loss_terms,
    sample_generator,
    train_adapters,
)

LATENT = (48, 3, 4, 4)  # (C, F, h, w): 9 frames at 64 x 64 through the Wan 2.2 VAE


def tiny_transformer(seed: int = 0) -> torch.nn.Module:
    return build_transformer(TINY_WAN22_TOY, seed=seed)


def samples(n: int = 2, seed: int = 0, channels: int = 48) -> list[TrainingSample]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        masks = torch.zeros(2, *LATENT[1:])
        masks[0, :, :2, :2] = 1.0
        masks[1, :, 2:, 2:] = 1.0
        out.append(
            TrainingSample(
                latents=torch.randn(channels, *LATENT[1:], generator=gen),
                latent_logvar=None,
                prompt_embeds=torch.randn(8, 32, generator=gen),
                prompt_mask=torch.ones(8, dtype=torch.bool),
                masks=masks,
                name=f"clip{i}",
            )
        )
    return out


def small_config(probability: float = 0.0, steps: int = 4) -> TrainConfig:
    cfg = TrainConfig()
    cfg.adapter.rank = 4
    cfg.optim.steps, cfg.optim.warmup_steps, cfg.optim.lr = steps, 1, 1e-2
    cfg.optim.checkpoint_every, cfg.mixed_precision = 100, "fp32"
    cfg.i2v.probability = probability
    return cfg


# ----------------------------------------------------------------------------------------------- registry


def test_wan22_is_told_apart_from_wan21_by_its_config(tiny_wan22_bundle: Path, tiny_wan_bundle: Path) -> None:
    assert backbone_of_model_dir(tiny_wan22_bundle) is WAN22
    assert backbone_of_model_dir(tiny_wan_bundle) is WAN
    pipe = load_pipeline(tiny_wan22_bundle)
    assert pipe.config.expand_timesteps
    assert get_backbone(pipe) is WAN22 and get_backbone(pipe.transformer) is WAN22
    assert get_backbone(pipe.vae) is WAN22
    assert get_backbone(load_pipeline(tiny_wan_bundle).transformer) is WAN
    assert get_backbone("wan22") is WAN22 and WAN22.takes_image and not WAN.takes_image
    # same classes, same attention targets as Wan 2.1
    assert WAN22.target_regex(["q", "k"], ["visual", "text"]) == WAN.target_regex(
        ["q", "k"], ["visual", "text"]
    )


def test_wan22_geometry_is_the_vae_config(tiny_wan22_bundle: Path) -> None:
    vae = json.loads((tiny_wan22_bundle / "vae" / "config.json").read_text())
    assert (vae["scale_factor_spatial"], vae["scale_factor_temporal"], vae["z_dim"]) == (16, 4, 48)
    assert WAN22.mask_geometry == (16, 4) and WAN22.size_multiple == 32
    assert WAN22.latent_shape(48, 121, 704, 1280) == (48, 31, 44, 80)
    with pytest.raises(ValueError, match="4k\\+1"):
        WAN22.latent_shape(48, 120, 704, 1280)
    pipe = load_pipeline(tiny_wan22_bundle)
    video = torch.zeros(1, 3, 9, 64, 64)
    assert pipe.vae.encode(video).latent_dist.mean.shape == (1, 48, 3, 4, 4)


def test_wan22_latent_masks_pool_16x16_cells() -> None:
    pixels = torch.zeros(2, 9, 64, 64)
    pixels[0, 0, 17, 40] = 1  # one pixel in cell (1, 2) of frame 0
    pixels[1, 5:9, :16, :16] = 1  # cell (0, 0) in the last group of 4 frames
    masks = latent_masks(pixels, backbone=WAN22)
    expected = torch.zeros(2, 3, 4, 4)
    expected[0, 0, 1, 2] = 1
    expected[1, 2, 0, 0] = 1
    assert torch.equal(masks, expected)


def test_token_timesteps_follow_the_pipelines_first_frame_mask() -> None:
    transformer = tiny_transformer()
    x = torch.zeros(2, 48, 3, 4, 6)
    t = torch.tensor([700.0, 300.0])
    # WanImageToVideoPipeline: mask (1, 1, F, h, w) with frame 0 zero, tokens = (mask[0][0][:, ::2, ::2] * t)
    mask = torch.ones(1, 1, 3, 4, 6)
    mask[:, :, 0] = 0
    expected = torch.stack([(mask[0][0][:, ::2, ::2] * v).flatten() for v in t])
    per_frame = torch.tensor([[0.0, 700.0, 700.0], [0.0, 300.0, 300.0]])
    assert torch.equal(token_timesteps(transformer, x, per_frame), expected)
    assert torch.equal(token_timesteps(transformer, x, t), t[:, None].expand(2, 3 * 2 * 3))


# ----------------------------------------------------------------------------------------------- training


def test_i2v_step_feeds_the_clean_first_frame_at_timestep_zero() -> None:
    transformer = tiny_transformer()
    batch = {
        "latents": torch.stack([s.latents for s in samples()]),
        "prompt_embeds": torch.stack([s.prompt_embeds for s in samples()]),
        "prompt_mask": torch.stack([s.prompt_mask for s in samples()]),
        "masks": torch.stack([s.masks for s in samples()]),
    }
    seen = {}

    def grab(module, args, kwargs):
        seen.update(kwargs)

    transformer.register_forward_pre_hook(grab, with_kwargs=True)
    cfg = small_config(1.0)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    compute_losses(transformer, batch, "relation", cfg, None, torch.Generator(), gens, clean_frames=1)
    tokens = 2 * 2  # (4 / 2) x (4 / 2) per latent frame
    t = seen["timestep"]
    assert t.shape == (2, 3 * tokens)
    assert torch.all(t[:, :tokens] == 0) and torch.all(t[:, tokens:] > 0)
    assert torch.all(t[:, tokens:] == t[:, tokens : tokens + 1])  # one noise level for the generated frames
    x = seen["hidden_states"]
    assert torch.equal(x[:, :, 0], batch["latents"][:, :, 0])  # the conditioning frame is the data
    assert not torch.allclose(x[:, :, 1:], batch["latents"][:, :, 1:])


def test_i2v_step_conditions_on_the_posterior_mean_as_the_pipeline_encodes_the_image() -> None:
    """Samples with a posterior: the generated frames are noised from a sampled latent, but the clean frame
    is the mean (the image pipeline encodes the photo with the VAE's argmax)."""
    with_var = [replace(s, latent_logvar=torch.full_like(s.latents, -1.0)) for s in samples()]
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    batch = collate(with_var, [0, 1], torch.device("cpu"), gens, caption_dropout=0.0)
    means = torch.stack([s.latents for s in with_var])
    assert torch.equal(batch["latent_means"], means)
    assert (batch["latents"] - means).abs().mean() > 0.3  # sampled: std exp(-0.5) around the mean
    seen = {}
    transformer = tiny_transformer()
    transformer.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    compute_losses(transformer, batch, "relation", small_config(1.0), None, torch.Generator(), gens, 1)
    assert torch.equal(seen["hidden_states"][:, :, 0], means[:, :, 0])
    assert "latent_means" not in collate(samples(), [0, 1], torch.device("cpu"), gens, caption_dropout=0.0)


def test_condition_on_first_frames_keeps_the_noise_elsewhere() -> None:
    latents, noisy = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    x, t = condition_on_first_frames(latents, noisy, torch.tensor([500.0, 10.0]))
    assert torch.equal(x[:, :, 0], latents[:, :, 0]) and torch.equal(x[:, :, 1:], noisy[:, :, 1:])
    assert torch.equal(t, torch.tensor([[0.0, 500.0, 500.0], [0.0, 10.0, 10.0]]))
    with pytest.raises(ValueError):
        condition_on_first_frames(latents, noisy, torch.tensor([1.0, 1.0]), frames=3)


@pytest.mark.parametrize("choice", ["all", "relation", "subject2"])
def test_no_loss_and_no_gradient_on_the_conditioning_frame(choice: str) -> None:
    gen = torch.Generator().manual_seed(1)
    pred = torch.randn(2, 48, 3, 4, 4, generator=gen, requires_grad=True)
    target = torch.randn(2, 48, 3, 4, 4, generator=gen)
    masks = (torch.rand(2, 2, 3, 4, 4, generator=gen) > 0.5).float()
    rcl = RelationalContrastiveLoss()
    rcl(torch.randn(3, 48, 3, 4, 4, generator=gen))  # earlier videos in the banks
    losses = loss_terms(pred, target, masks, choice, small_config(1.0), rcl, gen, first=1)
    losses["loss"].backward()
    assert torch.all(pred.grad[:, :, 0] == 0)
    assert pred.grad[:, :, 1:].abs().sum() > 0
    # changing the conditioning frame's target changes nothing
    other = target.clone()
    other[:, :, 0] += 10.0
    again = loss_terms(pred.detach(), other, masks, choice, small_config(1.0), None, gen, first=1)
    assert again["mse"] == F.mse_loss(pred.detach()[:, :, 1:], target[:, :, 1:])


def test_rcl_on_an_i2v_step_is_the_rcl_of_the_generated_frames() -> None:
    gen = torch.Generator().manual_seed(2)
    pred = torch.randn(3, 8, 4, 2, 2, generator=gen)
    got = RelationalContrastiveLoss()(pred, first=1)
    expected = RelationalContrastiveLoss()(pred[:, :, 1:])
    assert torch.allclose(got, expected, atol=1e-6) and got > 0
    # the bank keeps the frame-index alignment: the difference touching frame 0 is missing (NaN)
    rcl = RelationalContrastiveLoss()
    rcl(pred[:1], first=1)
    assert rcl.pos.shape == (1, 3, 8) and rcl.pos[:, 0].isnan().all() and rcl.pos[:, 1:].isfinite().all()
    # a later text-to-video step of batch 1 uses the finite slots only and stays finite, gradients too
    later = torch.randn(1, 8, 4, 2, 2, generator=gen, requires_grad=True)
    loss = rcl(later)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0 and torch.isfinite(later.grad).all()


def test_mixed_run_trains_with_i2v_steps_and_keeps_the_other_streams(tmp_path: Path) -> None:
    cfg = small_config(0.5, steps=6)
    plain = train_adapters(
        tiny_transformer(), samples(), small_config(0.0, 6), tmp_path / "plain", progress=False
    )
    mixed = train_adapters(tiny_transformer(), samples(), cfg, tmp_path / "mixed", progress=False)
    draws = [float(torch.rand(1, generator=sample_generator(0, s, -1))) for s in range(6)]
    assert mixed.i2v_steps == [d < 0.5 for d in draws] and not any(plain.i2v_steps)
    assert mixed.choices == plain.choices  # the i2v draw takes nothing from the HMT / data streams
    first = mixed.i2v_steps.index(True)
    assert first > 0 and mixed.losses[:first] == plain.losses[:first]
    assert mixed.losses[first] != plain.losses[first]
    header = (tmp_path / "mixed" / "loss.csv").read_text().splitlines()[0]
    assert header.endswith(",i2v")


def test_ratio_zero_equals_the_text_to_video_trainer_bit_for_bit(tmp_path: Path) -> None:
    # probability 1e-12 goes through the per-step draw and never conditions: it must change nothing
    runs = {}
    for name, p in (("plain", 0.0), ("drawn", 1e-12)):
        runs[name] = train_adapters(
            tiny_transformer(), samples(), small_config(p), tmp_path / name, progress=False
        )
    assert runs["plain"].losses == runs["drawn"].losses
    for f in (tmp_path / "plain" / "adapters").glob("*.safetensors"):
        a, b = load_file(f), load_file(tmp_path / "drawn" / "adapters" / f.name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_i2v_resumes_exactly(tmp_path: Path) -> None:
    whole = train_adapters(tiny_transformer(), samples(), small_config(0.5), tmp_path / "a", progress=False)
    cfg = small_config(0.5, steps=2)
    train_adapters(tiny_transformer(), samples(), cfg, tmp_path / "b", progress=False)
    resumed = train_adapters(
        tiny_transformer(), samples(), small_config(0.5), tmp_path / "b", progress=False, resume=True
    )
    assert resumed.losses == whole.losses and resumed.i2v_steps == whole.i2v_steps


def test_i2v_steps_are_refused_where_they_cannot_run(tmp_path: Path) -> None:
    from tiny import TINY_WAN_TOY

    with pytest.raises(UserError, match="wan2.1 cannot take an image"):
        train_adapters(
            build_transformer(TINY_WAN_TOY),
            samples(channels=12),
            small_config(0.5),
            tmp_path / "x",
            progress=False,
        )
    with pytest.raises(UserError, match="i2v.probability=1.5"):
        train_adapters(tiny_transformer(), samples(), small_config(1.5), tmp_path / "y", progress=False)
