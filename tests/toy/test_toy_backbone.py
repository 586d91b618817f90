import numpy as np
import pytest
import torch
from diffusers import MochiPipeline

from dreamrelation.toy.backbone import analytic_latents, frames_to_tensor, tensor_to_frames
from dreamrelation.toy.pretrain import random_shape_clips


def test_analytic_latents_match_loop_reference():
    gen = torch.Generator().manual_seed(0)
    video = torch.rand(2, 3, 13, 16, 24, generator=gen) * 2 - 1
    latents = analytic_latents(video)
    assert latents.shape == (2, 12, 3, 2, 3)
    for b in range(2):
        for f, frame in enumerate((0, 6, 12)):
            for y in range(2):
                for x in range(3):
                    for c in range(3):
                        for dy in range(2):
                            for dx in range(2):
                                y0, x0 = 8 * y + 4 * dy, 8 * x + 4 * dx
                                expected = video[b, c, frame, y0 : y0 + 4, x0 : x0 + 4].mean()
                                got = latents[b, c * 4 + 2 * dy + dx, f, y, x]
                                assert torch.isclose(got, expected, atol=1e-6)


def test_analytic_latents_reject_bad_geometry():
    with pytest.raises(ValueError, match="6k\\+1"):
        analytic_latents(torch.zeros(1, 3, 8, 16, 16))


def test_frame_conversions_round_trip():
    frames = np.random.default_rng(0).integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    tensor = frames_to_tensor(frames)
    assert tensor.shape == (1, 3, 7, 8, 8) and tensor.min() >= -1 and tensor.max() <= 1
    assert np.array_equal(tensor_to_frames(tensor[0]), frames)


def test_random_shape_clips_are_seeded_and_in_range():
    a = random_shape_clips(2, 7, 32, torch.Generator().manual_seed(3))
    b = random_shape_clips(2, 7, 32, torch.Generator().manual_seed(3))
    assert a.shape == (2, 3, 7, 32, 32) and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    assert (a[:, :, 1:] != a[:, :, :-1]).any()  # shapes move


def test_bundle_round_trip_through_mochi_pipeline(tiny_bundle):
    pipe = MochiPipeline.from_pretrained(tiny_bundle)
    assert pipe.scheduler.config.invert_sigmas is True
    assert pipe.config.force_zeros_for_empty_prompt is True
    assert list(pipe.vae.config.latents_mean) == [0.1] * 12
    tokens = pipe.tokenizer("A red star is high-fiving with a blue circle.").input_ids
    assert pipe.tokenizer.unk_token_id not in tokens  # every toy word is in the vocabulary
    out = pipe(
        "A red star is high-fiving with a blue circle.",
        num_frames=13,
        height=32,
        width=32,
        num_inference_steps=2,
        guidance_scale=3.0,
        max_sequence_length=32,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    assert out.frames.shape == (1, 13, 32, 32, 3)
    assert np.isfinite(out.frames).all()
    again = MochiPipeline.from_pretrained(tiny_bundle)
    x = torch.randn(1, 12, 2, 4, 4)
    emb = torch.randn(1, 32, 32)
    mask = torch.ones(1, 32, dtype=torch.long)
    t = torch.tensor([500.0])
    with torch.no_grad():
        a = pipe.transformer(x, emb, t, mask, return_dict=False)[0]
        b = again.transformer(x, emb, t, mask, return_dict=False)[0]
    assert torch.equal(a, b)
