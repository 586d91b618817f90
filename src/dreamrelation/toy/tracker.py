"""Colour tracker, relation classifier and appearance/leakage/consistency scores for toy videos.

The tracker finds each prompted subject by its colour (robust per-frame threshold, small specks removed by
connected components), giving per-frame masks and centroids. The relation classifier is a softmax
regression over hand-crafted trajectory features, fitted once per process on rendered ground truth (fixed
seed) and cached.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dreamrelation.errors import UserError
from dreamrelation.toy.render import render_masks, shape_mask
from dreamrelation.toy.world import (
    ALL_SHAPES,
    HEIGHT,
    PERSON_COLOURS,
    RELATION_NAMES,
    WIDTH,
    SubjectSpec,
    VideoSpec,
    get_relation,
    sample_video_spec,
)

MIN_AREA = 8  # pixels; smaller colour blobs count as "not found"
MAX_AREA_FRACTION = 0.25  # of the frame; larger blobs are implausible subjects
CLASSIFIER_SEED = 20250101
RGB = tuple[int, int, int]


# --------------------------------------------------------------------------------------------------
# Tracking
# --------------------------------------------------------------------------------------------------


@dataclass
class TrackResult:
    """Per-frame tracking of two subjects: masks (2,T,H,W), centroids (2,T,2) (NaN if lost), areas (2,T)."""

    masks: np.ndarray
    centroids: np.ndarray
    areas: np.ndarray
    found: np.ndarray
    colours: tuple[RGB, RGB]

    @property
    def tracked_fraction(self) -> np.ndarray:
        """Fraction of frames in which each subject was found, shape (2,)."""
        return self.found.mean(axis=1)

    def trajectories(self) -> np.ndarray:
        """Centroids (2,T,2) with lost frames filled by linear interpolation (NaN if never found)."""
        return fill_missing(self.centroids)


def _as_video(video: np.ndarray) -> np.ndarray:
    arr = np.asarray(video)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise UserError(f"Expected an RGB video of shape (T, H, W, 3); got {arr.shape}.")
    if arr.dtype == np.float32:
        return arr
    if arr.dtype != np.uint8:
        arr = np.clip(arr * 255.0 if arr.max() <= 1.0 else arr, 0, 255)
    return arr.astype(np.float32)


def _label_components(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels per frame of a (T,H,W) mask (-1 = background); label = min flat index."""
    big = np.iinfo(np.int64).max
    labels = np.where(mask, np.arange(mask.size, dtype=np.int64).reshape(mask.shape), big)
    while True:
        new = labels.copy()
        np.minimum(new[:, 1:, :], labels[:, :-1, :], out=new[:, 1:, :])
        np.minimum(new[:, :-1, :], labels[:, 1:, :], out=new[:, :-1, :])
        np.minimum(new[:, :, 1:], labels[:, :, :-1], out=new[:, :, 1:])
        np.minimum(new[:, :, :-1], labels[:, :, 1:], out=new[:, :, :-1])
        new = np.where(mask, new, big)
        # pointer jumping: follow each label to its own label (speeds up convergence)
        flat = new.reshape(-1)
        valid = flat != big
        flat[valid] = np.minimum(flat[valid], flat[flat[valid]])
        if np.array_equal(new, labels):
            break
        labels = new
    return np.where(mask, labels, -1)


