"""Colour tracker and relation classifier on freshly rendered toy videos (clean and VAE-like degraded)."""

from collections import defaultdict

import numpy as np
import pytest

from dreamrelation.toy.render import render_video
from dreamrelation.toy.tracker import (
    CLASSIFIER_SEED,
    classify_relation,
    degrade_video,
    evaluate_video,
    mask_centroids,
    score_appearance,
    score_leakage,
    temporal_consistency,
    track_subjects,
)
from dreamrelation.toy.world import RELATION_NAMES, SubjectSpec, VideoSpec, sample_video_spec

EXEMPLARS = (SubjectSpec("person", "skin", 5.0), SubjectSpec("person", "slate", 5.0))


def _accuracy(per_relation: int, seed: int, degrade: bool) -> dict[str, float]:
    assert seed != CLASSIFIER_SEED
    rng = np.random.default_rng(seed)
    hits: dict[str, list[bool]] = defaultdict(list)
    for name in RELATION_NAMES:
        for _ in range(per_relation):
            spec = sample_video_spec(rng, relations=[name], person_prob=0.3)
            frames = render_video(spec).frames
            if degrade:
                frames = degrade_video(frames, rng, blur_sigma=1.0, noise_std=8.0, pool=4)
            track = track_subjects(frames, spec.subjects)
            predicted, _ = classify_relation(track.trajectories())
            hits[name].append(bool(track.tracked_fraction.min() >= 0.5 and predicted == name))
    return {name: float(np.mean(h)) for name, h in hits.items()}


def _report(label: str, acc: dict[str, float], capsys: pytest.CaptureFixture[str]) -> float:
    overall = float(np.mean(list(acc.values())))
    with capsys.disabled():
        print(f"\n[{label}] overall relation accuracy {overall:.3f}")
        for name, value in acc.items():
            print(f"  {name:18s} {value:.2f}")
    return overall


def test_relation_accuracy_clean(capsys: pytest.CaptureFixture[str]) -> None:
    acc = _accuracy(per_relation=22, seed=1234, degrade=False)  # 220 videos
    assert _report("clean, 220 videos", acc, capsys) >= 0.9
    assert min(acc.values()) >= 0.7


def test_relation_accuracy_degraded(capsys: pytest.CaptureFixture[str]) -> None:
    acc = _accuracy(per_relation=10, seed=4321, degrade=True)  # 100 videos: blur + noise + 4x4 pool
    assert _report("degraded (blur 1, noise 8, 4x4 pool), 100 videos", acc, capsys) >= 0.75


def test_tracker_centroids_match_ground_truth() -> None:
    rng = np.random.default_rng(99)
    for _ in range(10):
        spec = sample_video_spec(rng, relations=RELATION_NAMES, person_prob=0.5)
        video = render_video(spec)
        track = track_subjects(video.frames, spec.subjects)
        assert track.found.all()
        assert not (track.masks & ~video.masks).any(), "no false-positive pixels on clean video"
        # specks split off by occlusion may be dropped (largest-component cleaning); centroids stay close
        assert track.masks.sum() >= 0.97 * video.masks.sum()
        np.testing.assert_allclose(track.centroids, mask_centroids(video.masks), atol=1.5)


def test_evaluate_video_fields_and_scores() -> None:
    spec = VideoSpec(
        "orbiting", SubjectSpec("star", "red", 7.0), SubjectSpec("circle", "blue", 6.0), "textured", 5
    )
    frames = render_video(spec).frames
    result = evaluate_video(frames, spec, "orbiting", exemplar_subjects=EXEMPLARS)
    assert result["relation_correct"] and result["tracked"] and result["predicted_relation"] == "orbiting"
    assert result["appearance"] == 1.0 and result["shape_score"] == 1.0
    assert result["leakage"] == 0.0
    assert 0.5 < result["temporal_consistency"] <= 1.0
    wrong = evaluate_video(frames, spec, "pushing")
    assert not wrong["relation_correct"]


def test_leakage_detects_exemplar_appearance() -> None:
    # the video shows persons, but the prompt asked for a red star and a blue circle
    leaked = VideoSpec(
        "high_fiving", SubjectSpec("person", "skin", 5.5), SubjectSpec("person", "slate", 5.5), seed=2
    )
    frames = render_video(leaked).frames
    prompted = (SubjectSpec("star", "red"), SubjectSpec("circle", "blue"))
    leak = score_leakage(frames, EXEMPLARS, prompted)
    assert leak["colour_leakage"] == 1.0 and leak["leakage"] == 1.0
    appearance = score_appearance(frames, prompted)
    assert appearance["appearance"] == 0.0
    result = evaluate_video(frames, prompted, "high_fiving", exemplar_subjects=EXEMPLARS)
    assert not result["tracked"] and not result["relation_correct"]
    # persons painted in the prompted colours: shape leakage
    shaped = VideoSpec(
        "high_fiving", SubjectSpec("person", "skin", 5.5), SubjectSpec("person", "slate", 5.5), seed=2
    )
    recoloured = render_video(shaped)
    frames = recoloured.frames.copy()
    frames[recoloured.masks[0]] = prompted[0].rgb
    frames[recoloured.masks[1]] = prompted[1].rgb
    assert score_leakage(frames, EXEMPLARS, prompted)["shape_leakage"] > 0.8


def test_temporal_consistency() -> None:
    rng = np.random.default_rng(0)
    static = np.repeat(rng.integers(0, 255, (1, 16, 16, 3), dtype=np.uint8), 5, axis=0)
    assert temporal_consistency(static) == pytest.approx(1.0)
    noise = rng.integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    assert abs(temporal_consistency(noise)) < 0.2
