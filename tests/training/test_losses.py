"""Losses and latent masks against independent loop-based computations; flow-matching sign/timestep check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, MochiTransformer3DModel
from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule

from dreamrelation.data.latent_masks import latent_masks
from dreamrelation.training.losses import (
    RelationalContrastiveLoss,
    flow_matching_inputs,
    hybrid_loss,
    masked_mse,
    shift_sigmas,
)

# ------------------------------------------------------------------------------------------ flow matching


def test_flow_matching_inputs_follow_the_mochi_convention() -> None:
    z = torch.randn(64, 3, 2, 4, 4)
    noisy, timestep, target, sigma = flow_matching_inputs(z, torch.Generator().manual_seed(0))
    assert sigma.shape == (64,) and bool((sigma >= 0).all() and (sigma < 1).all())
    assert torch.allclose(timestep, (1 - sigma) * 1000)
    eps = z - target
    s = sigma.view(-1, 1, 1, 1, 1)
    assert torch.allclose(noisy, (1 - s) * z + s * eps, atol=1e-6)
    assert abs(eps.std().item() - 1) < 0.05  # eps is the Gaussian noise


def test_shifted_noise_levels_are_the_sd3_shift_of_the_same_draws() -> None:
    z = torch.randn(4096, 1, 1, 1, 1)
    _, _, target, plain = flow_matching_inputs(z, torch.Generator().manual_seed(0))
    _, timestep, shifted_target, shifted = flow_matching_inputs(
        z, torch.Generator().manual_seed(0), shift=3.0
    )
    torch.testing.assert_close(shifted, 3 * plain / (1 + 2 * plain))  # same uniform draws, shifted
    assert torch.equal(target, shifted_target)  # the same noise follows: only the level moves
    assert torch.allclose(timestep, (1 - shifted) * 1000)
    assert abs(shifted.median().item() - 0.75) < 0.02 and abs(plain.median().item() - 0.5) < 0.02
    assert torch.equal(shift_sigmas(plain, 1.0), plain)
    ends = shift_sigmas(torch.tensor([0.0, 1.0]), 5.0)
    assert ends.tolist() == [0.0, 1.0]


def test_pipeline_scheduler_integrates_the_training_target_exactly() -> None:
    """With the exact velocity v = z - eps, stepping the pipeline's scheduler lands on the states
    flow_matching_inputs would produce at every fed timestep, and ends at z."""
    g = torch.Generator().manual_seed(1)
    z, eps = torch.randn(1, 12, 2, 4, 4, generator=g), torch.randn(1, 12, 2, 4, 4, generator=g)
    sch = FlowMatchEulerDiscreteScheduler(invert_sigmas=True)
    sch.set_timesteps(sigmas=np.array(linear_quadratic_schedule(16, 0.025)))
    sch.set_begin_index(0)
    x = eps.clone()
    for t in sch.timesteps:
        noise_level = 1 - t / 1000  # what flow_matching_inputs calls sigma for this model timestep
        assert torch.allclose(x, (1 - noise_level) * z + noise_level * eps, atol=1e-5)
        x = sch.step(z - eps, t, x, return_dict=False)[0]
    assert torch.allclose(x, z, atol=1e-5)


@pytest.mark.slow
def test_tiny_model_trained_with_flow_matching_samples_its_training_latent() -> None:
    """Overfit one latent with flow_matching_inputs, sample like MochiPipeline: lands near the latent;
    with the target's sign flipped it does not."""
    cfg = dict(
        num_layers=2,
        num_attention_heads=4,
        attention_head_dim=16,
        pooled_projection_dim=16,
        in_channels=12,
        text_embed_dim=32,
        time_embed_dim=16,
        patch_size=2,
        max_sequence_length=16,
    )
    errors = {}
    for sign in (1.0, -1.0):
        torch.manual_seed(0)
        model = MochiTransformer3DModel(**cfg)
        g = torch.Generator().manual_seed(0)
        z = torch.randn(1, 12, 2, 4, 4, generator=g)
        emb, emask = torch.randn(1, 4, 32, generator=g), torch.ones(1, 4, dtype=torch.bool)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        steps, batch = 300, 8
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(steps):
            noisy, t, target, _ = flow_matching_inputs(z.expand(batch, -1, -1, -1, -1), g)
            pred = model(noisy, emb.expand(batch, -1, -1), t, emask.expand(batch, -1), return_dict=False)[0]
            loss = (pred - sign * target).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        # the pipeline's denoising loop (no CFG)
        sch = FlowMatchEulerDiscreteScheduler(invert_sigmas=True)
        sch.set_timesteps(sigmas=np.array(linear_quadratic_schedule(32, 0.025)))
        sch.set_begin_index(0)
        x = torch.randn(4, 12, 2, 4, 4, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            for t in sch.timesteps:
                v = model(x, emb.expand(4, -1, -1), t.expand(4), emask.expand(4, -1), return_dict=False)[0]
                x = sch.step(v, t, x, return_dict=False)[0]
        errors[sign] = (x - z).square().mean(dim=(1, 2, 3, 4))
    assert errors[1.0].max() < 0.15, errors  # z has variance ~1
    assert errors[-1.0].min() > 1.0, errors


# ------------------------------------------------------------------------------------------- mask losses


def test_masked_and_hybrid_loss_match_a_loop() -> None:
    g = torch.Generator().manual_seed(2)
    b, c, f, h, w = 2, 3, 2, 2, 3
    pred, target = torch.randn(b, c, f, h, w, generator=g), torch.randn(b, c, f, h, w, generator=g)
    mask = (torch.rand(b, f, h, w, generator=g) > 0.5).float() * 0.5 + 0.25  # values 0.25 / 0.75

    plain = masked = 0.0
    n = 0
    for i in range(b):
        for ch in range(c):
            for t in range(f):
                for y in range(h):
                    for x in range(w):
                        d = float(pred[i, ch, t, y, x]) - float(target[i, ch, t, y, x])
                        m = float(mask[i, t, y, x])
                        plain += d * d
                        masked += (d * m) ** 2
                        n += 1
    assert math.isclose(masked_mse(pred, target, mask).item(), masked / n, rel_tol=1e-5)
    assert math.isclose(
        hybrid_loss(pred, target, mask, 50.0).item(), plain / n + 50 * masked / n, rel_tol=1e-5
    )


# --------------------------------------------------------------------------------------- contrastive loss


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _reference_rcl(pred: torch.Tensor, bank_pos: list, bank_neg: list, tau: float) -> float:
    """Straightforward per-anchor multi-positive InfoNCE with Python lists."""
    b, c, f, h, w = pred.shape
    pooled = [[[sum(float(pred[i, ch, t, y, x]) for y in range(h) for x in range(w)) / (h * w)
                for ch in range(c)] for t in range(f)] for i in range(b)]  # fmt: skip
    diffs = [
        [[pooled[i][t + 1][ch] - pooled[i][t][ch] for ch in range(c)] for t in range(f - 1)] for i in range(b)
    ]
    negatives = [pooled[i][t] for i in range(b) for t in range(f)] + bank_neg
    losses = []
    for i in range(b):
        for t in range(f - 1):
            anchor = _unit(diffs[i][t])
            positives = [video[t] for video in bank_pos] + [diffs[k][t] for k in range(b) if k != i]
            pos = [_dot(anchor, _unit(p)) / tau for p in positives]
            neg = [_dot(anchor, _unit(q)) / tau for q in negatives]
            every = pos + neg
            losses.append(math.log(sum(math.exp(x) for x in every)) - math.log(sum(math.exp(x) for x in pos)))
    return sum(losses) / len(losses)


def test_contrastive_loss_matches_a_loop_with_bank_and_batch() -> None:
    g = torch.Generator().manual_seed(4)
    b, c, f = 2, 5, 4
    pred = torch.randn(b, c, f, 3, 2, generator=g)
    bank_pos = torch.randn(3, f - 1, c, generator=g)
    bank_neg = torch.randn(6, c, generator=g)
    rcl = RelationalContrastiveLoss(temperature=0.07, n_pos=4, n_neg=10, pos_bank=10, neg_bank=64)
    rcl.load_state_dict({"pos": bank_pos, "neg": bank_neg})  # banks smaller than n_pos/n_neg: all used
    got = rcl(pred).item()
    want = _reference_rcl(pred, bank_pos.tolist(), bank_neg.tolist(), 0.07)
    assert math.isclose(got, want, rel_tol=1e-4)


def test_contrastive_loss_in_batch_positives_only_and_empty_case() -> None:
    g = torch.Generator().manual_seed(5)
    pred = torch.randn(3, 4, 3, 2, 2, generator=g)
    rcl = RelationalContrastiveLoss()
    assert math.isclose(rcl(pred).item(), _reference_rcl(pred, [], [], 0.07), rel_tol=1e-4)

    single = RelationalContrastiveLoss()
    one = torch.randn(1, 4, 3, 2, 2, generator=g, requires_grad=True)
    loss = single(one)  # documented: no positive yet -> 0 (still differentiable)
    assert loss.item() == 0.0
    loss.backward()
    # ... but the video went into the banks, so the next one has a positive
    assert single.state_dict()["pos"].shape == (1, 2, 4) and single.state_dict()["neg"].shape == (3, 4)
    assert single(torch.randn(1, 4, 3, 2, 2, generator=g)).item() > 0


def test_contrastive_banks_are_fifo_sampled_and_restorable() -> None:
    g = torch.Generator().manual_seed(6)
    rcl = RelationalContrastiveLoss(n_pos=2, n_neg=3, pos_bank=3, neg_bank=5)
    preds = [torch.randn(2, 4, 3, 2, 2, generator=g) for _ in range(3)]
    for p in preds:
        rcl(p)
    state = rcl.state_dict()
    pooled = torch.cat([p.mean(dim=(3, 4)).transpose(1, 2) for p in preds])  # (6 videos, F, C)
    assert torch.allclose(state["pos"], (pooled[:, 1:] - pooled[:, :-1])[-3:])  # 3 newest videos
    assert torch.allclose(state["neg"], pooled.reshape(-1, 4)[-5:])  # 5 newest frames

    nxt = torch.randn(2, 4, 3, 2, 2, generator=g)
    copy = RelationalContrastiveLoss(n_pos=2, n_neg=3, pos_bank=3, neg_bank=5)
    copy.load_state_dict(state)
    a = rcl(nxt, torch.Generator().manual_seed(9))
    b = copy(nxt, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------- latent masks


def _reference_latent_masks(masks: torch.Tensor, spatial: int, temporal: int) -> torch.Tensor:
    s, t, h, w = masks.shape
    hh, ww = -(-h // spatial), -(-w // spatial)
    groups = [[0]] + [
        list(range(1 + k * temporal, 1 + (k + 1) * temporal)) for k in range((t - 1) // temporal)
    ]
    out = torch.zeros(s, len(groups), hh, ww)
    for si in range(s):
        for fi, frames in enumerate(groups):
            for y in range(hh):
                for x in range(ww):
                    hits = 0
                    for fr in frames:
                        cell = masks[si, fr, y * spatial : (y + 1) * spatial, x * spatial : (x + 1) * spatial]
                        hits += 1 if bool(cell.any()) else 0
                    out[si, fi, y, x] = hits / len(frames)
    return out


@pytest.mark.parametrize("size", [(16, 24), (20, 13)])
def test_latent_masks_match_a_loop(size: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(7)
    masks = torch.rand(2, 13, *size, generator=g) > 0.97  # sparse: single pixels must survive
    got = latent_masks(masks, spatial=8, temporal=6)
    assert got.shape == (2, 3, -(-size[0] // 8), -(-size[1] // 8))
    assert torch.allclose(got, _reference_latent_masks(masks, 8, 6))


def test_latent_masks_reject_frame_counts_the_vae_cannot_take() -> None:
    with pytest.raises(ValueError, match="6k\\+1"):
        latent_masks(torch.zeros(2, 12, 16, 16))
