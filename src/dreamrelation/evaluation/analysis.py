"""Explainability analysis of the relation LoRA triplet (paper sec. 3.3) on a Mochi or Wan 2.1 transformer.

Three views, all from forward hooks that are removed again afterwards (the model is never modified):

* Q/K/V feature maps: the visual stream's ``attn1.to_q/to_k/to_v`` outputs, averaged over heads and layers
  (running sums, one ``(tokens, head_dim)`` buffer per kind, so memory stays bounded on the 10B Mochi),
  reshaped to ``(f, h/p, w/p, head_dim)`` and projected to RGB by a 3-component PCA fitted jointly over frames
  (and over videos in :func:`run_analysis`, so colours are comparable across videos).
* Subspace similarity ``(1/r) ||U_a^T U_b||_F^2`` of the top-``r`` left singular vectors, between the base
  Q/K/V weights of each block and between learned LoRA deltas ``B @ A``.
* Text-to-video attention: for each chosen prompt word, where in the video it is attended. Mochi (joint
  attention): the probabilities from the word's text queries to the visual keys, computed exactly as Mochi's
  processor does (RMS-normed q/k, rotary embedding on the visual keys only, softmax over ``[visual; valid
  text]`` keys, scale ``1/sqrt(head_dim)``), averaged over heads, layers and the word's tokens. Wan
  (cross-attention ``attn2``, video queries over text keys): the share of each visual token's attention
  that goes to the word's tokens, computed as Wan's processor does (q/k RMS norms across heads, no rotary,
  softmax over all text keys), averaged over heads and layers.

Blocks and projections come from the backbone registry (:mod:`dreamrelation.backbones.registry`).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamrelation.adapters.triplet import adapter_roles
from dreamrelation.backbones.loading import load_pipeline
from dreamrelation.backbones.registry import get_backbone, model_profile
from dreamrelation.data.prepare import encode_prompts, encode_video
from dreamrelation.errors import UserError
from dreamrelation.inference.generate import Sampling, generate_videos, load_adapter_choices, resolve_adapters
from dreamrelation.utils.io import atomic_write_json
from dreamrelation.utils.media import VIDEO_SUFFIXES, contact_sheet, read_video, save_png
from dreamrelation.utils.plots import INFERNO, colour_map, heatmap_image

__all__ = [
    "AnalysisInput",
    "adapter_similarity",
    "base_qkv_similarity",
    "linear_cka",
    "overlay_heat",
    "pca_rgb",
    "qkv_feature_maps",
    "qkv_features",
    "run_analysis",
    "subspace_similarity",
    "text_query_attention",
    "text_to_video_attention",
    "top_left_singular_vectors",
    "word_token_indices",
]

KINDS = ("q", "k", "v")
PAIRS = (("q", "k"), ("q", "v"), ("k", "v"))
#: Words skipped when no attention words are given.
STOP_WORDS = frozenset(
    ["a", "an", "the", "is", "are", "was", "be", "being", "with", "in", "on", "at", "of", "and", "to", "by"]
    + ["for", "from", "each", "other", "its", "their", "his", "her"]
)
Matrix = torch.Tensor | np.ndarray
Factorised = tuple[Matrix, Matrix]


# ----------------------------------------------------------------------------------------------
# hooks and a single analysis forward
# ----------------------------------------------------------------------------------------------


def _transformer(obj: Any) -> torch.nn.Module:
    """The transformer of a pipeline, or ``obj`` itself."""
    return getattr(obj, "transformer", obj)


def _patch(transformer: torch.nn.Module) -> tuple[int, int, int]:
    """``(frames, height, width)`` patch size (Mochi's int patch covers one latent frame)."""
    p = transformer.config.patch_size
    return (1, int(p), int(p)) if isinstance(p, int) else tuple(int(x) for x in p)


def _projection(block: torch.nn.Module, backbone: Any, stream: str, kind: str) -> torch.nn.Module | None:
    """The ``kind`` projection of ``stream`` in one block, or None where the backbone has none."""
    path = backbone.projections.get(stream, {}).get(kind)
    return None if path is None else _submodule(block, path)


def _submodule(module: torch.nn.Module, dotted: str) -> torch.nn.Module | None:
    """``module.a.b.0`` by name, or None when any part is missing."""
    for part in dotted.split("."):
        if part.isdigit() and isinstance(module, (torch.nn.ModuleList, torch.nn.Sequential)):
            idx = int(part)
            if idx >= len(module):
                return None
            module = module[idx]
        else:
            module = getattr(module, part, None)
            if module is None:
                return None
    return module


class _Collector:
    """Base class: registers hooks on a transformer and gathers results from one forward."""

    def attach(self, transformer: torch.nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
        raise NotImplementedError


class _QKVCollector(_Collector):
    """Running sums of the visual stream's q/k/v projection outputs, averaged over heads (batch item 0)."""

    def __init__(self, kinds: Sequence[str] = KINDS) -> None:
        self.kinds = tuple(kinds)
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = dict.fromkeys(self.kinds, 0)

    def attach(self, transformer: torch.nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
        backbone = get_backbone(transformer)
        handles = []
        for block in backbone.block_list(transformer):
            heads = int(block.attn1.heads)
            for kind in self.kinds:
                module = _projection(block, backbone, "visual", kind)
                handles.append(module.register_forward_hook(self._hook(kind, heads)))
        return handles

    def _hook(self, kind: str, heads: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
            x = output[0].detach().float()
            x = x.view(x.shape[0], heads, -1).mean(dim=1)
            if kind in self.sums:
                self.sums[kind] += x
            else:
                self.sums[kind] = x.clone()
            self.counts[kind] += 1

        return hook

    def means(self) -> dict[str, torch.Tensor]:
        """Per kind: ``(tokens, head_dim)`` mean over layers and heads (float32, CPU)."""
        return {k: (self.sums[k] / self.counts[k]).cpu() for k in self.kinds if self.counts[k]}


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Mochi's rotary embedding: rotate interleaved pairs ``(x[2i], x[2i+1])`` by the given angles."""
    pairs = x.float().unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, -1))


@torch.no_grad()
def text_query_attention(
    attn: torch.nn.Module,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    attention_mask: torch.Tensor,
    image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    rows: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint-attention probabilities of the valid text queries of batch item 0 in one Mochi attention.

    Returns ``(probs, valid)``: ``probs`` ``(heads, n_rows, N + L_valid)`` over the keys ``[visual; valid
    text]`` (as ``MochiAttnProcessor2_0``: q/k RMS norms, rotary on visual q/k only, scale 1/sqrt(d)) and the
    indices of the valid text tokens. ``rows`` picks text queries by their position among the valid tokens.
    """
    heads = int(attn.heads)
    hs, enc = hidden_states[:1], encoder_hidden_states[:1]
    valid = torch.nonzero(attention_mask[0].flatten(), as_tuple=False).flatten()
    key = _heads(attn.to_k(hs), heads)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    if image_rotary_emb is not None:
        key = _rotate(key, *image_rotary_emb)
    enc_valid = enc[:, valid]
    text_q = _heads(attn.add_q_proj(enc_valid), heads)
    text_k = _heads(attn.add_k_proj(enc_valid), heads)
    if attn.norm_added_q is not None:
        text_q = attn.norm_added_q(text_q)
    if attn.norm_added_k is not None:
        text_k = attn.norm_added_k(text_k)
    if rows is not None:
        text_q = text_q[:, list(rows)]
    keys = torch.cat([key[0].float(), text_k[0].float()], dim=0)  # (N + Lv, heads, d)
    logits = torch.einsum("shd,nhd->hsn", text_q[0].float(), keys) / math.sqrt(keys.shape[-1])
    return logits.softmax(dim=-1), valid


@torch.no_grad()
def cross_attention_probs(
    attn: torch.nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor
) -> torch.Tensor:
    """Cross-attention probabilities ``(heads, N, L)`` of batch item 0 in one Wan ``attn2``: visual queries
    over all text keys, as ``WanAttnProcessor`` computes them (q/k RMS norms across heads before the head
    split, no rotary embedding, no mask, scale ``1/sqrt(head_dim)``)."""
    heads = int(attn.heads)
    query = attn.norm_q(attn.to_q(hidden_states[:1]))
    key = attn.norm_k(attn.to_k(encoder_hidden_states[:1]))
    q, k = _heads(query, heads)[0].float(), _heads(key, heads)[0].float()  # (N, heads, d), (L, heads, d)
    logits = torch.einsum("nhd,lhd->hnl", q, k) / math.sqrt(q.shape[-1])
    return logits.softmax(dim=-1)


class _WordAttentionCollector(_Collector):
    """Running sum over layers of word <-> visual attention for groups of token positions (see the module
    docstring: Mochi's text queries over visual keys, Wan's visual queries over text keys)."""

    def __init__(self, groups: Mapping[str, Sequence[int]]) -> None:
        self.groups = {w: list(ix) for w, ix in groups.items() if ix}
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def attach(self, transformer: torch.nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
        backbone = get_backbone(transformer)
        if backbone.name == "mochi":
            return [
                block.attn1.register_forward_hook(self._hook, with_kwargs=True)
                for block in backbone.block_list(transformer)
            ]
        return [
            block.attn2.register_forward_hook(self._cross_hook, with_kwargs=True)
            for block in backbone.block_list(transformer)
        ]

    def _add(self, word: str, value: torch.Tensor) -> None:
        self.sums[word] = self.sums[word] + value if word in self.sums else value.clone()

    def _cross_hook(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not self.groups:
            return
        hs = kwargs.get("hidden_states", args[0] if args else None)
        enc = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        probs = cross_attention_probs(module, hs, enc).mean(dim=0)  # (N, L)
        for word, ix in self.groups.items():
            self._add(word, probs[:, [t for t in ix if t < probs.shape[1]]].sum(dim=1))
        self.count += 1

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not self.groups:
            return
        hs = kwargs.get("hidden_states", args[0] if args else None)
        enc = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        mask = kwargs.get("attention_mask", args[2] if len(args) > 2 else None)
        rope = kwargs.get("image_rotary_emb")
        valid = torch.nonzero(mask[0].flatten(), as_tuple=False).flatten().tolist()
        position = {tok: i for i, tok in enumerate(valid)}
        rows = sorted({position[t] for ix in self.groups.values() for t in ix if t in position})
        if not rows:
            return
        probs, _ = text_query_attention(module, hs, enc, mask, rope, rows=rows)
        n_visual = hs.shape[1]
        per_row = probs[:, :, :n_visual].mean(dim=0)  # (n_rows, N)
        where = {r: i for i, r in enumerate(rows)}
        for word, ix in self.groups.items():
            sel = [where[position[t]] for t in ix if t in position]
            if not sel:
                continue
            self._add(word, per_row[sel].mean(dim=0))
        self.count += 1

    def means(self) -> dict[str, torch.Tensor]:
        """Per word: ``(N,)`` attention mass on each visual token, mean over layers/heads/tokens (CPU)."""
        return {w: (s / max(self.count, 1)).cpu() for w, s in self.sums.items()}


@contextlib.contextmanager
def _attached(transformer: torch.nn.Module, collectors: Sequence[_Collector]) -> Iterator[None]:
    """Register every collector's hooks; remove them all on exit, also on error."""
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        for c in collectors:
            handles.extend(c.attach(transformer))
        yield
    finally:
        for h in handles:
            h.remove()


def _batch1(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Add a batch dimension when ``x`` has ``ndim - 1`` dims; keep only item 0 otherwise."""
    x = torch.as_tensor(x)
    return x[None] if x.ndim == ndim - 1 else x[:1]


@torch.no_grad()
def _forward(
    transformer: torch.nn.Module,
    collectors: Sequence[_Collector],
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    prompt_mask: torch.Tensor,
    timestep: float | torch.Tensor,
) -> tuple[int, int, int]:
    """One transformer forward with the collectors attached; returns the token grid ``(f, h/p, w/p)``."""
    param = next(transformer.parameters())
    device, dtype = param.device, param.dtype
    lat = _batch1(latents, 5).to(device, dtype)
    emb = _batch1(prompt_embeds, 3).to(device, dtype)
    mask = _batch1(prompt_mask, 2).to(device)
    t = torch.as_tensor(timestep, dtype=torch.float32).flatten()[:1].to(device, dtype)
    pf, ph, pw = _patch(transformer)
    f, h, w = lat.shape[-3:]
    if f % pf or h % ph or w % pw:
        raise UserError(f"latent size {f}x{h}x{w} is not a multiple of the patch size {(pf, ph, pw)}")
    with _attached(transformer, collectors):
        get_backbone(transformer).forward(transformer, lat, t.expand(lat.shape[0]), emb, mask)
    return f // pf, h // ph, w // pw


# ----------------------------------------------------------------------------------------------
# (a) Q/K/V feature maps
# ----------------------------------------------------------------------------------------------


def qkv_features(
    pipe_or_transformer: Any,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    prompt_mask: torch.Tensor,
    timestep: float | torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Visual q/k/v features, mean over layers and heads: kind -> ``(f, h/p, w/p, head_dim)`` float32 CPU.

    ``latents`` ``([1,] C, F, h, w)`` as the transformer sees them (normalised, noised to ``timestep``);
    whatever adapters are active apply.
    """
    collector = _QKVCollector()
    grid = _forward(
        _transformer(pipe_or_transformer), [collector], latents, prompt_embeds, prompt_mask, timestep
    )
    return {k: v.reshape(*grid, -1) for k, v in collector.means().items()}


def pca_rgb(features: Sequence[torch.Tensor | np.ndarray], clip_percent: float = 1.0) -> list[np.ndarray]:
    """Project feature arrays ``(..., d)`` to RGB with one 3-component PCA fitted jointly over all of them.

    Deterministic: components from the eigen-decomposition of the covariance, each signed so that its
    largest-magnitude loading is positive; each component is mapped to 0..255 between its joint
    ``clip_percent`` and ``100 - clip_percent`` percentiles. Returns uint8 arrays ``(..., 3)``.
    """
    arrays = [np.asarray(torch.as_tensor(f).float().cpu().numpy(), dtype=np.float64) for f in features]
    if not arrays:
        return []
    d = arrays[0].shape[-1]
    flat = np.concatenate([a.reshape(-1, d) for a in arrays], axis=0)
    centred = flat - flat.mean(axis=0, keepdims=True)
    cov = centred.T @ centred / max(len(centred), 1)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][: min(3, d)]
    comps = vectors[:, order]
    signs = np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(comps.shape[1])])
    comps = comps * np.where(signs == 0, 1.0, signs)
    proj = centred @ comps
    if proj.shape[1] < 3:
        proj = np.pad(proj, ((0, 0), (0, 3 - proj.shape[1])))
    lo = np.percentile(proj, clip_percent, axis=0)
    hi = np.percentile(proj, 100.0 - clip_percent, axis=0)
    scaled = np.clip((proj - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)
    rgb = np.rint(scaled * 255.0).astype(np.uint8)
    out, start = [], 0
    for a in arrays:
        n = int(np.prod(a.shape[:-1]))
        out.append(rgb[start : start + n].reshape(*a.shape[:-1], 3))
        start += n
    return out


def qkv_feature_maps(  # the arguments of qkv_features, passed on unchanged
    pipe_or_transformer: Any,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    prompt_mask: torch.Tensor,
    timestep: float | torch.Tensor,
) -> dict[str, np.ndarray]:
    """PCA-RGB maps of the visual q/k/v features (paper fig. 3): kind -> uint8 ``(f, h/p, w/p, 3)``."""
    feats = qkv_features(pipe_or_transformer, latents, prompt_embeds, prompt_mask, timestep)
    return {k: pca_rgb([v])[0] for k, v in feats.items()}


def linear_cka(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """Linear CKA between two token-aligned feature sets ``(..., d)`` (1 = same up to rotation/scale)."""
    a = np.asarray(torch.as_tensor(x).double().cpu().numpy()).reshape(-1, np.shape(x)[-1])
    b = np.asarray(torch.as_tensor(y).double().cpu().numpy()).reshape(-1, np.shape(y)[-1])
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"CKA needs the same number of tokens, got {a.shape[0]} and {b.shape[0]}")
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    cross = np.linalg.norm(b.T @ a) ** 2
    norm = np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)
    return float(cross / norm) if norm > 0 else math.nan


# ----------------------------------------------------------------------------------------------
# (b) subspace similarity
# ----------------------------------------------------------------------------------------------


def _as_tensor(m: Matrix) -> torch.Tensor:
    t = torch.as_tensor(m).detach()
    return t.double() if t.numel() <= (1 << 20) else t.float()


def _rank_cap(m: Matrix | Factorised) -> int:
    if isinstance(m, tuple):
        b, a = m
        return min(*np.shape(b), *np.shape(a))
    return min(np.shape(m))


def top_left_singular_vectors(matrix: Matrix | Factorised, r: int) -> torch.Tensor:
    """Orthonormal top-``r`` left singular vectors ``(rows, r)`` of a matrix or of a product ``(B, A)``.

    For ``(B, A)`` (a LoRA delta ``B @ A`` of rank <= r_lora) the SVD is taken on the small core after QR
    of both factors, never forming the full product.
    """
    if isinstance(matrix, tuple):
        b, a = (_as_tensor(x) for x in matrix)
        dtype = torch.promote_types(b.dtype, a.dtype)
        qb, rb = torch.linalg.qr(b.to(dtype))
        qa, ra = torch.linalg.qr(a.to(dtype).T)
        u, _, _ = torch.linalg.svd(rb @ ra.T)
        return (qb @ u)[:, :r]
    u, _, _ = torch.linalg.svd(_as_tensor(matrix), full_matrices=False)
    return u[:, :r]


def _similarity_from_bases(ua: torch.Tensor, ub: torch.Tensor, r: int) -> float:
    ub = ub.to(ua.device, ua.dtype)
    return float((ua[:, :r].T @ ub[:, :r]).pow(2).sum() / r)


def subspace_similarity(w_a: Matrix | Factorised, w_b: Matrix | Factorised, r: int) -> float:
    """``(1/r) ||U_a^T U_b||_F^2`` of the top-``r`` left singular vectors of ``w_a`` and ``w_b``, in [0, 1].

    Either may be a ``(B, A)`` pair meaning ``B @ A``. ``r`` is capped at the smallest matrix dimension.
    """
    rows_a = np.shape(w_a[0] if isinstance(w_a, tuple) else w_a)[0]
    rows_b = np.shape(w_b[0] if isinstance(w_b, tuple) else w_b)[0]
    if rows_a != rows_b:
        raise ValueError(f"matrices must have the same number of rows, got {rows_a} and {rows_b}")
    r = min(int(r), _rank_cap(w_a), _rank_cap(w_b))
    if r < 1:
        raise ValueError("r must be >= 1")
    return _similarity_from_bases(top_left_singular_vectors(w_a, r), top_left_singular_vectors(w_b, r), r)


def _base_weight(module: torch.nn.Module) -> torch.Tensor:
    """The frozen base weight of a (possibly PEFT-wrapped) linear layer."""
    base = getattr(module, "base_layer", module)
    return base.weight.detach()


@torch.no_grad()
def base_qkv_similarity(
    pipe_or_transformer: Any, r: int = 64, streams: Sequence[str] = ("visual", "text")
) -> dict[str, Any]:
    """Per block, subspace similarity of the base q/k/v weights for the pairs q-k, q-v, k-v of each stream.

    One block's singular vectors at a time. Returns ``{"r", "pairs", stream: [[s_qk, s_qv, s_kv], ...],
    "mean": {stream: {pair: value}}}``. Streams without all three projections (Wan's text stream has
    no query) are skipped.
    """
    transformer = _transformer(pipe_or_transformer)
    backbone = get_backbone(transformer)
    out: dict[str, Any] = {"r": int(r), "pairs": [f"{a}-{b}" for a, b in PAIRS], "mean": {}}
    for stream in streams:
        if any(backbone.projections.get(stream, {}).get(kind) is None for kind in KINDS):
            continue
        rows = []
        for block in backbone.block_list(transformer):
            bases = {}
            for kind in KINDS:
                w = _base_weight(_projection(block, backbone, stream, kind))
                bases[kind] = top_left_singular_vectors(w, min(r, *w.shape))
            rr = min(b.shape[1] for b in bases.values())
            rows.append([_similarity_from_bases(bases[a], bases[b], rr) for a, b in PAIRS])
            del bases
        out[stream] = rows
        out["mean"][stream] = {
            p: float(np.mean([row[i] for row in rows])) for i, p in enumerate(out["pairs"])
        }
    return out


def _lora_factors(module: torch.nn.Module, role: str) -> Factorised | None:
    """``(B, A)`` weights of adapter ``role`` on a PEFT LoRA layer, or None."""
    lora_a = getattr(module, "lora_A", None)
    lora_b = getattr(module, "lora_B", None)
    if lora_a is None or lora_b is None or role not in lora_a:
        return None
    return lora_b[role].weight.detach(), lora_a[role].weight.detach()


@torch.no_grad()
def adapter_similarity(
    pipe_or_transformer: Any, roles: Sequence[str] | None = None, r: int | None = None
) -> dict[str, Any]:
    """Subspace similarity between every pair of learned LoRA deltas ``B @ A`` within each block.

    Items are labelled ``role:stream.kind``; pairs with different output sizes are NaN. ``r`` defaults to
    the smallest LoRA rank. Returns ``{"labels", "r", "blocks": [matrix per block], "mean": matrix}`` (the
    mean over blocks where both items exist).
    """

    transformer = _transformer(pipe_or_transformer)
    roles = list(roles) if roles is not None else adapter_roles(transformer)
    if not roles:
        raise UserError("adapter similarity needs adapters on the model (none loaded)")
    backbone = get_backbone(transformer)
    per_block: list[dict[str, Factorised]] = []
    for block in backbone.block_list(transformer):
        items: dict[str, Factorised] = {}
        for role in roles:
            for stream, names in backbone.projections.items():
                for kind in names:
                    module = _projection(block, backbone, stream, kind)
                    factors = None if module is None else _lora_factors(module, role)
                    if factors is not None:
                        items[f"{role}:{stream}.{kind}"] = factors
        per_block.append(items)
    labels = list(dict.fromkeys(label for items in per_block for label in items))
    if not labels:
        raise UserError(f"no LoRA weights found for roles {roles}")
    if r is None:
        r = min(_rank_cap(f) for items in per_block for f in items.values())
    n = len(labels)
    blocks = []
    for items in per_block:
        bases = {k: top_left_singular_vectors(f, min(r, _rank_cap(f))) for k, f in items.items()}
        mat = np.full((n, n), np.nan)
        for i, a in enumerate(labels):
            for j, b in enumerate(labels):
                if a in bases and b in bases and bases[a].shape[0] == bases[b].shape[0]:
                    rr = min(bases[a].shape[1], bases[b].shape[1])
                    mat[i, j] = _similarity_from_bases(bases[a], bases[b], rr)
        blocks.append(mat)
    stack = np.stack(blocks)
    with np.errstate(invalid="ignore"), warnings_off():
        mean = np.nanmean(stack, axis=0)
    return {"labels": labels, "r": int(r), "blocks": [b.tolist() for b in blocks], "mean": mean.tolist()}


@contextlib.contextmanager
def warnings_off() -> Iterator[None]:
    """Silence numpy's 'mean of empty slice' for all-NaN cells."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        yield


# ----------------------------------------------------------------------------------------------
# heat-maps and overlays (PIL + numpy; matplotlib is not a dependency)
# ----------------------------------------------------------------------------------------------


def latent_frame_index(num_frames: int, latent_frames: int) -> np.ndarray:
    """Latent frame of each pixel frame: the first frame alone, then groups of ``(T-1)/(f-1)`` frames."""
    if latent_frames <= 1:
        return np.zeros(num_frames, dtype=int)
    stride = max(1, round((num_frames - 1) / (latent_frames - 1)))
    t = np.arange(num_frames)
    return np.minimum(np.where(t == 0, 0, (t - 1) // stride + 1), latent_frames - 1)


def upsample_maps(maps: np.ndarray | torch.Tensor, num_frames: int, height: int, width: int) -> np.ndarray:
    """Per-latent-frame maps ``(f, h', w')`` -> per-pixel-frame maps ``(T, H, W)`` (bilinear in space)."""
    m = torch.as_tensor(np.asarray(maps), dtype=torch.float32)[:, None]
    up = torch.nn.functional.interpolate(m, size=(height, width), mode="bilinear", align_corners=False)[:, 0]
    return up.numpy()[latent_frame_index(num_frames, m.shape[0])]


def overlay_heat(frames: np.ndarray, maps: np.ndarray | torch.Tensor, alpha: float = 0.55) -> np.ndarray:
    """Blend an inferno-coloured attention map (min-max normalised over the video) onto ``frames``."""
    video = np.asarray(frames)
    t, h, w = video.shape[:3]
    up = upsample_maps(maps, t, h, w)
    lo, hi = float(up.min()), float(up.max())
    norm = (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)
    heat = colour_map(norm, INFERNO).astype(np.float32)
    weight = alpha * np.sqrt(norm)[..., None]
    out = (1.0 - weight) * video.astype(np.float32) + weight * heat
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _maps_to_pixels(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-upscale ``(f, h', w', 3)`` maps to about ``height x width`` (integer factors)."""
    fy = max(1, height // maps.shape[1])
    fx = max(1, width // maps.shape[2])
    return np.repeat(np.repeat(maps, fy, axis=1), fx, axis=2)


# ----------------------------------------------------------------------------------------------
# (c) text-to-video attention
# ----------------------------------------------------------------------------------------------


def _find(seq: Sequence[int], sub: Sequence[int]) -> int:
    for i in range(len(seq) - len(sub) + 1):
        if list(seq[i : i + len(sub)]) == list(sub):
            return i
    return -1


def word_token_indices(
    tokenizer: Any, prompt: str, words: Sequence[str], max_length: int
) -> dict[str, list[int]]:
    """Positions of each word's tokens in the prompt as the pipeline tokenises it (empty if not found).

    A word (or phrase) is found as its own token sequence inside the prompt's, else by matching decoded
    token pieces (sentencepiece ``▁`` stripped), case-insensitively.
    """
    ids = tokenizer(
        prompt, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True
    )["input_ids"]
    pieces = [
        str(p).replace("\u2581", "").replace("</w>", "").lower() for p in tokenizer.convert_ids_to_tokens(ids)
    ]
    out: dict[str, list[int]] = {}
    for word in words:
        sub = tokenizer(word, add_special_tokens=False)["input_ids"]
        start = _find(ids, sub) if sub else -1
        if start >= 0:
            out[word] = list(range(start, start + len(sub)))
            continue
        target = word.replace(" ", "").lower()
        found: list[int] = []
        for i in range(len(pieces)):
            acc = ""
            for j in range(i, len(pieces)):
                acc += pieces[j]
                if acc == target:
                    found = list(range(i, j + 1))
                    break
                if not target.startswith(acc):
                    break
            if found:
                break
        out[word] = found
    return out


def default_words(prompt: str) -> list[str]:
    """Content words of ``prompt`` (stop words and punctuation dropped), in order, without repeats."""
    words = re.findall(r"[A-Za-z][A-Za-z'-]*", prompt)
    return list(dict.fromkeys(w for w in words if w.lower() not in STOP_WORDS))


@dataclass
class WordAttention:
    """Text-to-video attention: per word ``(f, h/p, w/p)`` maps (attention mass per visual token)."""

    maps: dict[str, np.ndarray]
    token_indices: dict[str, list[int]]
    missing: list[str] = field(default_factory=list)


def text_to_video_attention(
    pipe: Any,
    prompt: str,
    words: Sequence[str] | None,
    latents: torch.Tensor,
    timestep: float | torch.Tensor,
) -> WordAttention:
    """Where each word is attended in the video, mean over heads and layers (see the module docstring).

    Mochi: exact reproduction of its joint attention for the text rows (:func:`text_query_attention`), the
    softmax mass each visual token receives from the word's queries (the rest goes to text keys). Wan:
    :func:`cross_attention_probs`, the share of each visual token's cross-attention on the word's tokens.
    """

    words = list(words) if words else default_words(prompt)
    embeds, mask = encode_prompts(pipe, [prompt])
    length = get_backbone(pipe).text_length(pipe)
    tokens = word_token_indices(pipe.tokenizer, prompt, words, length)
    collector = _WordAttentionCollector(tokens)
    grid = _forward(pipe.transformer, [collector], latents, embeds, mask, timestep)
    maps = {w: v.reshape(grid).numpy() for w, v in collector.means().items()}
    return WordAttention(maps=maps, token_indices=tokens, missing=[w for w in words if w not in maps])


# ----------------------------------------------------------------------------------------------
# run_analysis
# ----------------------------------------------------------------------------------------------


@dataclass
class AnalysisInput:
    """One analysed video: uint8 frames ``(T, H, W, 3)`` and its caption."""

    name: str
    frames: np.ndarray
    caption: str
    source: str = ""


def _caption_for(path: Path) -> str:
    for candidate in (path.with_suffix(".txt"), path.with_suffix(".json")):
        if candidate.is_file():
            if candidate.suffix == ".txt":
                return candidate.read_text().strip()
            import json

            with contextlib.suppress(ValueError):
                return str(json.loads(candidate.read_text()).get("prompt", "")).strip()
    raise UserError(
        f"{path}: no caption (write one line to {path.with_suffix('.txt')}) or pass (video, caption)"
    )


def _fit_geometry(frames: np.ndarray, multiple: int, max_frames: int | None, temporal: int = 6) -> np.ndarray:
    """Trim to ``temporal`` k + 1 frames (at most ``max_frames``) and centre-crop H, W to multiples of
    ``multiple``."""
    t = frames.shape[0] if max_frames is None else min(frames.shape[0], max_frames)
    t = (t - 1) // temporal * temporal + 1
    h = frames.shape[1] // multiple * multiple
    w = frames.shape[2] // multiple * multiple
    if t < 1 or h < multiple or w < multiple:
        raise UserError(f"video too small for the model: {frames.shape[:3]} (need >= {multiple} px)")
    y0, x0 = (frames.shape[1] - h) // 2, (frames.shape[2] - w) // 2
    return np.ascontiguousarray(frames[:t, y0 : y0 + h, x0 : x0 + w])


def _resolve_inputs(
    pipe: Any,
    items: Sequence[str | os.PathLike | tuple[str | os.PathLike, str]],
    seed: int,
    steps: int | None,
    max_frames: int | None,
) -> list[AnalysisInput]:
    """Videos (paths, or ``(path, caption)``) are read; other strings are prompts, generated first."""

    backbone = get_backbone(pipe)
    multiple = backbone.spatial_compression * _patch(pipe.transformer)[1]
    out = []
    for i, item in enumerate(items):
        caption = None
        if isinstance(item, tuple):
            item, caption = item
        path = Path(item)
        if isinstance(item, os.PathLike) or path.is_file() or path.suffix.lower() in VIDEO_SUFFIXES:
            frames, _ = read_video(path)
            caption = caption or _caption_for(path)
            name, source = path.stem, str(path)
        else:
            caption = str(item)
            d_steps, d_guidance, _ = model_profile(pipe).sampling_defaults
            frames = generate_videos(pipe, [caption], [seed], Sampling(steps or d_steps, d_guidance))[0]
            name, source = f"prompt{i:02d}", "generated"
        out.append(
            AnalysisInput(
                f"{i:02d}_{name}"[:60],
                _fit_geometry(frames, multiple, max_frames, backbone.temporal_compression),
                caption,
                source,
            )
        )
    return out


def _noised_latents(pipe: Any, frames: np.ndarray, sigma: float, seed: int) -> tuple[torch.Tensor, float]:
    """Normalised VAE latents noised to ``sigma`` (rectified flow) and the backbone's model timestep."""

    latent, _ = encode_video(pipe.vae, frames)
    eps = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    return (1.0 - sigma) * latent + sigma * eps, _timestep(pipe, sigma)


def _timestep(pipe: Any, sigma: float) -> float:
    return float(get_backbone(pipe).flow.timestep(torch.tensor(sigma)))


def _pixel_frames_for_latents(frames: np.ndarray, latent_frames: int) -> np.ndarray:
    """One representative pixel frame per latent frame (the last frame of each VAE group)."""
    index = latent_frame_index(frames.shape[0], latent_frames)
    picks = [int(np.nonzero(index == j)[0][-1]) for j in range(latent_frames)]
    return frames[picks]


@dataclass
class AnalysisConfig:
    """Settings of :func:`run_analysis`. ``adapters``/``roles`` as for ``dreamrelation generate``; ``words``:
    the prompt words whose attention is drawn (default: :func:`default_words`); ``sigma``: the noise level
    the videos are analysed at; ``rank``: the subspace rank of the base-weight similarity; ``steps``,
    ``seed``: for videos generated from prompts; ``max_frames``: cut longer videos."""

    adapters: str | os.PathLike | Sequence[str | os.PathLike] | None = None
    roles: Mapping[str, float] | Sequence[str] | None = None
    words: Sequence[str] | None = None
    sigma: float = 0.5
    rank: int = 64
    seed: int = 0
    steps: int | None = None
    max_frames: int | None = None
    frames_per_cell: int = 8
    device: str | None = None
    dtype: torch.dtype = torch.float32
    text_encoder: str | os.PathLike | None = None  # T5 folder of a genmo-layout Mochi directory


def run_analysis(
    model_dir_or_pipe: Any,
    out_dir: str | os.PathLike,
    videos_or_prompts: Sequence[str | os.PathLike | tuple[str | os.PathLike, str]],
    cfg: AnalysisConfig | None = None,
) -> dict[str, Any]:
    """Run the paper's Q/K/V analysis and write PNGs + ``analysis.json`` to ``out_dir``; return the summary.

    ``videos_or_prompts``: video files (caption from a same-name ``.txt``/``.json``), ``(video, caption)``
    pairs, or prompts (a video is generated first). Each video is VAE-encoded and noised to ``cfg.sigma``
    (Mochi: timestep ``(1 - sigma) * 1000``; Wan: ``sigma * 1000``). Writes ``qkv_features.png`` (video /
    Q / K / V rows per input, PCA fitted jointly over inputs), ``base_qkv_similarity.png``,
    ``adapter_similarity.png`` (with adapters), ``attention_NN.png`` (per input, one row per word) and
    ``analysis.json``.
    """
    cfg = cfg or AnalysisConfig()
    if not 0.0 <= cfg.sigma < 1.0:
        raise UserError(f"sigma must be in [0, 1), got {cfg.sigma}")
    if not videos_or_prompts:
        raise UserError("nothing to analyse: give videos or prompts")
    if isinstance(model_dir_or_pipe, (str, os.PathLike)) or model_dir_or_pipe is None:
        device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        pipe = load_pipeline(model_dir_or_pipe, dtype=cfg.dtype, device=device, text_encoder=cfg.text_encoder)
    else:
        pipe = model_dir_or_pipe
    load_adapter_choices(pipe, resolve_adapters(cfg.adapters, cfg.roles))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inputs = _resolve_inputs(pipe, videos_or_prompts, cfg.seed, cfg.steps, cfg.max_frames)
    summary: dict[str, Any] = {
        "sigma": cfg.sigma,
        "timestep": _timestep(pipe, cfg.sigma),
        "inputs": [],
        "files": {},
    }
    summary["adapters"] = adapter_roles(pipe.transformer)
    features, attentions = _collect(pipe, inputs, cfg, summary)
    _qkv_figures(out, inputs, features, cfg.frames_per_cell, summary)  # (a) Q/K/V features, cross-video CKA
    _similarity_figures(pipe, out, cfg.rank, summary)  # (b) subspace similarity of base weights and adapters
    _attention_figures(out, inputs, attentions, cfg.frames_per_cell, summary)  # (c) attention overlays
    atomic_write_json(out / "analysis.json", summary)
    return summary


def _collect(
    pipe: Any, inputs: Sequence[Any], cfg: AnalysisConfig, summary: dict[str, Any]
) -> tuple[list[dict[str, torch.Tensor]], list[WordAttention]]:
    """One forward per input at ``cfg.sigma``: its mean Q/K/V features and its words' attention maps."""
    features: list[dict[str, torch.Tensor]] = []
    attentions: list[WordAttention] = []
    length = get_backbone(pipe).text_length(pipe)
    for k, item in enumerate(inputs):
        latents, timestep = _noised_latents(pipe, item.frames, cfg.sigma, cfg.seed + k)
        embeds, mask = encode_prompts(pipe, [item.caption])
        item_words = list(cfg.words) if cfg.words else default_words(item.caption)
        tokens = word_token_indices(pipe.tokenizer, item.caption, item_words, length)
        qkv, att = _QKVCollector(), _WordAttentionCollector(tokens)
        grid = _forward(pipe.transformer, [qkv, att], latents, embeds, mask, timestep)
        features.append({kind: v.reshape(*grid, -1) for kind, v in qkv.means().items()})
        maps = {w: v.reshape(grid).numpy() for w, v in att.means().items()}
        attentions.append(WordAttention(maps, tokens, [w for w in item_words if w not in maps]))
        summary["inputs"].append(
            {
                "name": item.name,
                "source": item.source,
                "caption": item.caption,
                "frames": list(item.frames.shape[:3]),
                "token_grid": list(grid),
                "word_tokens": tokens,
                "words_not_found": attentions[-1].missing,
            }
        )
    return features, attentions


def _qkv_figures(
    out: Path,
    inputs: Sequence[Any],
    features: list[dict[str, torch.Tensor]],
    frames_per_cell: int,
    summary: dict,
) -> None:
    """PCA of the Q/K/V features jointly over inputs per kind; cross-video CKA with several inputs."""
    rgb = {kind: pca_rgb([f[kind] for f in features]) for kind in KINDS}
    rows, labels = [], []
    for k, item in enumerate(inputs):
        f = features[k]["q"].shape[0]
        h, w = item.frames.shape[1:3]
        rows.append([_pixel_frames_for_latents(item.frames, f)])
        labels.append(f"{item.name} video")
        for kind in KINDS:
            rows.append([_maps_to_pixels(rgb[kind][k], h, w)])
            labels.append(f"{item.name} {kind.upper()}")
    sheet = contact_sheet(rows, row_labels=labels, frames_per_cell=frames_per_cell)
    summary["files"]["qkv_features"] = str(save_png(out / "qkv_features.png", sheet))
    if len(features) > 1:
        cka: dict[str, float | None] = {}
        for kind in KINDS:
            vals = [
                linear_cka(features[i][kind], features[j][kind])
                for i in range(len(features))
                for j in range(i + 1, len(features))
                if features[i][kind].shape == features[j][kind].shape
            ]
            cka[kind] = float(np.mean(vals)) if vals else None
        summary["cross_video_cka"] = cka


def _similarity_figures(pipe: Any, out: Path, rank: int, summary: dict) -> None:
    """Subspace similarity of the base Q/K/V weights per block, and of the adapters (if any)."""
    base = base_qkv_similarity(pipe.transformer, r=rank)
    summary["base_qkv_similarity"] = base
    streams = [s for s in ("visual", "text") if s in base]
    cols = [f"{s} {p}" for s in streams for p in base["pairs"]]
    values = np.concatenate([np.asarray(base[s]) for s in streams], axis=1)
    img = heatmap_image(
        values,
        [f"block {i}" for i in range(len(values))],
        cols,
        title=f"base Q/K/V subspace similarity (r={base['r']})",
    )
    summary["files"]["base_qkv_similarity"] = str(save_png(out / "base_qkv_similarity.png", img))
    if summary["adapters"]:
        ad = adapter_similarity(pipe.transformer)
        summary["adapter_similarity"] = {"labels": ad["labels"], "r": ad["r"], "mean": ad["mean"]}
        img = heatmap_image(
            ad["mean"], ad["labels"], ad["labels"], title=f"LoRA subspace similarity (r={ad['r']})"
        )
        summary["files"]["adapter_similarity"] = str(save_png(out / "adapter_similarity.png", img))


def _attention_figures(
    out: Path, inputs: Sequence[Any], attentions: list[WordAttention], frames_per_cell: int, summary: dict
) -> None:
    """Per input: the video above one heat-map overlay per found word; their visual attention mass."""
    for k, (item, att) in enumerate(zip(inputs, attentions, strict=True)):
        if not att.maps:
            continue
        rows = [[item.frames]] + [[overlay_heat(item.frames, m)] for m in att.maps.values()]
        sheet = contact_sheet(rows, row_labels=["video", *att.maps], frames_per_cell=frames_per_cell)
        summary["files"][f"attention_{k:02d}"] = str(save_png(out / f"attention_{k:02d}.png", sheet))
        summary["inputs"][k]["attention_visual_mass"] = {w: float(m.sum()) for w, m in att.maps.items()}
