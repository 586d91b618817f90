"""Backbone registry: Mochi targets unchanged, and a tiny random Wan 2.1 trained with every DreamRelation feature."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKLWan,
    MochiTransformer3DModel,
    UniPCMultistepScheduler,
    WanTransformer3DModel,
)
from peft.tuners.tuners_utils import BaseTunerLayer
from tiny import TINY_TRANSFORMER, TINY_WAN, paper_placement_targets

from dreamrelation.adapters.triplet import (
    adapter_parameters,
    add_relation_adapters,
    load_adapters,
    set_active_roles,
    target_regex,
)
from dreamrelation.backbones.registry import MOCHI, WAN, get_backbone
from dreamrelation.core.roles import PROJECTIONS, AdapterConfig
from dreamrelation.core.samples import TrainingSample
from dreamrelation.data.latent_masks import latent_frame_count, latent_masks
from dreamrelation.data.prepare import encode_video, latent_normalisation
from dreamrelation.training.config import TrainConfig
from dreamrelation.training.losses import flow_matching_inputs
from dreamrelation.training.trainer import roles_for_choice, train_adapters

MOCHI_TINY = TINY_TRANSFORMER
WAN_TINY = TINY_WAN
FRAMES = 9  # 4k + 1 video frames -> 3 latent frames
PIXELS = 32  # 32 x 32 pixels -> 4 x 4 latent cells


def tiny_wan(seed: int = 0) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return WanTransformer3DModel(**WAN_TINY)


def lora_targets(model: torch.nn.Module) -> dict[str, set[str]]:
    """module name -> adapters on it."""
    return {
        n: set(m.lora_A.keys())
        for n, m in model.named_modules()
        if isinstance(m, BaseTunerLayer) and len(m.lora_A)
    }


# ----------------------------------------------------------------------------------------------- registry


def _previous_target_regex(kinds: list[str], streams: list[str]) -> str:
    """adapters.target_regex as it was before the registry (Mochi only)."""
    modules = {
        "visual": {"q": "to_q", "k": "to_k", "v": "to_v", "out": r"to_out\.0"},
        "text": {"q": "add_q_proj", "k": "add_k_proj", "v": "add_v_proj", "out": "to_add_out"},
    }
    names = [modules[s][k] for s in streams for k in kinds]
    return r"^transformer_blocks\.\d+\.attn1\.(" + "|".join(names) + r")$"


def test_mochi_entry_reproduces_the_previous_targets_exactly() -> None:
    kind_sets = [list(c) for n in range(1, 5) for c in itertools.permutations(PROJECTIONS, n)]
    for kinds, streams in itertools.product(kind_sets, [["visual"], ["text"], ["visual", "text"]]):
        assert target_regex(kinds, streams) == _previous_target_regex(kinds, streams)
        assert target_regex(kinds, streams, MOCHI) == _previous_target_regex(kinds, streams)
    torch.manual_seed(0)
    model = MochiTransformer3DModel(**MOCHI_TINY)
    add_relation_adapters(model, AdapterConfig())
    expected = paper_placement_targets(MOCHI_TINY["num_layers"])
    assert lora_targets(model) == expected


def test_get_backbone_by_class_name_and_container() -> None:
    torch.manual_seed(0)
    assert get_backbone(MochiTransformer3DModel(**MOCHI_TINY)) is MOCHI
    wan = tiny_wan()
    assert get_backbone(wan) is WAN
    assert get_backbone("wan") is WAN and get_backbone("Mochi") is MOCHI and get_backbone(WAN) is WAN
    assert get_backbone(SimpleNamespace(transformer=wan)) is WAN  # a pipeline-like object
    with pytest.raises(ValueError, match="unknown backbone"):
        get_backbone("sora")
    with pytest.raises(ValueError, match="no registered backbone"):
        get_backbone(torch.nn.Linear(2, 2))


def test_wan_stream_mapping() -> None:
    model = tiny_wan()
    add_relation_adapters(model, AdapterConfig())
    expected: dict[str, set[str]] = {}
    for i in range(WAN_TINY["num_layers"]):
        b = f"blocks.{i}."
        expected |= {b + "attn1.to_q": {"relation"}, b + "attn1.to_k": {"relation"}}
        expected |= {b + "attn2.to_k": {"relation"}}  # text keys
        expected |= {b + "attn1.to_v": {"subject1", "subject2"}, b + "attn2.to_v": {"subject1", "subject2"}}
        expected[b + "attn1.to_out.0"] = {"output"}
    assert lora_targets(model) == expected

    visual = tiny_wan()
    add_relation_adapters(visual, AdapterConfig(streams=["visual"]))
    assert not any(".attn2." in n for n in lora_targets(visual))
    with pytest.raises(ValueError, match="no module"):
        add_relation_adapters(tiny_wan(), AdapterConfig(streams=["text"], placement={"x": ["q"]}))


def test_wan_latent_mask_geometry() -> None:
    masks = torch.zeros(2, FRAMES, PIXELS, PIXELS + 16, dtype=torch.bool)
    masks[0, 1:5, :8, :8] = True  # frames 1-4: the second latent frame's group
    latent = latent_masks(masks, backbone="wan")
    assert latent.shape == (2, 3, 4, 6)
    assert torch.equal(latent, latent_masks(masks, spatial=8, temporal=4))
    assert latent[0, 1, 0, 0] == 1.0 and latent[0, 2].sum() == 0 and latent[0, 0].sum() == 0
    assert latent_frame_count(81, backbone=tiny_wan()) == 21
    with pytest.raises(ValueError, match="4k\\+1"):
        latent_frame_count(61 + 1, backbone="wan")
    assert WAN.latent_shape(16, 81, 480, 832) == (16, 21, 60, 104)


def test_wan_vae_normalisation_inverts_the_pipeline_decode() -> None:
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[0.5, 2.0, 1.0, 1.5],
    )
    mean, std, scaling = latent_normalisation(vae)
    assert scaling == 1.0 and mean.shape == (4, 1, 1, 1)
    frames = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    latent, _ = encode_video(vae, frames)
    assert latent.shape == (4, 2, 2, 2)
    # WanPipeline before decoding: latents / (1 / std) + mean
    raw = latent[None] / (1.0 / torch.tensor(vae.config.latents_std).view(1, 4, 1, 1, 1))
    raw = raw + torch.tensor(vae.config.latents_mean).view(1, 4, 1, 1, 1)
    video = torch.from_numpy(frames).float().div(127.5).sub(1.0).permute(3, 0, 1, 2)[None]
    with torch.no_grad():
        posterior = vae.encode(video).latent_dist.mean
    assert torch.allclose(raw, posterior, atol=1e-5)


# ----------------------------------------------------------------------------------------------- training


def wan_samples(n: int = 3) -> list[TrainingSample]:
    """Random Wan latents (4 channels) with latent masks made from pixel masks by Wan's geometry."""
    g = torch.Generator().manual_seed(1)
    pixel = torch.zeros(2, FRAMES, PIXELS, PIXELS, dtype=torch.bool)
    pixel[0, :, : PIXELS // 2] = True  # subject 1 on top, subject 2 at the bottom
    pixel[1, :, PIXELS // 2 + 4 :] = True
    masks = latent_masks(pixel, backbone="wan")
    c, f, h, w = WAN.latent_shape(4, FRAMES, PIXELS, PIXELS)
    return [
        TrainingSample(
            latents=torch.randn(c, f, h, w, generator=g),
            prompt_embeds=torch.randn(8, 32, generator=g),
            prompt_mask=torch.arange(8) < 6,
            masks=masks,
            latent_logvar=torch.full((c, f, h, w), -4.0),
            name=f"video{i}",
        )
        for i in range(n)
    ]


def small(steps: int) -> TrainConfig:
    cfg = TrainConfig()  # HMT + RCL + all four roles on both streams
    cfg.optim.steps = steps
    cfg.optim.warmup_steps = 1
    cfg.optim.batch_size = 2
    cfg.optim.lr = 1e-2
    cfg.optim.checkpoint_every = 2
    cfg.gradient_checkpointing = True
    return cfg


def test_wan_trains_with_every_feature_and_resumes_exactly(tmp_path) -> None:
    full = train_adapters(tiny_wan(), wan_samples(), small(4), tmp_path / "full", progress=False)
    assert len(full.losses) == 4 and all(math.isfinite(x) for x in full.losses)
    assert any(x > 0 for x in full.parts["mask"]) and any(x != 0 for x in full.parts["rcl"])
    assert {p.name for p in (tmp_path / "full" / "adapters").iterdir()} == {
        f"{r}.safetensors" for r in ("relation", "subject1", "subject2", "output")
    }
    fresh = tiny_wan()
    load_adapters(fresh, tmp_path / "full" / "adapters", ["relation", "output"])
    assert any(".attn2.to_k.lora_A.relation" in n for n, _ in fresh.named_parameters())

    first = tiny_wan()
    train_adapters(first, wan_samples(), small(2), tmp_path / "split", progress=False)
    resumed = train_adapters(
        tiny_wan(), wan_samples(), small(4), tmp_path / "split", progress=False, resume=True
    )
    assert resumed.start_step == 2
    assert resumed.losses == pytest.approx(full.losses, rel=1e-5, abs=1e-7)
    assert resumed.choices == full.choices


@pytest.mark.parametrize("choice", ["relation", "subject1", "subject2"])
def test_wan_gradients_reach_exactly_the_active_adapters(choice: str) -> None:
    model = tiny_wan()
    add_relation_adapters(model, AdapterConfig())
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():  # LoRA B starts at zero; give every weight a value so every gradient is nonzero
        for params in adapter_parameters(model).values():
            for p in params:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    roles = list(AdapterConfig().placement)
    active = roles_for_choice(choice, roles)
    set_active_roles(model, active)
    x = torch.randn(2, 4, 3, 4, 4, generator=g)
    pred = WAN.forward(
        model, x, torch.tensor([250.0, 700.0]), torch.randn(2, 8, 32, generator=g), torch.ones(2, 8)
    )
    pred.square().mean().backward()
    for role, params in adapter_parameters(model).items():
        got = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params]
        assert all(got) if role in active else not any(got), (role, active)
    assert not any(p.grad is not None for n, p in model.named_parameters() if "lora_" not in n)


# ----------------------------------------------------------------------------------------------- flow


def wan_scheduler(steps: int) -> UniPCMultistepScheduler:
    """WanPipeline's scheduler (flow-prediction UniPC, shift 3 for 480p), timesteps set as the pipeline does."""
    sch = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000
    )
    sch.set_timesteps(steps)
    sch.set_begin_index(0)
    return sch