def count_blobs(mask: np.ndarray, min_area: int = MIN_AREA) -> np.ndarray:
    """Per-frame number (T,) of 4-connected blobs of at least ``min_area`` pixels in a (T,H,W) mask."""
    mask = np.asarray(mask, dtype=bool)
    counts = np.zeros(mask.shape[0], dtype=np.int64)
    if not mask.any():
        return counts
    labels, sizes = np.unique(_label_components(mask)[mask], return_counts=True)
    # a label is the smallest flat index of its blob, so it lies in the blob's own frame
    np.add.at(counts, labels[sizes >= min_area] // (mask.shape[1] * mask.shape[2]), 1)
    return counts


def clean_mask(mask: np.ndarray, keep_fraction: float = 0.3) -> np.ndarray:
    """Keep, per frame, the largest 4-connected blob and any blob at least ``keep_fraction`` of its size."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    labels = _label_components(mask)
    counts = np.bincount(labels[mask], minlength=mask.size)
    sizes = np.where(mask, counts[np.maximum(labels, 0)], 0)  # each pixel's component size
    largest = sizes.reshape(mask.shape[0], -1).max(axis=1)
    return mask & (sizes >= np.maximum(keep_fraction * largest, 1)[:, None, None])


def frame_background(video: np.ndarray) -> np.ndarray:
    """Per-frame background colour estimate (T,3): the median of a 2x-subsampled pixel grid."""
    vid = _as_video(video)
    return np.median(vid[:, ::2, ::2].reshape(vid.shape[0], -1, 3), axis=1)


def _segment_dist2(
    offset: np.ndarray, sq_norm: np.ndarray, direction: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mixing weight (unclipped) and squared distance of pixels to the segment background -> colour.

    ``offset``: pixel minus background (T,H,W,3), ``sq_norm`` its squared norm (T,H,W); ``direction``: colour
    minus background (T,3).
    """
    norm2 = np.maximum((direction * direction).sum(axis=-1), 1e-6)[:, None, None]
    alpha = np.einsum("thwc,tc->thw", offset, direction) / norm2
    clipped = np.clip(alpha, 0.0, 1.0)
    # |x - a v|^2 = |x|^2 - 2 a (x.v) + a^2 |v|^2, with x.v = alpha |v|^2
    return alpha, np.maximum(sq_norm + norm2 * clipped * (clipped - 2.0 * alpha), 0.0)


def colour_mask(
    video: np.ndarray,
    colour: Sequence[float],
    competitors: Sequence[Sequence[float]] = (),
    background: np.ndarray | None = None,
    min_mix: float = 0.5,
) -> np.ndarray:
    """Pixels (T,H,W) explained as ``colour`` blended over the frame's background colour.

    A pixel counts if it is at least ``min_mix`` of the way from the background to ``colour``, lies close to
    that blend line (tolerance 35% of the colour's contrast, clipped to [30, 80]), and is closer to it than to
    the blend line of any ``competitors`` (so the blurred edges of other subjects are not mistaken for it).
    """
    vid = _as_video(video)
    background = frame_background(vid) if background is None else np.asarray(background, dtype=np.float32)
    offset = vid - background[:, None, None, :]
    sq_norm = np.einsum("thwc,thwc->thw", offset, offset)
    direction = np.asarray(colour, dtype=np.float32)[None, :] - background
    alpha, dist2 = _segment_dist2(offset, sq_norm, direction)
    tol = np.clip(0.35 * np.linalg.norm(direction, axis=-1), 30.0, 80.0)[:, None, None]
    mask = (alpha >= min_mix) & (dist2 < tol * tol)
    for other in competitors:
        _, other2 = _segment_dist2(offset, sq_norm, np.asarray(other, dtype=np.float32)[None, :] - background)
        mask &= dist2 < other2
    return mask


def _candidate_colours(subject: SubjectSpec, avoid: str | None) -> list[RGB]:
    if subject.is_person:
        return [rgb for name, rgb in PERSON_COLOURS.items() if name != avoid]
    return [subject.rgb]


def track_subjects(
    video: np.ndarray, subjects: Sequence[SubjectSpec], min_area: int = MIN_AREA
) -> TrackResult:
    """Track the two prompted subjects by colour (a person may be in any person tone not used by the other)."""
    if len(subjects) != 2:
        raise UserError(f"Tracking needs exactly two subjects; got {len(subjects)}.")
    vid = _as_video(video)
    height, width = vid.shape[1:3]
    background = frame_background(vid)
    chosen: list[RGB] = []
    for k, subj in enumerate(subjects):
        other = subjects[1 - k]
        cands = _candidate_colours(subj, other.colour)
        if len(cands) == 1:
            chosen.append(cands[0])
            continue
        rivals = [*_candidate_colours(other, subj.colour)] if other.is_person else [other.rgb]
        areas = [
            colour_mask(vid, c, [r for r in (*cands, *rivals) if r != c], background).sum() for c in cands
        ]
        chosen.append(cands[int(np.argmax(areas))])
    masks = np.stack(
        [
            clean_mask(
                colour_mask(vid, chosen[k], [chosen[1 - k]] if chosen[0] != chosen[1] else [], background)
            )
            for k in range(2)
        ]
    )
    areas = masks.sum(axis=(2, 3))
    found = (areas >= min_area) & (areas <= MAX_AREA_FRACTION * height * width)
    ys, xs = np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (masks.sum(axis=2) * xs).sum(axis=-1) / areas
        cy = (masks.sum(axis=3) * ys).sum(axis=-1) / areas
    centroids = np.stack([cx, cy], axis=-1)
    centroids[~found] = np.nan
    return TrackResult(masks, centroids, areas, found, (chosen[0], chosen[1]))


def fill_missing(centroids: np.ndarray) -> np.ndarray:
    """Linearly interpolate NaN centroids over time (constant extrapolation at the ends)."""
    out = np.array(centroids, dtype=np.float64)
    t = np.arange(out.shape[1])
    for k in range(out.shape[0]):
        ok = ~np.isnan(out[k, :, 0])
        if ok.all() or not ok.any():
            continue
        for d in range(2):
            out[k, :, d] = np.interp(t, t[ok], out[k, ok, d])
    return out


def mask_centroids(masks: np.ndarray) -> np.ndarray:
    """Centroids (N,T,2) of boolean masks (N,T,H,W); NaN where a mask is empty."""
    masks = np.asarray(masks, dtype=bool)
    area = masks.sum(axis=(2, 3)).astype(np.float64)
    xs, ys = np.arange(masks.shape[3]), np.arange(masks.shape[2])
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (masks.sum(axis=2) * xs).sum(axis=-1) / area
        cy = (masks.sum(axis=3) * ys).sum(axis=-1) / area
    return np.stack([cx, cy], axis=-1)


# --------------------------------------------------------------------------------------------------
# Relation classifier
# --------------------------------------------------------------------------------------------------

_K = 9  # time samples for curve features


def trajectory_features(trajectories: np.ndarray, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Hand-crafted, mirror-invariant features of two centroid trajectories (2,T,2) in pixels."""
    traj = fill_missing(np.asarray(trajectories, dtype=np.float64))
    if traj.ndim != 3 or traj.shape[0] != 2 or traj.shape[2] != 2 or traj.shape[1] < 2:
        raise UserError(f"Trajectories must have shape (2, T>=2, 2); got {traj.shape}.")
    traj = np.nan_to_num(traj, nan=0.5 * max(height, width)) / float(max(height, width))
    t_full = np.linspace(0.0, 1.0, traj.shape[1])
    tk = np.linspace(0.0, 1.0, _K)
    q = np.stack([np.stack([np.interp(tk, t_full, traj[k, :, d]) for d in range(2)], -1) for k in range(2)])
    p1, p2 = q[0], q[1]
    rel = p1 - p2
    dist = np.linalg.norm(rel, axis=-1)
    step1 = np.linalg.norm(np.diff(p1, axis=0), axis=-1)
    step2 = np.linalg.norm(np.diff(p2, axis=0), axis=-1)
    net1, net2 = p1[-1] - p1[0], p2[-1] - p2[0]
    n1, n2 = np.linalg.norm(net1), np.linalg.norm(net2)
    gate = min(1.0, n1 / 0.1) * min(1.0, n2 / 0.1)
    cos_net = float(net1 @ net2 / (n1 * n2 + 1e-9)) * gate

    def excursion(p: np.ndarray) -> tuple[float, float]:
        dev = p - (p[0] + tk[:, None] * (p[-1] - p[0]))
        return float(max(-dev[:, 1].min(), 0.0)), float(max(dev[:, 1].max(), 0.0))

    up1, down1 = excursion(p1)
    up2, down2 = excursion(p2)
    rel_full = traj[0] - traj[1]
    ang = np.unwrap(np.arctan2(rel_full[:, 1], rel_full[:, 0]))
    sweep = abs(float(ang[-1] - ang[0])) / (2 * np.pi)
    r0, r1 = rel[0], rel[-1]
    cos_rel = float(r0 @ r1 / (np.linalg.norm(r0) * np.linalg.norm(r1) + 1e-9))
    motion = 0.5 * (net1 + net2)
    mag = np.linalg.norm(motion)
    m_hat = motion / mag * min(1.0, mag / 0.1) if mag > 1e-9 else np.zeros(2)
    m_perp = np.array([-m_hat[1], m_hat[0]])
    along, perp = rel @ m_hat, rel @ m_perp
    half = (_K - 1) // 2
    extras = [
        n1,
        n2,
        cos_net,
        up1,
        down1,
        up2,
        down2,
        np.abs(np.diff(p1[:, 1])).sum(),
        np.abs(np.diff(p1[:, 0])).sum(),
        np.abs(np.diff(p2[:, 1])).sum(),
        np.abs(np.diff(p2[:, 0])).sum(),
        sweep,
        cos_rel,
        along.mean(),
        np.abs(along).mean(),
        np.abs(perp).mean(),
        rel[:, 1].mean(),
        rel[:, 1].min(),
        np.abs(rel[:, 1]).mean(),
        np.abs(rel[:, 0]).mean(),
        step1[:half].sum(),
        step1[half:].sum(),
        step2[:half].sum(),
        step2[half:].sum(),
        dist.max() - dist.min(),
        dist.std(),
        float(np.argmin(dist)) / (_K - 1),
    ]
    curve = dist / (dist.max() + 1e-9)
    return np.concatenate([dist, curve, step1, step2, np.asarray(extras, dtype=np.float64)])


@dataclass
class RelationClassifier:
    """Softmax regression over standardised trajectory features."""

    names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    bias: np.ndarray

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C) for features (N, F)."""
        z = ((features - self.mean) / self.std) @ self.weights + self.bias
        z -= z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)


def _fit_softmax(
    x: np.ndarray, y: np.ndarray, num_classes: int, l2: float = 1e-3, steps: int = 1500, lr: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    n, f = x.shape
    w, b = np.zeros((f, num_classes)), np.zeros(num_classes)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    onehot = np.eye(num_classes)[y]
    for _ in range(steps):
        z = x @ w + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / n
        gw, gb = x.T @ g + l2 * w, g.sum(axis=0)
        vw = 0.9 * vw + gw
        vb = 0.9 * vb + gb
        w -= lr * vw
        b -= lr * vb
    return w, b


def training_trajectories(
    per_relation: int = 80, seed: int = CLASSIFIER_SEED, relations: Sequence[str] = RELATION_NAMES
) -> tuple[list[np.ndarray], list[str]]:
    """Visible-mask centroid trajectories of rendered ground-truth videos (masks only, no frames)."""
    rng = np.random.default_rng(seed)
    trajs, labels = [], []
    for name in relations:
        for _ in range(per_relation):
            spec = sample_video_spec(rng, relations=[name], person_prob=0.25)
            masks, _ = render_masks(spec)
            trajs.append(mask_centroids(masks))
            labels.append(name)
    return trajs, labels


@functools.lru_cache(maxsize=1)
def fitted_classifier(per_relation: int = 80, seed: int = CLASSIFIER_SEED) -> RelationClassifier:
    """Fit (once per process, cached) the relation classifier on rendered ground truth from ``seed``."""
    trajs, labels = training_trajectories(per_relation, seed)
    rng = np.random.default_rng(seed + 1)
    feats, ys = [], []
    names = tuple(RELATION_NAMES)
    for traj, label in zip(trajs, labels, strict=True):
        for noise in (0.0, 0.8):  # clean and jittered copies (tracking noise)
            feats.append(trajectory_features(traj + rng.normal(0.0, noise, traj.shape)))
            ys.append(names.index(label))
    x = np.stack(feats)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    w, b = _fit_softmax((x - mean) / std, np.asarray(ys), len(names))
    return RelationClassifier(names, mean, std, w, b)


def classify_relation(
    trajectories: np.ndarray, height: int = HEIGHT, width: int = WIDTH
) -> tuple[str, dict[str, float]]:
    """Predict the relation (over base + held-out) from centroid trajectories (2,T,2) in pixels.

    Returns the predicted name and a probability per relation name.
    """
    clf = fitted_classifier()
    proba = clf.predict_proba(trajectory_features(trajectories, height, width)[None])[0]
    scores = {name: float(p) for name, p in zip(clf.names, proba, strict=True)}
    return clf.names[int(np.argmax(proba))], scores


# --------------------------------------------------------------------------------------------------
# Appearance, leakage, temporal consistency
# --------------------------------------------------------------------------------------------------


@functools.cache
def _shape_geometry(shape: str) -> tuple[float, float, float]:
    """(area per size^2, centroid x offset per size, centroid y offset per size) of a shape."""
    s, n = 20.0, 101
    grid = np.arange(n, dtype=np.float64) - n // 2
    m = shape_mask(shape, grid[None, :], grid[:, None], s)
    ys, xs = np.nonzero(m)
    return m.sum() / s**2, (xs.mean() - n // 2) / s, (ys.mean() - n // 2) / s


def shape_ious(blob: np.ndarray, shapes: Sequence[str] = ALL_SHAPES) -> dict[str, float]:
    """IoU of a single-frame blob (H,W bool) with each shape template matched in area and centroid.

    Reliable on sharp video; at VAE resolution (4x4-pixel blocks) small shapes become hard to tell apart.
    """
    area = int(blob.sum())
    if area == 0:
        return dict.fromkeys(shapes, 0.0)
    ys, xs = np.nonzero(blob)
    cx, cy = xs.mean(), ys.mean()
    pad = int(np.ceil(1.5 * np.sqrt(area))) + 2  # generous window around the blob
    y0, y1 = max(0, ys.min() - pad), min(blob.shape[0], ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(blob.shape[1], xs.max() + pad + 1)
    blob = blob[y0:y1, x0:x1]
    cx, cy = cx - x0, cy - y0
    gx = np.arange(blob.shape[1], dtype=np.float64)[None, :]
    gy = np.arange(blob.shape[0], dtype=np.float64)[:, None]
    out = {}
    for shape in shapes:
        coef, ox, oy = _shape_geometry(shape)
        size = np.sqrt(area / coef)
        tmpl = shape_mask(shape, gx - (cx - ox * size), gy - (cy - oy * size), size)
        inter = np.logical_and(tmpl, blob).sum()
        out[shape] = float(inter / (np.logical_or(tmpl, blob).sum() + 1e-9))
    return out


def _sample_frames(found: np.ndarray, max_frames: int = 9) -> np.ndarray:
    idx = np.nonzero(found)[0]
    if len(idx) > max_frames:
        idx = idx[np.linspace(0, len(idx) - 1, max_frames).round().astype(int)]
    return idx


def _resolve_subjects(spec_or_subjects: VideoSpec | Sequence[SubjectSpec]) -> tuple[SubjectSpec, SubjectSpec]:
    if isinstance(spec_or_subjects, VideoSpec):
        return spec_or_subjects.subjects
    subjects = tuple(spec_or_subjects)
    if len(subjects) != 2:
        raise UserError(f"Expected two subjects; got {len(subjects)}.")
    return subjects[0], subjects[1]


def score_appearance(
    video: np.ndarray, subjects: VideoSpec | Sequence[SubjectSpec], track: TrackResult | None = None
) -> dict[str, object]:
    """How well the prompted subjects appear: per-subject presence (fraction of frames with a plausible blob of
    the prompted colour), mean shape IoU and shape accuracy (prompted shape is the best-matching template).

    ``appearance`` is the mean presence, ``shape_score`` the mean shape accuracy.
    """
    subj = _resolve_subjects(subjects)
    track = track if track is not None else track_subjects(video, subj)
    presence = track.found.mean(axis=1)
    ious, accs = [], []
    for k, s in enumerate(subj):
        frames = _sample_frames(track.found[k])
        if len(frames) == 0:
            ious.append(0.0)
            accs.append(0.0)
            continue
        per = [shape_ious(track.masks[k, t]) for t in frames]
        ious.append(float(np.mean([p[s.shape] for p in per])))
        accs.append(float(np.mean([max(p, key=p.get) == s.shape for p in per])))
    return {
        "appearance": float(presence.mean()),
        "presence": [float(p) for p in presence],
        "shape_iou": ious,
        "shape_accuracy": accs,
        "shape_score": float(np.mean(accs)),
    }


def score_leakage(
    video: np.ndarray,
    exemplar_subjects: Sequence[SubjectSpec],
    subjects: VideoSpec | Sequence[SubjectSpec] | None = None,
    track: TrackResult | None = None,
) -> dict[str, float]:
    """How much the exemplars' appearance shows up in a video generated for other subjects.

    ``colour_leakage``: max over exemplar colours (person tones for a person, excluding colours the prompted
    subjects use) of the fraction of frames with a plausible blob of that colour. ``shape_leakage`` (needs
    ``subjects``): fraction of tracked frames where a prompted subject's blob best matches an exemplar shape
    that was not prompted. ``leakage`` = the larger of the two.
    """
    vid = _as_video(video)
    height, width = vid.shape[1:3]
    prompted = _resolve_subjects(subjects) if subjects is not None else ()
    used: set[RGB] = set(track.colours) if track is not None else set()
    if prompted and track is None:
        track = track_subjects(vid, prompted)
        used = set(track.colours)
    used |= {s.rgb for s in prompted if not s.is_person}
    ex_colours: set[RGB] = set()
    for ex in exemplar_subjects:
        ex_colours |= set(PERSON_COLOURS.values()) if ex.is_person else {ex.rgb}
    colour_leak = 0.0
    for rgb in sorted(ex_colours - used):
        area = clean_mask(colour_mask(vid, rgb, list(used))).sum(axis=(1, 2))
        present = (area >= MIN_AREA) & (area <= MAX_AREA_FRACTION * height * width)
        colour_leak = max(colour_leak, float(present.mean()))
    shape_leak = 0.0
    if prompted and track is not None:
        ex_shapes = {ex.shape for ex in exemplar_subjects} - {s.shape for s in prompted}
        hits, total = 0, 0
        for k in range(2):
            for t in _sample_frames(track.found[k]):
                iou = shape_ious(track.masks[k, t])
                hits += max(iou, key=iou.get) in ex_shapes
                total += 1
        shape_leak = hits / total if total else 0.0
    return {
        "colour_leakage": colour_leak,
        "shape_leakage": shape_leak,
        "leakage": max(colour_leak, shape_leak),
    }


def temporal_consistency(video: np.ndarray) -> float:
    """Mean cosine similarity of consecutive frames (flattened, each frame mean-centred)."""
    vid = _as_video(video).reshape(np.asarray(video).shape[0], -1).astype(np.float64)
    if vid.shape[0] < 2:
        return 1.0
    vid -= vid.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(vid, axis=1)
    dots = (vid[:-1] * vid[1:]).sum(axis=1)
    denom = norms[:-1] * norms[1:]
    both_flat = (norms[:-1] < 1e-6) & (norms[1:] < 1e-6)
    cos = np.where(denom > 1e-12, dots / np.maximum(denom, 1e-12), np.where(both_flat, 1.0, 0.0))
    return float(cos.mean())


def evaluate_video(
    video: np.ndarray,
    spec_or_subjects: VideoSpec | Sequence[SubjectSpec],
    target_relation: str,
    exemplar_subjects: Sequence[SubjectSpec] | None = None,
    min_tracked_fraction: float = 0.5,
) -> dict[str, object]:
    """Track, classify and score one video against the prompted subjects and target relation.

    ``tracked`` is False when a subject was found in fewer than ``min_tracked_fraction`` of the frames; the
    relation then counts as wrong.
    """
    get_relation(target_relation)
    subjects = _resolve_subjects(spec_or_subjects)
    vid = _as_video(video)
    track = track_subjects(vid, subjects)
    frac = track.tracked_fraction
    tracked = bool((frac >= min_tracked_fraction).all())
    predicted, scores = classify_relation(track.trajectories(), vid.shape[1], vid.shape[2])
    result: dict[str, object] = {
        "target_relation": target_relation,
        "predicted_relation": predicted,
        "relation_correct": bool(tracked and predicted == target_relation),
        "relation_scores": scores,
        "tracked": tracked,
        "tracked_fraction": [float(f) for f in frac],
        "temporal_consistency": temporal_consistency(vid),
    }
    result.update(score_appearance(vid, subjects, track=track))
    if exemplar_subjects is not None:
        result.update(score_leakage(vid, exemplar_subjects, subjects, track=track))
    return result


def degrade_video(
    video: np.ndarray,
    rng: np.random.Generator,
    blur_sigma: float = 1.0,
    noise_std: float = 8.0,
    pool: int = 4,
) -> np.ndarray:
    """Simulate a small generator + VAE: Gaussian blur, additive noise, ``pool``x``pool`` average pooling
    and nearest upsampling. Returns uint8 (T,H,W,3)."""
    vid = _as_video(video)
    radius = max(1, int(np.ceil(2 * blur_sigma)))
    xk = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-0.5 * (xk / blur_sigma) ** 2)
    kernel /= kernel.sum()
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(vid, pad, mode="edge")
        n = vid.shape[axis]
        vid = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(kernel))
    vid = vid + rng.normal(0.0, noise_std, vid.shape).astype(np.float32)
    t, h, w, _ = vid.shape
    if pool > 1 and h % pool == 0 and w % pool == 0:
        pooled = vid.reshape(t, h // pool, pool, w // pool, pool, 3).mean(axis=(2, 4))
        vid = pooled.repeat(pool, axis=1).repeat(pool, axis=2)
    return np.clip(np.round(vid), 0, 255).astype(np.uint8)
