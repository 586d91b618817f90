"""Building blocks of toy-world experiments, shared by the demo and the toy benchmark.

An experiment: render person exemplars of a relation and encode them -> for each method, train its
adapters, generate fixed (prompt, seed) jobs with new subjects, score them with the tracker -> summarise.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dreamrelation.adapters.triplet import load_adapters, set_active_roles
from dreamrelation.core.samples import TrainingSample
from dreamrelation.data.mask_io import write_colour_masks
from dreamrelation.data.prepare import null_prompt_for, prepare_samples
from dreamrelation.evaluation.report import bootstrap_ci, wilson_interval
from dreamrelation.inference.generate import Sampling, generate_videos
from dreamrelation.toy import world
from dreamrelation.toy.render import RenderedVideo, render_video
from dreamrelation.toy.tracker import evaluate_video, track_subjects
from dreamrelation.training.config import TrainConfig, preset
from dreamrelation.training.trainer import train_adapters
from dreamrelation.utils.io import atomic_write_text
from dreamrelation.utils.media import trajectory_panel, write_video

UNTUNED = "untuned"
SUMMARY_KEYS = ("relation_correct", "appearance", "leakage", "temporal_consistency")

# New subjects for generation: never a person, so never the exemplars' (person) colours; two different colours
# and shapes per prompt; every colour 4 times. The first four are the demo's prompts.
DEFAULT_SUBJECTS = [
    ["star", "red", "circle", "blue"],
    ["triangle", "yellow", "square", "green"],
    ["diamond", "cyan", "cross", "orange"],
    ["circle", "white", "star", "magenta"],
    ["square", "orange", "triangle", "red"],
    ["cross", "blue", "diamond", "yellow"],
    ["star", "green", "circle", "cyan"],
    ["triangle", "magenta", "square", "white"],
    ["diamond", "red", "star", "green"],
    ["circle", "orange", "cross", "magenta"],
    ["square", "blue", "triangle", "white"],
    ["cross", "yellow", "diamond", "cyan"],
    ["triangle", "red", "cross", "white"],
    ["star", "cyan", "square", "magenta"],
    ["diamond", "green", "circle", "orange"],
    ["square", "yellow", "star", "blue"],
]
BINARY_KEYS = frozenset({"relation_correct", "tracked"})
GENERATE_BATCH = 16  # jobs per pipeline call


@dataclass
class Job:
    """One video to generate: the prompt, its two subjects and the seed; ``image``: the first frame
    (image-to-video), else None (text-to-video)."""

    prompt: str
    subjects: tuple[world.SubjectSpec, world.SubjectSpec]
    seed: int
    image: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def stem(self) -> str:
        """A file-name stem naming the subjects and the seed."""
        s1, s2 = self.subjects
        return f"{s1.colour}-{s1.shape}_{s2.colour}-{s2.shape}_seed{self.seed}"


@dataclass
class Exemplars:
    """Rendered exemplars of one relation, encoded for training."""

    relation: str
    videos: list[np.ndarray]
    samples: list[TrainingSample]
    subjects: list[world.SubjectSpec]


def worded(caption: str, word: str = "") -> str:
    """``caption`` with its relation phrase replaced by ``word`` (a user's own word for the relation), if any."""
    return world.with_relation_word(caption, word) if word else caption


def make_jobs(
    relation: str,
    subjects: Sequence[Sequence[str]],
    seeds: Sequence[int],
    word: str = "",
    stills: bool = False,
) -> list[Job]:
    """Prompts with new subjects (``[shape1, colour1, shape2, colour2]`` each) x seeds; ``word`` replaces the
    relation phrase (see :func:`worded`). ``stills``: each prompt starts from :func:`relation_still` of its
    subjects (image-to-video), the same still for every seed."""
    jobs = []
    for index, (s1, c1, s2, c2) in enumerate(subjects):
        pair = (world.SubjectSpec(s1, c1), world.SubjectSpec(s2, c2))
        prompt = worded(world.caption(world.VideoSpec(relation, *pair)), word)
        image = relation_still(relation, pair, index) if stills else None
        jobs += [Job(prompt, pair, int(seed), image) for seed in seeds]
    return jobs


def relation_still(relation: str, subjects: Sequence[world.SubjectSpec], seed: int) -> np.ndarray:
    """The first frame ``(H, W, 3)`` of a rendered ``relation`` video of ``subjects`` on a plain background:
    the two subjects where the relation starts them, before it happens (the photo of an image-to-video job)."""
    spec = world.VideoSpec(relation, subjects[0], subjects[1], scene="plain", seed=int(seed))
    return render_video(spec).frames[0]


def write_exemplar_videos(
    relation: str, num: int, seed: int, out_dir: Path | None = None, word: str = ""
) -> list[RenderedVideo]:
    """Render ``num`` person-vs-person videos of ``relation`` (captions with ``word`` for the relation phrase
    when given, see :func:`worded`).

    With ``out_dir``, also writes them in the layout ``dreamrelation train`` reads: ``videos/NAME.mp4``
    (native size) + ``videos/NAME.txt`` captions and paper-format masks in ``masks/NAME/``.
    """
    rng = np.random.default_rng(seed)
    rendered = []
    for i in range(num):
        video = render_video(world.sample_video_spec(rng, relations=[relation], person_prob=1.0))
        video = replace(video, caption=worded(video.caption, word))
        if out_dir is not None:
            name = f"exemplar{i:03d}"
            write_video(out_dir / "videos" / f"{name}.mp4", video.frames, fps=world.FPS, scale=1)
            atomic_write_text(out_dir / "videos" / f"{name}.txt", video.caption + "\n")
            write_colour_masks(out_dir / "masks" / name, video.masks)
        rendered.append(video)
    return rendered


def render_exemplars(
    pipe, relation: str, num: int, seed: int, out_dir: Path | None = None, word: str = ""
) -> Exemplars:
    """Render exemplars (see :func:`write_exemplar_videos`) and encode them with ``pipe``."""
    rendered = write_exemplar_videos(relation, num, seed, out_dir, word)
    samples = prepare_samples(
        pipe,
        [v.frames for v in rendered],
        [v.caption for v in rendered],
        [v.masks for v in rendered],
        [f"exemplar{i:03d}" for i in range(num)],
    )
    subjects = [rendered[0].spec.subject1, rendered[0].spec.subject2]
    return Exemplars(relation, [v.frames for v in rendered], samples, subjects)


@dataclass
class ToyExperimentConfig:
    """Settings shared by toy experiments (demo, benchmark): exemplars, prompts, sampling, training recipe.

    The recipe is the same for every method: a trainer preset with these steps, batch, lr and rank.
    """

    bundle: str = (
        ""  # empty or "mochi": the shipped toy bundle; "wan" / "wan22": the toy Wan 2.1 / 2.2; a path
    )
    num_exemplars: int = 16
    exemplar_seed: int = 1234
    subjects: list[list[str]] = field(default_factory=lambda: [list(s) for s in DEFAULT_SUBJECTS])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    num_inference_steps: int = 32
    guidance_scale: float = 4.0
    train_steps: int = 1000
    batch_size: int = 4
    lr: float = 2e-3
    warmup_steps: int = 30
    rank: int = 16
    # a made-up word for the relation in exemplar captions and prompts (a user's relation comes with its own
    # word, which the toy vocabulary lacks); empty: the relation's own phrase
    relation_word: str = ""
    # image-to-video (a bundle that takes an image, Wan 2.2): every prompt starts from a still of its subjects
    # (:func:`relation_still`) and the methods train with this share of image-conditioned steps
    image_to_video: bool = False
    i2v_probability: float = 0.5
    # the training noise levels' shift towards pure noise (optim.sigma_shift; 1: uniform, the paper's)
    sigma_shift: float = 1.0


def toy_recipe(method: str, cfg: ToyExperimentConfig, train_seed: int = 0) -> TrainConfig | None:
    """The trainer preset of ``method`` at toy scale (``None`` for the untuned model).

    ``train_seed`` is the trainer's seed: it sets the adapters' initialisation, the data order, the HMT
    choices and the training noise (the exemplars, prompts and sampling seeds do not depend on it).
    """
    if method == UNTUNED:
        return None
    train = preset(method)
    train.optim.seed = int(train_seed)
    train.optim.steps = cfg.train_steps
    train.optim.batch_size = cfg.batch_size
    train.optim.lr = cfg.lr
    train.optim.warmup_steps = cfg.warmup_steps
    train.optim.checkpoint_every = cfg.train_steps
    train.adapter.rank = cfg.rank
    train.adapter.alpha = float(cfg.rank)
    train.i2v.probability = cfg.i2v_probability if cfg.image_to_video else 0.0
    train.optim.sigma_shift = cfg.sigma_shift
    return train


@torch.no_grad()
def generate_jobs(
    pipe, jobs: Sequence[Job], steps: int, guidance: float, batch_size: int = GENERATE_BATCH
) -> list[np.ndarray]:
    """Generate every job with the adapters currently active in ``pipe``, ``batch_size`` jobs per call (each
    with its own seeded noise, see :func:`~dreamrelation.inference.generate.generate_videos`); jobs with an
    image start from it, consecutive jobs with the same image sharing a call."""
    videos: list[np.ndarray] = []
    for group in _runs_of_same_image(jobs):
        image = None if group[0].image is None else Image.fromarray(group[0].image)
        videos += generate_videos(
            pipe,
            [j.prompt for j in group],
            [j.seed for j in group],
            Sampling(steps, guidance),
            batch_size=batch_size,
            image=image,
        )
    return videos


def _runs_of_same_image(jobs: Sequence[Job]) -> list[list[Job]]:
    """``jobs`` split where the image changes (all of them at once for text-to-video jobs)."""
    runs: list[list[Job]] = []
    for job in jobs:
        if runs and runs[-1][0].image is job.image:
            runs[-1].append(job)
        else:
            runs.append([job])
    return runs


def train_and_generate(
    pipe,
    exemplars: Exemplars,
    train_cfg: TrainConfig | None,
    jobs: Sequence[Job],
    out_dir: Path,
    steps: int,
    guidance: float,
    progress: bool = True,
    adapters_from: Path | None = None,
) -> tuple[list[np.ndarray], dict[str, float]]:
    """Train ``train_cfg``'s adapters (``None``: the untuned model), generate ``jobs``, remove the adapters.

    ``adapters_from``: a folder of adapters trained with this recipe up to the inference roles; they are
    loaded instead of training again.
    """
    timings: dict[str, float] = {}
    if train_cfg is not None and adapters_from is not None:
        load_adapters(pipe.transformer, adapters_from, list(train_cfg.adapter.placement), activate=False)
        set_active_roles(pipe.transformer, train_cfg.adapter.inference_roles, trainable=False)
    elif train_cfg is not None:
        start = time.time()
        null = null_prompt_for(pipe)
        result = train_adapters(
            pipe.transformer, exemplars.samples, train_cfg, out_dir, progress=progress, null_prompt=null
        )
        timings["train_s"] = time.time() - start
        timings["train_s_per_step"] = result.seconds_per_step
        set_active_roles(pipe.transformer, train_cfg.adapter.inference_roles, trainable=False)
    start = time.time()
    videos = generate_jobs(pipe, jobs, steps, guidance)
    timings["generate_s"] = time.time() - start
    if train_cfg is not None:
        pipe.transformer.delete_adapters(list(train_cfg.adapter.placement))  # the next method starts clean
    return videos, timings


def score_jobs(
    videos: Sequence[np.ndarray],
    jobs: Sequence[Job],
    relation: str,
    exemplar_subjects: Sequence[world.SubjectSpec] | None,
) -> list[dict]:
    """Tracker scores of each generated video (relation, appearance, leakage, temporal consistency)."""
    return [
        evaluate_video(video, job.subjects, relation, exemplar_subjects=exemplar_subjects)
        for video, job in zip(videos, jobs, strict=True)
    ]


def tracked_panel(video: np.ndarray, subjects: Sequence[world.SubjectSpec]) -> np.ndarray:
    """Frames of ``video`` plus the two subjects' tracked trajectories on a still (a contact-sheet cell)."""
    track = track_subjects(video, subjects)
    return trajectory_panel(video, track.trajectories(), track.colours)


def summarise(scores: Sequence[dict], keys: Sequence[str] = SUMMARY_KEYS, n_boot: int = 2000) -> dict:
    """Mean and 95% interval of each score key: ``{key: mean, key_ci95: [low, high]}``; also ``n``.

    Binary keys (:data:`BINARY_KEYS`, or all values bools) get a Wilson interval, the others a percentile
    bootstrap over videos (seed 0), so intervals of scores in [0, 1] stay in [0, 1].
    """
    row: dict = {"n": len(scores)}
    for key in keys:
        values = [s[key] for s in scores]
        if key in BINARY_KEYS or (values and all(isinstance(v, bool) for v in values)):
            hits = sum(bool(v) for v in values)
            mean = hits / len(values) if values else math.nan
            low, high = wilson_interval(hits, len(values))
        else:
            mean, low, high = bootstrap_ci([float(v) for v in values], n_boot=n_boot)
        row[key] = mean
        row[f"{key}_ci95"] = [low, high]
    return row
