"""Q/K/V explainability analysis on tiny random Mochi transformers (no downloads, no mocks)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import MochiTransformer3DModel
from tiny import TINY_TRANSFORMER

from dreamrelation.adapters.triplet import add_relation_adapters, save_adapters, set_active_roles
from dreamrelation.core.roles import AdapterConfig
from dreamrelation.evaluation.analysis import (
    AnalysisConfig,
    adapter_similarity,
    base_qkv_similarity,
    linear_cka,
    overlay_heat,
    pca_rgb,
    qkv_feature_maps,
    qkv_features,
    run_analysis,
    subspace_similarity,
    text_query_attention,
    text_to_video_attention,
    upsample_maps,
    word_token_indices,
)
from dreamrelation.utils.plots import heatmap_image

TINY_T = TINY_TRANSFORMER


def tiny(seed: int = 0) -> MochiTransformer3DModel:
    torch.manual_seed(seed)
    return MochiTransformer3DModel(**TINY_T).eval()


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(12, 3, 4, 6, generator=g)
    emb = torch.randn(8, 32, generator=g)
    mask = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0])
    return latents, emb, mask, 400.0


def model_out(model: MochiTransformer3DModel) -> torch.Tensor:
    lat, emb, mask, t = inputs()
    with torch.no_grad():
        return model(
            hidden_states=lat[None],
            encoder_hidden_states=emb[None],
            timestep=torch.tensor([t]),
            encoder_attention_mask=mask[None],
            return_dict=False,
        )[0]


def no_hooks(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ---------------------------------------------------------------------------------------------- (b)


def _basis(n: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q


def _matrix(cols: np.ndarray, singular: list[float], n_in: int = 6, seed: int = 1) -> np.ndarray:
    v = _basis(n_in, seed)[:, : len(singular)]
    return cols @ np.diag(singular) @ v.T


def test_subspace_similarity_hand_made() -> None:
    q = _basis(8, 0)
    w_a = _matrix(q[:, [0, 1, 5, 6]], [3.0, 2.0, 0.2, 0.1])  # top-2 subspace: span(q0, q1)
    assert subspace_similarity(w_a, w_a.copy(), 2) == pytest.approx(1.0, abs=1e-12)
    w_orth = _matrix(q[:, 2:4], [5.0, 1.0], seed=3)
    assert subspace_similarity(w_a, w_orth, 2) == pytest.approx(0.0, abs=1e-12)
    theta = 0.7
    partial = np.stack([q[:, 0], math.cos(theta) * q[:, 1] + math.sin(theta) * q[:, 2]], axis=1)
    w_b = _matrix(partial, [4.0, 1.5], seed=4)
    # exact value: (1/2)(1 + cos^2 theta)
    assert subspace_similarity(w_a, w_b, 2) == pytest.approx((1 + math.cos(theta) ** 2) / 2, abs=1e-12)
    # symmetric, and r = 1 compares only the top directions (q0 vs q0)
    assert subspace_similarity(w_b, w_a, 2) == pytest.approx(subspace_similarity(w_a, w_b, 2))
    assert subspace_similarity(w_a, w_b, 1) == pytest.approx(1.0, abs=1e-12)


def test_subspace_similarity_matches_independent_numpy() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((10, 7)), rng.standard_normal((10, 9))
    for r in (1, 3, 5):
        ua = np.linalg.svd(a)[0][:, :r]
        ub = np.linalg.svd(b)[0][:, :r]
        expected = np.linalg.norm(ua.T @ ub, "fro") ** 2 / r
        assert subspace_similarity(torch.from_numpy(a), b, r) == pytest.approx(expected, abs=1e-10)
    # factorised (B, A) equals the dense product
    lb, la = rng.standard_normal((10, 4)), rng.standard_normal((4, 7))
    assert subspace_similarity((lb, la), a, 3) == pytest.approx(subspace_similarity(lb @ la, a, 3), abs=1e-10)
    with pytest.raises(ValueError):
        subspace_similarity(a, rng.standard_normal((9, 7)), 2)


def test_base_qkv_similarity_per_block() -> None:
    model = tiny()
    out = base_qkv_similarity(model, r=8)
    assert len(out["visual"]) == 2 and len(out["text"]) == 2 and out["pairs"] == ["q-k", "q-v", "k-v"]
    attn = model.transformer_blocks[1].attn1
    uq = np.linalg.svd(attn.add_q_proj.weight.detach().double().numpy())[0][:, :8]
    uv = np.linalg.svd(attn.add_v_proj.weight.detach().double().numpy())[0][:, :8]
    assert out["text"][1][1] == pytest.approx(np.linalg.norm(uq.T @ uv) ** 2 / 8, abs=1e-9)
    assert all(0.0 <= v <= 1.0 + 1e-9 for row in out["visual"] for v in row)


def test_adapter_similarity_on_lora_deltas() -> None:
    model = tiny()
    add_relation_adapters(model, AdapterConfig(rank=4, alpha=4))
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_()
    out = adapter_similarity(model)
    labels, mean = out["labels"], np.asarray(out["mean"], dtype=float)
    assert out["r"] == 4 and "relation:visual.q" in labels and "subject1:visual.v" in labels
    assert np.allclose(np.diag(mean)[np.isfinite(np.diag(mean))], 1.0)
    i, j = labels.index("relation:visual.q"), labels.index("relation:visual.k")
    attn = model.transformer_blocks[0].attn1
    dq = attn.to_q.lora_B["relation"].weight @ attn.to_q.lora_A["relation"].weight
    dk = attn.to_k.lora_B["relation"].weight @ attn.to_k.lora_A["relation"].weight
    assert out["blocks"][0][i][j] == pytest.approx(subspace_similarity(dq.double(), dk.double(), 4), abs=1e-6)


def test_heatmap_image_renders() -> None:
    img = heatmap_image([[0.0, 0.5], [1.0, float("nan")]], ["a", "b"], ["x", "yy"], title="t")
    arr = np.asarray(img)
    assert arr.ndim == 3 and arr.shape[2] == 3 and arr.shape[0] > 72 and arr.shape[1] > 72
    assert len({tuple(p) for p in arr.reshape(-1, 3)}) > 10  # colours, not a blank canvas


# ---------------------------------------------------------------------------------------------- (a)


def test_qkv_feature_maps_shapes_deterministic_and_no_side_effects() -> None:
    model = tiny()
    before = model_out(model)
    lat, emb, mask, t = inputs()
    maps = qkv_feature_maps(model, lat, emb, mask, t)
    assert set(maps) == {"q", "k", "v"}
    for m in maps.values():
        assert m.shape == (3, 2, 3, 3) and m.dtype == np.uint8
    again = qkv_feature_maps(model, lat, emb, mask, t)
    assert all(np.array_equal(maps[k], again[k]) for k in maps)
    assert no_hooks(model)
    assert torch.equal(model_out(model), before)


def test_qkv_features_equal_manual_mean_over_layers_and_heads() -> None:
    model = tiny()
    lat, emb, mask, t = inputs()
    seen: list[torch.Tensor] = []
    handles = [
        b.attn1.to_v.register_forward_hook(lambda m, a, o: seen.append(o[0].detach()))
        for b in model.transformer_blocks
    ]
    feats = qkv_features(model, lat, emb, mask, t)
    for h in handles:
        h.remove()
    manual = torch.stack([s.view(s.shape[0], 2, 16).mean(1) for s in seen]).mean(0)
    assert torch.allclose(feats["v"].reshape(-1, 16), manual, atol=1e-6)


def test_pca_rgb_deterministic_and_cka() -> None:
    x = torch.randn(3, 4, 5, 8, generator=torch.Generator().manual_seed(0))
    a, b = pca_rgb([x, 2 * x + 1])
    assert a.shape == (3, 4, 5, 3) and np.array_equal(pca_rgb([x, 2 * x + 1])[0], a)
    assert linear_cka(x, 3 * x) == pytest.approx(1.0)
    assert linear_cka(x, torch.randn(3, 4, 5, 8)) < 0.9


def test_v_adapter_changes_v_maps() -> None:
    model = tiny()
    add_relation_adapters(model, AdapterConfig(rank=4, alpha=4))
    set_active_roles(model, ["subject1"], trainable=False)
    lat, emb, mask, t = inputs()
    base = qkv_features(model, lat, emb, mask, t)  # LoRA B starts at zero: no effect yet
    with torch.no_grad():
        model.transformer_blocks[0].attn1.to_v.lora_B["subject1"].weight.normal_()
    tuned = qkv_features(model, lat, emb, mask, t)
    assert not torch.allclose(base["v"], tuned["v"], atol=1e-4)
    set_active_roles(model, [], trainable=False)
    assert torch.allclose(qkv_features(model, lat, emb, mask, t)["v"], base["v"], atol=1e-6)


# ---------------------------------------------------------------------------------------------- (c)


def test_text_query_attention_reproduces_mochi_attention() -> None:
    """Probabilities times values give exactly the processor's text-row output (input of to_add_out)."""
    model = tiny()
    attn = model.transformer_blocks[0].attn1
    captured: dict = {}

    def grab_kwargs(module, args, kwargs):  # noqa: ANN001, ANN202
        captured["kw"] = kwargs

    def grab_out(module, args):  # noqa: ANN001, ANN202
        captured["text_out"] = args[0]

    h1 = attn.register_forward_pre_hook(grab_kwargs, with_kwargs=True)
    h2 = attn.to_add_out.register_forward_pre_hook(grab_out)
    model_out(model)
    h1.remove()
    h2.remove()
    kw = captured["kw"]
    probs, valid = text_query_attention(
        attn, kw["hidden_states"], kw["encoder_hidden_states"], kw["attention_mask"], kw["image_rotary_emb"]
    )
    with torch.no_grad():
        v = attn.to_v(kw["hidden_states"][:1]).unflatten(2, (2, -1))[0]
        ev = attn.add_v_proj(kw["encoder_hidden_states"][:1, valid]).unflatten(2, (2, -1))[0]
    values = torch.cat([v, ev]).float().transpose(0, 1)  # (heads, N + Lv, d)
    out = (probs @ values).transpose(0, 1).flatten(1)  # (Lv, heads * d)
    assert probs.shape == (2, 5, 3 * 2 * 3 + 5)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 5), atol=1e-6)
    assert torch.allclose(out, captured["text_out"][0, valid], atol=1e-5)


