"""The toy world's vocabulary: shapes, colours, scenes, relations, captions and video specs.

Relations are defined by the two subjects' centre trajectories. Every trajectory function works in a
canonical orientation (subject 1 starts on the left / moves right, coordinates centred on 0); the shared
placement step then mirrors it left/right at random, fits it inside the frame and translates it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dreamrelation.backbones.registry import TOY
from dreamrelation.errors import UserError

# registered with the toy models: 25 = 6k + 1 frames (the video VAE keeps frame 0 and every 6th after it)
NUM_FRAMES, HEIGHT, WIDTH = TOY.default_geometry
FPS = TOY.clip_fps  # what `toy render` writes and `prepare` samples a toy model's clips at

# --------------------------------------------------------------------------------------------------
# Appearance vocabulary
# --------------------------------------------------------------------------------------------------

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")
PERSON = "person"
ALL_SHAPES: tuple[str, ...] = (*SHAPES, PERSON)

# Saturated, well separated colours (min pairwise RGB distance ~105).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 200, 50),
    "blue": (40, 80, 255),
    "yellow": (235, 235, 30),
    "magenta": (220, 40, 220),
    "cyan": (30, 220, 230),
    "orange": (255, 130, 0),
    "white": (240, 240, 240),
}
# Person tones: not among COLOURS, distinguishable from them, from each other and from the dark scenes.
PERSON_COLOURS: dict[str, tuple[int, int, int]] = {
    "skin": (225, 170, 130),
    "slate": (110, 120, 170),
}
ALL_COLOURS: dict[str, tuple[int, int, int]] = {**COLOURS, **PERSON_COLOURS}

SCENES: tuple[str, ...] = ("plain", "gradient", "textured")

SIZE_RANGE = (5.0, 8.0)  # "radius" in pixels of a shape subject
PERSON_SIZE_RANGE = (4.5, 6.0)  # a person is ~2.8 * size tall


def colour_rgb(name: str) -> tuple[int, int, int]:
    """RGB of a named colour (shape colours and person tones)."""
    try:
        return ALL_COLOURS[name]
    except KeyError:
        raise UserError(f"Unknown colour {name!r}; choose one of {sorted(ALL_COLOURS)}.") from None


def shape_extent(shape: str, size: float) -> tuple[float, float]:
    """Half width and half height (pixels) of a shape drawn at ``size``."""
    factors = {
        "circle": (1.0, 1.0),
        "square": (0.85, 0.85),
        "triangle": (0.95, 1.0),
        "star": (1.05, 1.1),
        "cross": (1.0, 1.0),
        "diamond": (0.85, 1.1),
        PERSON: (0.6, 1.4),
    }
    if shape not in factors:
        raise UserError(f"Unknown shape {shape!r}; choose one of {list(ALL_SHAPES)}.")
    fx, fy = factors[shape]
    return fx * size, fy * size


@dataclass(frozen=True)
class SubjectSpec:
    """One subject: a shape (or ``person``), a colour name and a size (pixels, roughly a radius)."""

    shape: str
    colour: str
    size: float = 6.5

    @property
    def rgb(self) -> tuple[int, int, int]:
        """The subject's RGB colour."""
        return colour_rgb(self.colour)

    @property
    def is_person(self) -> bool:
        """Whether the subject is a person (captioned without its colour)."""
        return self.shape == PERSON

    def phrase(self) -> str:
        """Caption noun phrase without article: ``red star`` or ``person``."""
        return "person" if self.is_person else f"{self.colour} {self.shape}"


# --------------------------------------------------------------------------------------------------
# Relations
# --------------------------------------------------------------------------------------------------

Extents = tuple[tuple[float, float], tuple[float, float]]
TrajectoryFn = Callable[[np.random.Generator, np.ndarray, Extents], np.ndarray]


@dataclass(frozen=True)
class Relation:
    """A relation: caption verb phrase, canonical trajectory function and whether it is held out."""

    name: str
    phrase: str
    trajectory_fn: TrajectoryFn
    held_out: bool
    s1_on_top: bool = True

    def trajectory(
        self,
        rng: np.random.Generator,
        extents: Extents,
        num_frames: int = NUM_FRAMES,
        height: int = HEIGHT,
        width: int = WIDTH,
    ) -> np.ndarray:
        """Sample centre trajectories (2, T, 2) in pixel (x, y) coordinates, jittered and placed in frame."""
        t = np.linspace(0.0, 1.0, num_frames)
        raw = np.asarray(self.trajectory_fn(rng, t, extents), dtype=np.float64)
        return _place(raw, extents, rng, height, width)