def test_wan_scheduler_integrates_the_training_target_exactly() -> None:
    """With the exact Wan velocity, stepping the scheduler stays on the states flow_matching_inputs trains on
    (the timestep fed is sigma * 1000) and ends at z; the Mochi sign does not."""
    g = torch.Generator().manual_seed(1)
    z, eps = torch.randn(1, 4, 2, 4, 4, generator=g), torch.randn(1, 4, 2, 4, 4, generator=g)
    noisy, t, target, sigma = flow_matching_inputs(z, torch.Generator().manual_seed(2), WAN.flow)
    assert torch.allclose(t, sigma * 1000)
    assert torch.allclose(noisy - sigma.view(-1, 1, 1, 1, 1) * target, z, atol=1e-5)  # x0 = x - sigma v
    ends = {}
    for name, flow in (("wan", WAN.flow), ("mochi", MOCHI.flow)):
        sch = wan_scheduler(16)
        x = eps.clone()
        for i, step_t in enumerate(sch.timesteps):
            s = float(sch.sigmas[i])
            assert abs(float(step_t) - flow.timestep(torch.tensor(s)).item()) <= 1.0 or name == "mochi"
            if name == "wan":
                assert torch.allclose(x, (1 - s) * z + s * eps, atol=1e-4)
            x = sch.step(flow.target(z, eps), step_t, x, return_dict=False)[0]
        ends[name] = (x - z).abs().max().item()
    assert ends["wan"] < 1e-4 and ends["mochi"] > 0.5, ends