def test_overlay_and_upsample() -> None:
    maps = np.zeros((3, 2, 2))
    maps[1, 0, 0] = 1.0
    up = upsample_maps(maps, 13, 16, 16)
    assert up.shape == (13, 16, 16) and up[0].max() == 0 and up[1:7].max() > 0 and up[7:].max() == 0
    frames = np.full((13, 16, 16, 3), 128, np.uint8)
    over = overlay_heat(frames, maps)
    assert over.shape == frames.shape and over.dtype == np.uint8 and np.array_equal(over[0], frames[0])
    assert not np.array_equal(over[1], frames[1])


@pytest.fixture(scope="module")
def pipe(tiny_bundle):  # noqa: ANN001, ANN201
    from dreamrelation.backbones.loading import load_pipeline

    return load_pipeline(tiny_bundle)


def test_text_to_video_attention_and_tokens(pipe) -> None:  # noqa: ANN001
    prompt = "a red circle is approaching a blue square"
    tokens = word_token_indices(pipe.tokenizer, prompt, ["circle", "blue square", "zebra"], 32)
    assert tokens["circle"] == [2] and len(tokens["blue square"]) == 2 and tokens["zebra"] == []
    lat = torch.randn(12, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    att = text_to_video_attention(pipe, prompt, ["circle", "approaching", "zebra"], lat, 500.0)
    assert att.missing == ["zebra"] and set(att.maps) == {"circle", "approaching"}
    for m in att.maps.values():
        assert m.shape == (5, 4, 4) and (m >= 0).all() and 0 < m.sum() <= 1 + 1e-5
    assert no_hooks(pipe.transformer)


def test_run_analysis_writes_sheets_and_json(pipe, tiny_bundle, tmp_path) -> None:  # noqa: ANN001
    from dreamrelation.utils.media import write_video

    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        frames = np.zeros((13, 64, 64, 3), np.uint8)
        for t in range(13):
            frames[t, 10 + t : 26 + t, 8 + 2 * i : 24 + 2 * i] = (225, 30, 30)
        frames = np.clip(frames.astype(int) + rng.integers(0, 20, frames.shape), 0, 255).astype(np.uint8)
        paths.append(write_video(tmp_path / f"v{i}.mp4", frames, fps=8, scale=1))
    (tmp_path / "v0.txt").write_text("a red circle is approaching a blue square")

    # adapters: the paper's triplet with perturbed LoRA B, saved as files
    from diffusers import MochiTransformer3DModel as Mochi

    transformer = Mochi.from_pretrained(tiny_bundle / "transformer")
    add_relation_adapters(transformer, AdapterConfig(rank=4, alpha=4))
    torch.manual_seed(0)
    for name, p in transformer.named_parameters():
        if "lora_B" in name:
            p.data.normal_(std=0.01)
    save_adapters(transformer, tmp_path / "adapters")

    out = tmp_path / "analysis"
    summary = run_analysis(
        pipe,
        out,
        [paths[0], (paths[1], "a blue square is approaching a red circle")],
        AnalysisConfig(
            adapters=tmp_path / "adapters",
            roles=["relation", "subject1", "output"],
            words=["circle", "approaching"],
            rank=8,
        ),
    )
    data = json.loads((out / "analysis.json").read_text())
    for name in ("qkv_features", "base_qkv_similarity", "adapter_similarity", "attention_00", "attention_01"):
        assert (out / f"{name}.png").is_file(), name
    assert data["inputs"][0]["token_grid"] == [3, 4, 4]
    assert set(data["cross_video_cka"]) == {"q", "k", "v"}
    assert len(data["base_qkv_similarity"]["visual"]) == 2
    assert "relation:visual.q" in data["adapter_similarity"]["labels"]
    assert summary["adapters"] == ["relation", "subject1", "output"]
    assert no_hooks(pipe.transformer)
