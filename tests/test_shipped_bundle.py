"""The shipped toy bundles (Mochi and Wan 2.1 classes) load through diffusers and their samples show the
prompted subjects moving."""

import numpy as np
import pytest

from dreamrelation.backbones.loading import load_pipeline
from dreamrelation.backbones.registry import TOY
from dreamrelation.inference.generate import generate_videos
from dreamrelation.toy import world
from dreamrelation.toy.tracker import track_subjects


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["mochi", "wan"])
def test_shipped_bundle_samples_show_prompted_subjects_moving(architecture: str) -> None:
    pipe = load_pipeline(TOY.bundles[architecture])
    assert pipe.transformer.config.in_channels == 12
    if architecture == "mochi":
        assert type(pipe).__name__ == "MochiPipeline" and pipe.scheduler.config.invert_sigmas
    else:
        assert (
            type(pipe).__name__ == "WanPipeline"
            and pipe.scheduler.config.prediction_type == "flow_prediction"
        )
    rng = np.random.default_rng(11)
    specs = [
        world.sample_video_spec(rng, relations=[r], person_prob=0.0) for r in ("approaching", "moving_away")
    ]
    specs += [world.sample_video_spec(rng, relations=["walking_alongside"], person_prob=0.0)]
    videos = generate_videos(pipe, [world.caption(s) for s in specs], [0, 1, 2], 32, 4.0)
    found, motion = [], []
    for spec, video in zip(specs, videos, strict=True):
        assert video.shape == (world.NUM_FRAMES, world.HEIGHT, world.WIDTH, 3)
        track = track_subjects(video, spec.subjects)
        found.append(track.tracked_fraction.mean())
        paths = track.trajectories()
        motion.append(np.nanmax(np.linalg.norm(paths[:, -1] - paths[:, 0], axis=-1)))
    # prompted colours present in most frames (a random-weight model scores ~0) and subjects move
    assert np.mean(found) >= 0.6, found
    assert np.median(motion) >= 4.0, motion
