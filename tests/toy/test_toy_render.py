"""Toy world renderer: exact masks, determinism, captions, speed, relation registry."""

import time

import numpy as np
import pytest

from dreamrelation.errors import UserError
from dreamrelation.toy.render import render_background, render_video, shape_mask
from dreamrelation.toy.world import (
    BASE_RELATIONS,
    COLOURS,
    HELD_OUT_RELATIONS,
    NUM_FRAMES,
    PERSON_COLOURS,
    RELATION_NAMES,
    SubjectSpec,
    VideoSpec,
    caption,
    caption_template,
    get_relation,
    sample_video_spec,
)


def _specs(n: int, seed: int = 0) -> list[VideoSpec]:
    rng = np.random.default_rng(seed)
    return [sample_video_spec(rng, relations=RELATION_NAMES, person_prob=0.3) for _ in range(n)]


def test_constants_and_registry() -> None:
    assert (NUM_FRAMES - 1) % 6 == 0
    assert len(BASE_RELATIONS) >= 5
    assert set(HELD_OUT_RELATIONS) == {"high_fiving", "jumping_over", "pushing", "orbiting"}
    assert not set(BASE_RELATIONS) & set(HELD_OUT_RELATIONS)
    assert all(get_relation(r).held_out for r in HELD_OUT_RELATIONS)
    assert not set(PERSON_COLOURS) & set(COLOURS)
    with pytest.raises(UserError, match="Unknown relation"):
        get_relation("dancing")


def test_default_sampling_uses_base_relations_only() -> None:
    rng = np.random.default_rng(1)
    specs = [sample_video_spec(rng) for _ in range(200)]
    assert {s.relation for s in specs} == set(BASE_RELATIONS)
    assert all(s.subject1.colour != s.subject2.colour for s in specs)


def test_masks_match_subject_pixels_exactly() -> None:
    for spec in _specs(60):
        video = render_video(spec)
        background = render_background(spec)
        assert video.frames.dtype == np.uint8 and video.frames.shape == (NUM_FRAMES, 64, 64, 3)
        assert video.masks.dtype == bool and video.masks.shape == (2, NUM_FRAMES, 64, 64)
        changed = (video.frames != background).any(axis=-1)
        assert np.array_equal(changed, video.masks[0] | video.masks[1])
        assert not (video.masks[0] & video.masks[1]).any()
        for k, subj in enumerate(spec.subjects):
            assert (video.frames[video.masks[k]] == subj.rgb).all()
            assert video.masks[k].any(axis=(1, 2)).all(), "every subject visible in every frame"


def test_subject1_on_top_where_shapes_overlap() -> None:
    rng = np.random.default_rng(3)
    ys, xs = np.mgrid[0:64, 0:64]
    overlap_pixels = 0
    for _ in range(30):
        spec = sample_video_spec(rng, relations=["jumping_over", "orbiting", "high_fiving"])
        video = render_video(spec)
        for t in range(NUM_FRAMES):
            full = [
                shape_mask(
                    s.shape, xs - video.trajectories[k, t, 0], ys - video.trajectories[k, t, 1], s.size
                )
                for k, s in enumerate(spec.subjects)
            ]
            both = full[0] & full[1]
            overlap_pixels += int(both.sum())
            assert video.masks[0, t][both].all() and not video.masks[1, t][both].any()
            assert np.array_equal(video.masks[0, t], full[0])
    assert overlap_pixels > 0


def test_deterministic_per_seed_and_varies_across_seeds() -> None:
    spec = _specs(1, seed=5)[0]
    a, b = render_video(spec), render_video(spec)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.masks, b.masks)
    assert np.array_equal(a.trajectories, b.trajectories)
    other = render_video(VideoSpec(spec.relation, spec.subject1, spec.subject2, spec.scene, spec.seed + 1))
    assert not np.array_equal(a.trajectories, other.trajectories)


def test_motion_is_slow_and_in_frame() -> None:
    for spec in _specs(100, seed=7):
        traj = render_video(spec).trajectories
        speed = np.linalg.norm(np.diff(traj, axis=1), axis=-1)
        assert speed.max() < 4.0, spec
        assert (traj >= 0).all() and (traj <= 63).all()


def test_backgrounds_are_dark_and_low_contrast() -> None:
    for scene in ("plain", "gradient", "textured"):
        for seed in range(10):
            spec = VideoSpec(
                "approaching", SubjectSpec("circle", "red"), SubjectSpec("star", "blue"), scene, seed
            )
            bg = render_background(spec)[0].astype(float)
            assert bg.max() <= 90 and bg.std() < 20


def test_captions() -> None:
    spec = VideoSpec("high_fiving", SubjectSpec("star", "red"), SubjectSpec("circle", "blue"))
    assert caption(spec) == "A red star is high-fiving with a blue circle."
    spec = VideoSpec("high_fiving", SubjectSpec("person", "skin"), SubjectSpec("person", "slate"))
    assert caption(spec) == "A person is high-fiving with a person."
    spec = VideoSpec("jumping_over", SubjectSpec("cross", "orange"), SubjectSpec("square", "orange"))
    assert caption(spec) == "An orange cross is jumping over an orange square."
    assert caption_template("high_fiving") == "A {subject1} is high-fiving with a {subject2}."
    assert render_video(spec).caption == caption(spec)
    for name in RELATION_NAMES:
        assert "{subject1}" in caption_template(name) and "{subject2}" in caption_template(name)


def test_render_is_fast() -> None:
    specs = _specs(40, seed=11)
    render_video(specs[0])
    start = time.perf_counter()
    for spec in specs:
        render_video(spec)
    assert (time.perf_counter() - start) / len(specs) < 0.05