def test_tiny_wan_trained_with_the_flow_objective_samples_its_training_latent() -> None:
    """Overfit one latent with Wan's flow objective, denoise as WanPipeline does (UniPC, t.expand(B)):
    lands near the latent; with the target's sign flipped it does not."""
    errors = {}
    for sign in (1.0, -1.0):
        model = tiny_wan()
        g = torch.Generator().manual_seed(0)
        z = torch.randn(1, 4, 2, 4, 4, generator=g)
        emb = torch.randn(1, 8, 32, generator=g)
        mask = torch.ones(1, 8)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        steps, batch = 400, 8
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(steps):
            noisy, t, target, _ = flow_matching_inputs(z.expand(batch, -1, -1, -1, -1), g, WAN.flow)
            pred = WAN.forward(model, noisy, t, emb.expand(batch, -1, -1), mask.expand(batch, -1))
            loss = (pred - sign * target).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        sch = wan_scheduler(20)
        x = torch.randn(4, 4, 2, 4, 4, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            for t in sch.timesteps:
                v = WAN.forward(model, x, t.expand(4), emb.expand(4, -1, -1), mask.expand(4, -1))
                x = sch.step(v, t, x, return_dict=False)[0]
        errors[sign] = (x - z).square().mean(dim=(1, 2, 3, 4))
    assert errors[1.0].max() < 0.15, errors  # z has variance ~1
    assert errors[-1.0].min() > 1.0, errors


def test_tiny_wan_pipeline_prepares_samples_that_train(tmp_path) -> None:
    """prepare_samples on a WanPipeline: Wan VAE normalisation, zero-padded T5 states with their mask, 4k+1
    latent masks; the samples then train."""
    from diffusers import WanPipeline

    from dreamrelation.data.prepare import prepare_samples
    from dreamrelation.toy.backbone import ToyBackboneConfig, build_text_encoder, build_tokenizer, toy_words

    tokenizer = build_tokenizer(toy_words())
    encoder = build_text_encoder(len(tokenizer), ToyBackboneConfig(text_dim=32))
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=encoder,
        transformer=tiny_wan(),
        vae=vae,
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True),
    )
    pipe.prompt_length = 24  # WanPipeline's 512 tokens, shortened for the test
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 255, (FRAMES, PIXELS, PIXELS, 3), dtype=np.uint8) for _ in range(2)]
    masks = [np.zeros((2, FRAMES, PIXELS, PIXELS), dtype=bool) for _ in range(2)]
    for m in masks:
        m[0, :, :16], m[1, :, 16:] = True, True
    captions = ["a red circle is shaking hands with a blue square", "a circle"]
    samples = prepare_samples(pipe, videos, captions, masks)
    assert samples[0].latents.shape == (4, 3, 4, 4) and samples[0].masks.shape == (2, 3, 4, 4)
    assert samples[0].prompt_embeds.shape == (24, 32)
    for s in samples:  # WanPipeline zero-pads after the last token; the mask says where
        n = int(s.prompt_mask.sum())
        assert 0 < n < 24 and not s.prompt_embeds[n:].any() and s.prompt_embeds[:n].abs().sum(-1).all()
    result = train_adapters(pipe.transformer, samples, small(2), tmp_path, progress=False)
    assert all(math.isfinite(x) for x in result.losses)
