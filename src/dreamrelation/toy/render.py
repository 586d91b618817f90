"""Vectorised renderer for toy relation videos with exact per-subject masks.

Shapes are drawn with hard edges in flat colours on a dark, low-contrast background, so a subject's mask is
exactly the set of pixels whose colour differs from the background-only render.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dreamrelation.errors import UserError
from dreamrelation.toy.world import (
    HEIGHT,
    NUM_FRAMES,
    PERSON,
    SCENES,
    WIDTH,
    VideoSpec,
    caption,
    get_relation,
    shape_extent,
)


@dataclass
class RenderedVideo:
    """A rendered toy video: frames (T,H,W,3) uint8, masks (2,T,H,W) bool, centre trajectories (2,T,2)."""

    frames: np.ndarray
    masks: np.ndarray
    trajectories: np.ndarray
    caption: str
    spec: VideoSpec


def _polygon(dx: np.ndarray, dy: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over broadcast ``dx``/``dy``."""
    inside = np.zeros(np.broadcast_shapes(dx.shape, dy.shape), dtype=bool)
    n = len(verts)
    for i in range(n):
        (x0, y0), (x1, y1) = verts[i], verts[(i + 1) % n]
        if y0 == y1:
            continue
        crosses = (y0 > dy) != (y1 > dy)
        x_at = x0 + (dy - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (dx < x_at)
    return inside


def _star_vertices(outer: float, inner: float) -> np.ndarray:
    ang = -np.pi / 2 + np.arange(10) * np.pi / 5
    rad = np.where(np.arange(10) % 2 == 0, outer, inner)
    return np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, size: float) -> np.ndarray:
    """Boolean mask of ``shape`` at ``size`` given pixel offsets from its centre (broadcastable arrays)."""
    s = float(size)
    if shape == "circle":
        return dx * dx + dy * dy <= s * s
    if shape == "square":
        return (np.abs(dx) <= 0.85 * s) & (np.abs(dy) <= 0.85 * s)
    if shape == "triangle":
        return _polygon(dx, dy, np.array([[0.0, -s], [0.95 * s, 0.75 * s], [-0.95 * s, 0.75 * s]]))
    if shape == "star":
        return _polygon(dx, dy, _star_vertices(1.1 * s, 0.5 * s))
    if shape == "cross":
        ax, ay = np.abs(dx), np.abs(dy)
        arm = 0.36 * s
        return ((ax <= s) & (ay <= arm)) | ((ax <= arm) & (ay <= s))
    if shape == "diamond":
        return np.abs(dx) / (0.85 * s) + np.abs(dy) / (1.1 * s) <= 1.0
    if shape == PERSON:
        head = dx * dx + (dy + 0.9 * s) ** 2 <= (0.5 * s) ** 2
        # rounded rectangle body: x in [-0.6s, 0.6s], y in [-0.35s, 1.35s], corner radius 0.3s
        r = 0.3 * s
        qx = np.maximum(np.abs(dx) - (0.6 * s - r), 0.0)
        qy = np.maximum(np.abs(dy - 0.5 * s) - (0.85 * s - r), 0.0)
        body = qx * qx + qy * qy <= r * r
        return head | body
    raise UserError(f"Unknown shape {shape!r}.")


def render_background(
    spec: VideoSpec, num_frames: int = NUM_FRAMES, height: int = HEIGHT, width: int = WIDTH
) -> np.ndarray:
    """Background-only frames (T,H,W,3) uint8 for ``spec`` (the scene is static)."""
    if spec.scene not in SCENES:
        raise UserError(f"Unknown scene {spec.scene!r}; choose one of {list(SCENES)}.")
    rng = np.random.default_rng([spec.seed, 2])

    def dark() -> np.ndarray:  # darkish, desaturated colour
        return rng.uniform(18, 58) + rng.uniform(-10, 10, size=3)

    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    base = dark()
    img = np.broadcast_to(base, (height, width, 3)).copy()
    if spec.scene == "gradient":
        other, ang = dark(), rng.uniform(0, 2 * np.pi)
        proj = (xs - width / 2) * np.cos(ang) + (ys - height / 2) * np.sin(ang)
        w = (proj - proj.min()) / max(np.ptp(proj), 1e-6)
        img = base * (1 - w[..., None]) + other * w[..., None]
    elif spec.scene == "textured":
        amp, cell = rng.uniform(8, 13), 16.0
        if rng.random() < 0.5:  # soft stripes
            ang = rng.uniform(0, np.pi)
            pattern = np.sin(np.pi * ((xs * np.cos(ang) + ys * np.sin(ang)) / cell) + rng.uniform(0, 6.3))
        else:  # soft checker
            px, py = rng.uniform(0, 6.3, size=2)
            pattern = np.sin(np.pi * xs / cell + px) * np.sin(np.pi * ys / cell + py)
        tint = 1.0 + rng.uniform(-0.2, 0.2, size=3)
        img = img + amp * pattern[..., None] * tint
    frame = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return np.broadcast_to(frame, (num_frames, height, width, 3)).copy()


def render_masks(
    spec: VideoSpec, num_frames: int = NUM_FRAMES, height: int = HEIGHT, width: int = WIDTH
) -> tuple[np.ndarray, np.ndarray]:
    """Visible masks (2,T,H,W) and centre trajectories (2,T,2) without compositing frames."""
    relation = get_relation(spec.relation)
    subjects = spec.subjects
    extents = (
        shape_extent(subjects[0].shape, subjects[0].size),
        shape_extent(subjects[1].shape, subjects[1].size),
    )
    rng = np.random.default_rng([spec.seed, 1])
    traj = relation.trajectory(rng, extents, num_frames, height, width)
    xs = np.arange(width, dtype=np.float64)[None, None, :]
    ys = np.arange(height, dtype=np.float64)[None, :, None]
    drawn = []
    for k, subj in enumerate(subjects):
        dx = xs - traj[k, :, 0][:, None, None]
        dy = ys - traj[k, :, 1][:, None, None]
        drawn.append(np.broadcast_to(shape_mask(subj.shape, dx, dy, subj.size), (num_frames, height, width)))
    top, bottom = (0, 1) if relation.s1_on_top else (1, 0)
    masks = np.zeros((2, num_frames, height, width), dtype=bool)
    masks[top] = drawn[top]
    masks[bottom] = drawn[bottom] & ~drawn[top]
    return masks, traj


def render_video(
    spec: VideoSpec, num_frames: int = NUM_FRAMES, height: int = HEIGHT, width: int = WIDTH
) -> RenderedVideo:
    """Render ``spec`` deterministically: frames, exact visible masks, centre trajectories and caption."""
    masks, traj = render_masks(spec, num_frames, height, width)
    frames = render_background(spec, num_frames, height, width)
    for k, subj in enumerate(spec.subjects):
        frames[masks[k]] = np.asarray(subj.rgb, dtype=np.uint8)
    return RenderedVideo(frames=frames, masks=masks, trajectories=traj, caption=caption(spec), spec=spec)
