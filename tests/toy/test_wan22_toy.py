"""The toy world on Wan 2.2 TI2V-5B's layout: the 48-channel analytic latent, pretraining for text- and
image-to-video, and the image-to-video jobs of the toy benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny import TINY_MOCHI_TOY, TINY_WAN22_TOY

import dreamrelation.toy.pretrain as pretrain_module
from dreamrelation.backbones.loading import load_pipeline
from dreamrelation.backbones.registry import WAN22, backbone_of_model_dir
from dreamrelation.errors import UserError
from dreamrelation.evaluation.toy_study import (
    ToyExperimentConfig,
    generate_jobs,
    make_jobs,
    relation_still,
    toy_recipe,
)
from dreamrelation.inference.generate import Sampling, generate_videos
from dreamrelation.toy import world
from dreamrelation.toy.backbone import (
    analytic_decode,
    analytic_latents,
    build_text_encoder,
    build_transformer,
)
from dreamrelation.toy.pretrain import (
    CaptionSet,
    PretrainConfig,
    pretrain,
    train_transformer,
)


def test_wan22_analytic_latent_packs_16_subcells_per_16x16_cell() -> None:
    gen = torch.Generator().manual_seed(0)
    video = torch.rand(1, 3, 9, 32, 48, generator=gen) * 2 - 1
    latents = analytic_latents(video, temporal=4, spatial=16)
    assert latents.shape == (1, 48, 3, 2, 3)
    for f, c, dy, dx, y, x in ((0, 0, 0, 0, 0, 0), (1, 1, 3, 2, 1, 2), (2, 2, 1, 3, 0, 1)):
        y0, x0 = 16 * y + 4 * dy, 16 * x + 4 * dx
        expected = video[0, c, 4 * f, y0 : y0 + 4, x0 : x0 + 4].mean()
        assert torch.isclose(latents[0, c * 16 + 4 * dy + dx, f, y, x], expected, atol=1e-6)
    # the decoder's reference inverts it on keyframes that are constant over 4x4 sub-cells
    blocky = F.interpolate(torch.rand(3, 3, 8, 12, generator=gen), scale_factor=4, mode="nearest")
    keyframes = blocky.permute(1, 0, 2, 3)[None]  # (1, 3, F=3, 32, 48)
    decoded = analytic_decode(analytic_latents(keyframes.repeat_interleave(4, 2)[:, :, 3:], 4, 16), 4)
    assert torch.allclose(decoded[:, :, ::4], keyframes, atol=1e-6)
    with pytest.raises(ValueError, match="multiples of 16"):
        analytic_latents(video[..., :40], 4, 16)


def _caption_set(n: int, length: int = 8) -> CaptionSet:
    ids = torch.randint(3, 40, (n, length), generator=torch.Generator().manual_seed(1))
    masks = torch.ones(n, length, dtype=torch.long)
    return CaptionSet(ids, masks, ids[0] * 0, masks[0], zero_dropped=False)


def test_image_conditioned_pretraining_step_feeds_the_clean_first_frame_and_skips_its_loss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = PretrainConfig(
        transformer_steps=1, transformer_batch=2, image_condition_prob=1.0, backbone=TINY_WAN22_TOY
    )
    latents = torch.randn(4, 48, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    text_encoder = build_text_encoder(40, TINY_WAN22_TOY)
    seen = {}

    def record(module, args, kwargs, output):  # observes the real transformer's call
        seen.update(x=kwargs["hidden_states"].detach(), t=kwargs["timestep"].detach(), out=output[0].detach())

    def build_observed(*args, **kwargs):
        transformer = build_transformer(*args, **kwargs)
        transformer.register_forward_hook(record, with_kwargs=True)
        return transformer

    monkeypatch.setattr(pretrain_module, "build_transformer", build_observed)
    _, _, log = train_transformer(cfg, latents, _caption_set(4), text_encoder, progress=False)
    x, t, out = seen["x"], seen["t"], seen["out"]
    tokens_per_frame = (4 // 2) * (4 // 2)
    assert torch.all(t[:, :tokens_per_frame] == 0) and torch.all(t[:, tokens_per_frame:] > 0)
    # the first frame is one of the clean latents; the others are noised at sigma = t / 1000
    first = x[:, :, 0]
    assert all(any(torch.equal(f, latents[i, :, 0]) for i in range(4)) for f in first)
    sigma = t[:, -1].view(-1, 1, 1, 1, 1) / 1000.0
    clean = torch.stack([latents[i] for i in _matching(first, latents)])
    eps = (x - (1 - sigma) * clean) / sigma
    target = eps - clean  # Wan's flow target
    expected = F.mse_loss(out[:, :, 1:], target[:, :, 1:]).item()
    assert log[0] == pytest.approx(expected, rel=1e-3)
    assert abs(F.mse_loss(out, target).item() - expected) > 1e-3  # frame 0 would change the loss


def _matching(first: torch.Tensor, latents: torch.Tensor) -> list[int]:
    return [next(i for i in range(len(latents)) if torch.equal(f, latents[i, :, 0])) for f in first]


def test_image_conditioned_pretraining_is_refused_for_a_text_only_toy() -> None:
    cfg = PretrainConfig(transformer_steps=1, image_condition_prob=0.5, backbone=TINY_MOCHI_TOY)
    with pytest.raises(UserError, match="wan22"):
        train_transformer(
            cfg, torch.zeros(2, 12, 2, 8, 8), _caption_set(2), build_text_encoder(40, TINY_MOCHI_TOY)
        )


def test_wan22_toy_pretrains_to_a_bundle_that_samples_from_an_image(tmp_path: Path) -> None:
    cfg = PretrainConfig(
        vae_steps=2,
        vae_long_steps=0,
        num_videos=4,
        transformer_steps=2,
        transformer_batch=2,
        image_condition_prob=0.5,
        backbone=TINY_WAN22_TOY,
    )
    bundle = pretrain(tmp_path / "bundle", cfg, work_dir=tmp_path / "work", progress=False)
    assert backbone_of_model_dir(bundle) is WAN22
    assert (tmp_path / "work" / "pretraining_set_4_seed0_t4_s16.pt").is_file()
    pipe = load_pipeline(bundle)
    assert pipe.vae.config.z_dim == 48 and pipe.config.expand_timesteps
    still = relation_still(
        "high_fiving", (world.SubjectSpec("star", "red"), world.SubjectSpec("circle", "blue")), 0
    )
    (video,) = generate_videos(
        pipe,
        ["A red star is high-fiving with a blue circle."],
        [0],
        Sampling(2, 1.0),
        image=Image.fromarray(still),
    )
    assert video.shape == (world.NUM_FRAMES, world.HEIGHT, world.WIDTH, 3)


def test_image_to_video_jobs_start_from_a_still_of_their_subjects() -> None:
    subjects = [["star", "red", "circle", "blue"], ["square", "green", "cross", "yellow"]]
    jobs = make_jobs("high_fiving", subjects, [0, 1], stills=True)
    assert [j.image is not None for j in jobs] == [True] * 4
    assert jobs[0].image is jobs[1].image and not np.array_equal(jobs[0].image, jobs[2].image)
    assert all(j.image is None for j in make_jobs("high_fiving", subjects, [0]))
    for job in jobs[::2]:
        colours = {tuple(c) for c in job.image.reshape(-1, 3)}
        for subject in job.subjects:  # both subjects drawn, apart: each colour's pixels in its own half
            assert subject.rgb in colours
        xs = [np.nonzero((job.image == s.rgb).all(-1))[1].mean() for s in job.subjects]
        assert abs(xs[0] - xs[1]) > 16


def test_image_jobs_generate_as_one_call_per_job_would(tiny_wan22_bundle: Path) -> None:
    pipe = load_pipeline(tiny_wan22_bundle)
    jobs = make_jobs(
        "pushing",
        [["star", "red", "circle", "blue"], ["square", "green", "cross", "yellow"]],
        [0, 3],
        stills=True,
    )
    batched = generate_jobs(pipe, jobs, steps=2, guidance=1.0)
    for job, video in zip(jobs, batched, strict=True):
        (alone,) = generate_videos(
            pipe, [job.prompt], [job.seed], Sampling(2, 1.0), image=Image.fromarray(job.image)
        )
        assert np.abs(alone.astype(int) - video.astype(int)).max() <= 1


def test_image_to_video_experiments_train_with_image_steps() -> None:
    cfg = ToyExperimentConfig(image_to_video=True, i2v_probability=0.3)
    assert toy_recipe("dreamrelation", cfg).i2v.probability == 0.3
    assert toy_recipe("dreamrelation", ToyExperimentConfig()).i2v.probability == 0.0


def test_vae_stage_fine_tunes_from_a_saved_vae_on_long_crops(tmp_path: Path, monkeypatch) -> None:
    from dreamrelation.toy.pretrain import extend_vae, train_vae

    base = PretrainConfig(vae_steps=1, vae_batch=1, vae_frames=5, backbone=TINY_WAN22_TOY)
    vae, _ = train_vae(base, tmp_path / "first", progress=False)
    vae.save_pretrained(tmp_path / "saved" / "vae")
    again, _ = train_vae(
        PretrainConfig(vae_steps=0, vae_init_from=str(tmp_path / "saved"), backbone=TINY_WAN22_TOY),
        tmp_path / "second",
        progress=False,
    )
    for name, weight in vae.state_dict().items():
        assert torch.equal(again.state_dict()[name], weight), name
    sizes = []
    clips = pretrain_module.random_shape_clips
    monkeypatch.setattr(
        pretrain_module,
        "random_shape_clips",
        lambda b, f, size, gen: sizes.append((b, f, size)) or clips(b, f, size, gen),
    )
    long = PretrainConfig(vae_long_steps=1, vae_long_batch=1, vae_long_crop=64, backbone=TINY_WAN22_TOY)
    extend_vae(again, long, tmp_path / "second", progress=False)
    assert sizes == [(1, world.NUM_FRAMES, 64)]
    with pytest.raises(UserError, match="no VAE there"):
        train_vae(
            PretrainConfig(vae_init_from=str(tmp_path / "nothing"), backbone=TINY_WAN22_TOY), tmp_path, False
        )