def _smooth(t: np.ndarray, a: float, b: float) -> np.ndarray:
    u = np.clip((t - a) / max(b - a, 1e-6), 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def _stack(x1, y1, x2, y2, t: np.ndarray) -> np.ndarray:
    out = np.zeros((2, t.size, 2))
    for k, (x, y) in enumerate(((x1, y1), (x2, y2))):
        out[k, :, 0] = x
        out[k, :, 1] = y
    return out


def _approaching(rng: np.random.Generator, t: np.ndarray, ext: Extents) -> np.ndarray:
    (hw1, _), (hw2, _) = ext
    d0, gap = rng.uniform(36, 46), hw1 + hw2 + rng.uniform(2, 5)
    share, u = rng.uniform(0.35, 0.65), _smooth(t, 0.0, rng.uniform(0.65, 0.85))
    x1 = -d0 / 2 + share * (d0 - gap) * u
    x2 = d0 / 2 - (1 - share) * (d0 - gap) * u
    return _stack(x1, rng.uniform(-2, 2), x2, rng.uniform(-2, 2), t)


def _moving_away(rng: np.random.Generator, t: np.ndarray, ext: Extents) -> np.ndarray:
    (hw1, _), (hw2, _) = ext
    gap, d1 = hw1 + hw2 + rng.uniform(1, 4), rng.uniform(38, 48)
    share = rng.uniform(0.35, 0.65)
    u = _smooth(t, rng.uniform(0.0, 0.2), 1.0 - rng.uniform(0.0, 0.15))
    x1 = -gap / 2 - share * (d1 - gap) * u
    x2 = gap / 2 + (1 - share) * (d1 - gap) * u
    return _stack(x1, rng.uniform(-2, 2), x2, rng.uniform(-2, 2), t)


def _chasing(rng: np.random.Generator, t: np.ndarray, ext: Extents) -> np.ndarray:
    (hw1, _), (hw2, _) = ext
    length = rng.uniform(18, 26)
    g0, g1 = hw1 + hw2 + rng.uniform(10, 16), hw1 + hw2 + rng.uniform(2, 5)
    x2 = length * t
    x1 = x2 - (g0 + (g1 - g0) * t)
    y = rng.uniform(-2, 2)
    return _stack(x1, y + rng.uniform(-1.5, 1.5), x2, y, t)


def _walking_alongside(rng: np.random.Generator, t: np.ndarray, ext: Extents) -> np.ndarray:
    (_, hh1), (_, hh2) = ext
    length, dy = rng.uniform(20, 32), hh1 + hh2 + rng.uniform(3, 7)
    side = rng.choice([-1.0, 1.0])
    x = length * t
    return _stack(x + rng.uniform(-2, 2), -side * dy / 2, x + rng.uniform(-2, 2), side * dy / 2, t)


def _bouncing_beside(rng: np.random.Generator, t: np.ndarray, ext: Extents) -> np.ndarray:
    (hw1, _), (hw2, _) = ext
    gap, height = hw1 + hw2 + rng.uniform(4, 10), rng.uniform(7, 11)
    y1 = -height * np.abs(np.sin(2.0 * np.pi * t))
    return _stack(-gap / 2, y1, gap / 2, 0.0, t)


def _passing(rng: np.random.Generator, t: np.ndarray, ext: Extents) -> np.ndarray:
    (_, hh1), (_, hh2) = ext
    amp, dy = rng.uniform(16, 22), hh1 + hh2 + rng.uniform(1, 4)
    side = rng.choice([-1.0, 1.0])
    return _stack(-amp + 2 * amp * t, -side * dy / 2, amp - 2 * amp * t, side * dy / 2, t)


def _high_fiving(rng: np.random.Generator, t: np.ndarray, ext: Extents) -> np.ndarray:
    (hw1, _), (hw2, _) = ext
    d0, contact = rng.uniform(34, 44), hw1 + hw2 - 1.0
    t_in, t_out = rng.uniform(0.38, 0.45), rng.uniform(0.55, 0.62)
    u = _smooth(t, 0.0, t_in) - rng.uniform(0.8, 1.0) * _smooth(t, t_out, 1.0)
    share = rng.uniform(0.4, 0.6)
    x1 = -d0 / 2 + share * (d0 - contact) * u
    x2 = d0 / 2 - (1 - share) * (d0 - contact) * u
    return _stack(x1, rng.uniform(-2, 2), x2, rng.uniform(-2, 2), t)


def _jumping_over(rng: np.random.Generator, t: np.ndarray, ext: Extents) -> np.ndarray:
    (_, hh1), (_, hh2) = ext
    amp, height = rng.uniform(18, 22), hh1 + hh2 + rng.uniform(2, 5)
    x1 = -amp + 2 * amp * t
    y1 = -height * np.sin(np.pi * t)
    return _stack(x1, y1, rng.uniform(-1, 1), 0.0, t)


def _pushing(rng: np.random.Generator, t: np.ndarray, ext: Extents) -> np.ndarray:
    (hw1, _), (hw2, _) = ext
    d0, contact = rng.uniform(26, 32), hw1 + hw2
    t_c = rng.uniform(0.4, 0.5)
    v = np.clip(t / t_c, 0.0, 1.0)
    x1 = -d0 + (d0 - contact) * v * v * (2.0 - v)  # arrives with non-zero speed, then stops
    slide, k = rng.uniform(12, 17), rng.uniform(1.0, 1.6)
    s = np.clip((t - t_c) / (1.0 - t_c), 0.0, 1.0)
    x2 = slide * (1.0 - np.exp(-k * s)) / (1.0 - np.exp(-k))
    y = rng.uniform(-2, 2)
    return _stack(x1, y + rng.uniform(-1, 1), x2, y, t)


def _orbiting(rng: np.random.Generator, t: np.ndarray, ext: Extents) -> np.ndarray:
    (hw1, hh1), (hw2, hh2) = ext
    radius = float(np.clip(max(hw1, hh1) + max(hw2, hh2) + rng.uniform(1, 3), 12, 18))
    sweep = min(rng.uniform(1.3, 1.5) * np.pi, 75.0 / radius)
    theta = rng.uniform(0, 2 * np.pi) + rng.choice([-1.0, 1.0]) * sweep * t
    return _stack(radius * np.cos(theta), radius * np.sin(theta), 0.0, 0.0, t)


def _place(raw: np.ndarray, ext: Extents, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Mirror at random, squeeze if too large, and translate at random so both subjects stay in frame."""
    traj = raw.copy()
    if rng.random() < 0.5:
        traj[..., 0] = -traj[..., 0]
    half = np.array(ext, dtype=np.float64)[:, None, :]  # (2, 1, 2)
    margin = 1.0
    for axis, limit in ((0, width), (1, height)):
        lo = (traj[..., axis] - half[..., axis]).min()
        hi = (traj[..., axis] + half[..., axis]).max()
        room = limit - 1 - 2 * margin
        if hi - lo > room:  # squeeze centres towards the middle
            centre = 0.5 * (lo + hi)
            pad = float(half[..., axis].max())
            scale = max(room - 2 * pad, 1.0) / max(hi - lo - 2 * pad, 1.0)
            traj[..., axis] = centre + (traj[..., axis] - centre) * scale
            lo = (traj[..., axis] - half[..., axis]).min()
            hi = (traj[..., axis] + half[..., axis]).max()
        slack_lo, slack_hi = margin - lo, limit - 1 - margin - hi
        mid, spread = 0.5 * (slack_lo + slack_hi), 0.5 * max(slack_hi - slack_lo, 0.0)
        shift = mid + 0.7 * spread * rng.uniform(-1.0, 1.0)  # keep away from the very edges
        traj[..., axis] += shift
    return traj


_RELATION_LIST: tuple[Relation, ...] = (
    Relation("approaching", "approaching", _approaching, held_out=False),
    Relation("moving_away", "moving away from", _moving_away, held_out=False),
    Relation("chasing", "chasing", _chasing, held_out=False),
    Relation("walking_alongside", "walking alongside", _walking_alongside, held_out=False),
    Relation("bouncing_beside", "bouncing beside", _bouncing_beside, held_out=False),
    Relation("passing", "passing", _passing, held_out=False),
    Relation("high_fiving", "high-fiving with", _high_fiving, held_out=True),
    Relation("jumping_over", "jumping over", _jumping_over, held_out=True),
    Relation("pushing", "pushing", _pushing, held_out=True),
    Relation("orbiting", "orbiting", _orbiting, held_out=True),
)
RELATIONS: dict[str, Relation] = {r.name: r for r in _RELATION_LIST}
RELATION_NAMES: tuple[str, ...] = tuple(RELATIONS)
BASE_RELATIONS: tuple[str, ...] = tuple(r.name for r in _RELATION_LIST if not r.held_out)
HELD_OUT_RELATIONS: tuple[str, ...] = tuple(r.name for r in _RELATION_LIST if r.held_out)


def get_relation(relation: str | Relation) -> Relation:
    """Look a relation up by name (``Relation`` objects pass through)."""
    if isinstance(relation, Relation):
        return relation
    try:
        return RELATIONS[relation]
    except KeyError:
        raise UserError(f"Unknown relation {relation!r}; choose one of {list(RELATIONS)}.") from None


# --------------------------------------------------------------------------------------------------
# Video specs and captions
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoSpec:
    """Everything needed to render one toy video deterministically."""

    relation: str
    subject1: SubjectSpec
    subject2: SubjectSpec
    scene: str = "plain"
    seed: int = 0

    @property
    def subjects(self) -> tuple[SubjectSpec, SubjectSpec]:
        """(subject1, subject2)."""
        return (self.subject1, self.subject2)


def _with_article(phrase: str) -> str:
    return ("An " if phrase[:1].lower() in "aeiou" else "A ") + phrase


def caption(spec: VideoSpec) -> str:
    """Paper-style caption, e.g. ``A red star is high-fiving with a blue circle.``"""
    rel = get_relation(spec.relation)
    first = _with_article(spec.subject1.phrase())
    second = _with_article(spec.subject2.phrase())
    return f"{first} is {rel.phrase} {second[0].lower()}{second[1:]}."


def caption_template(relation: str | Relation) -> str:
    """Caption template with placeholders, e.g. ``A {subject1} is high-fiving with a {subject2}.``"""
    rel = get_relation(relation)
    return f"A {{subject1}} is {rel.phrase} a {{subject2}}."


_ONSETS = ("b", "bl", "d", "dr", "f", "g", "gl", "k", "kr", "m", "n", "p", "pl", "sn", "t", "tr", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u", "oo", "ee")
_CODAS = ("", "b", "m", "n", "r", "sh", "x", "z")


@functools.cache
def caption_words() -> frozenset[str]:
    """Every word the toy captions use (articles, colours, shapes, relation phrases)."""
    words = {"a", "an", "is", "person", "with", *COLOURS, *SHAPES}
    for relation in RELATIONS.values():
        words.update(relation.phrase.split())
    return frozenset(words)


def made_up_word(rng: np.random.Generator) -> str:
    """A pronounceable verb outside the toy vocabulary (``zorbing``, ``gleeping``), as a user's own word for
    a relation would be: two random syllables plus ``ing``."""
    known = caption_words()
    while True:
        syllables = [f"{rng.choice(_ONSETS)}{rng.choice(_VOWELS)}{rng.choice(_CODAS)}" for _ in range(2)]
        word = "".join(syllables) + "ing"
        if word not in known:
            return word


def with_relation_word(caption_text: str, word: str) -> str:
    """``caption_text`` with its relation phrase replaced by ``word`` (``A red star is zorbing a blue circle.``)."""
    for relation in sorted(RELATIONS.values(), key=lambda r: -len(r.phrase)):
        marker = f" is {relation.phrase} "
        if marker in caption_text:
            return caption_text.replace(marker, f" is {word} ", 1)
    raise UserError(f"no toy relation phrase in caption {caption_text!r}")


def sample_subject(
    rng: np.random.Generator,
    shapes: Sequence[str] = SHAPES,
    colours: Sequence[str] = tuple(COLOURS),
    person_prob: float = 0.0,
    avoid_colour: str | None = None,
) -> SubjectSpec:
    """Sample one subject; ``avoid_colour`` excludes the other subject's colour."""
    if rng.random() < person_prob:
        tones = [c for c in PERSON_COLOURS if c != avoid_colour]
        return SubjectSpec(PERSON, str(rng.choice(tones)), float(rng.uniform(*PERSON_SIZE_RANGE)))
    pool = [c for c in colours if c != avoid_colour]
    if not pool or not shapes:
        raise UserError("sample_subject needs at least one shape and two distinct colours.")
    shape = str(rng.choice(list(shapes)))
    size_range = PERSON_SIZE_RANGE if shape == PERSON else SIZE_RANGE
    return SubjectSpec(shape, str(rng.choice(pool)), float(rng.uniform(*size_range)))


def sample_video_spec(
    rng: np.random.Generator,
    relations: Sequence[str] = BASE_RELATIONS,
    shapes: Sequence[str] = SHAPES,
    colours: Sequence[str] = tuple(COLOURS),
    person_prob: float = 0.15,
    scenes: Sequence[str] = SCENES,
) -> VideoSpec:
    """Sample a video spec (two subjects of different colours). Defaults to the BASE relations only."""
    relation = str(rng.choice(list(relations)))
    get_relation(relation)
    s1 = sample_subject(rng, shapes, colours, person_prob)
    s2 = sample_subject(rng, shapes, colours, person_prob, avoid_colour=s1.colour)
    scene = str(rng.choice(list(scenes)))
    if scene not in SCENES:
        raise UserError(f"Unknown scene {scene!r}; choose one of {list(SCENES)}.")
    return VideoSpec(relation, s1, s2, scene, int(rng.integers(0, 2**31 - 1)))
