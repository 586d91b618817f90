"""Real-video metrics on tiny random transformers models saved to tmp dirs (no downloads, no mocks)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamrelation.errors import UserError
from dreamrelation.evaluation.metrics import (
    ClipScorer,
    EvaluationConfig,
    VideoFeatureExtractor,
    VlmJudge,
    _pixels,
    clip_t,
    evaluate_folder,
    frechet_distance,
    frechet_distance_from_stats,
    fvd,
    keyframes,
    parse_yes_no,
    relation_accuracy,
    temporal_consistency,
)
from dreamrelation.evaluation.report import mean_ci95
from dreamrelation.toy.backbone import build_tokenizer, toy_words

EXTRA_WORDS = ["yes", "no", "are", "the", "two", "subjects", "answer", "or"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:  # noqa: ANN001
    """Tiny random CLIP, VideoMAE and LLaVA models with tokenizers/processors, saved with save_pretrained."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        VideoMAEConfig,
        VideoMAEModel,
    )

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    tok = build_tokenizer(toy_words() + EXTRA_WORDS)
    clip = CLIPModel(
        CLIPConfig(
            text_config=dict(
                vocab_size=len(tok),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=32,
                pad_token_id=0,
                eos_token_id=1,
            ),
            vision_config=dict(
                image_size=32,
                patch_size=8,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
            ),
            projection_dim=16,
        )
    )
    clip.save_pretrained(root / "clip")
    tok.save_pretrained(root / "clip")
    VideoMAEModel(
        VideoMAEConfig(
            image_size=32,
            patch_size=16,
            num_frames=4,
            tubelet_size=2,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        )
    ).save_pretrained(root / "videomae")

    vtok = build_tokenizer(toy_words() + EXTRA_WORDS)
    vtok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    vision = CLIPVisionConfig(
        image_size=32,
        patch_size=16,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    text = LlamaConfig(
        vocab_size=len(vtok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=vtok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    LlavaForConditionalGeneration(config).save_pretrained(root / "vlm")
    LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=vtok,
        patch_size=16,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    ).save_pretrained(root / "vlm")
    return {"clip": root / "clip", "videomae": root / "videomae", "vlm": root / "vlm"}


def video(seed: int, frames: int = 7, size: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (1, size, size + 8, 3))
    drift = rng.integers(-30, 30, (frames, size, size + 8, 3))
    return np.clip(base + drift, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- FVD math


def test_frechet_distance_diagonal_gaussians_closed_form() -> None:
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 1.0])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert frechet_distance_from_stats(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(
        expected, abs=1e-12
    )
    # rotation invariance: the same Gaussians in a rotated basis
    rot, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))
    value = frechet_distance_from_stats(
        rot @ mu1, rot @ np.diag(s1) @ rot.T, rot @ mu2, rot @ np.diag(s2) @ rot.T
    )
    assert value == pytest.approx(expected, abs=1e-10)


def test_frechet_distance_general_covariances_vs_eigenvalues_of_product() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    s1, s2 = a @ a.T + 0.1 * np.eye(4), b @ b.T + 0.1 * np.eye(4)
    mu1, mu2 = rng.standard_normal(4), rng.standard_normal(4)
    tr_sqrt = np.sum(np.sqrt(np.linalg.eigvals(s1 @ s2).real))  # independent: eigenvalues of S1 S2
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_from_samples() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((20000, 3)) * np.sqrt([1.0, 4.0, 0.25])
    y = rng.standard_normal((20000, 3)) * np.sqrt([2.0, 1.0, 0.25]) + [0.5, 0.0, 3.0]
    closed = 0.25 + 9.0 + (1 - math.sqrt(2)) ** 2 + 1.0
    assert frechet_distance(x, y) == pytest.approx(closed, abs=0.1)
    small = rng.standard_normal((5, 16))  # n < d: singular covariance
    assert abs(frechet_distance(small, small.copy())) < 1e-8


# ---------------------------------------------------------------------------------------------- CLIP


def test_clip_t_equals_model_embeddings_cosine(weights) -> None:  # noqa: ANN001
    scorer = ClipScorer(weights["clip"], device="cpu")
    frames = video(0)
    prompt = "a red circle is approaching a blue square"
    tok = scorer.tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        out = scorer.model(
            input_ids=tok["input_ids"],
            attention_mask=tok["attention_mask"],
            pixel_values=_pixels(frames, 32, scorer.mean, scorer.std),
        )
    manual = float((out.image_embeds @ out.text_embeds[0]).mean())  # both unit-norm in CLIPModel's output
    assert clip_t(scorer, frames, prompt) == pytest.approx(manual, abs=1e-5)
    img = out.image_embeds
    manual_tc = float(torch.nn.functional.cosine_similarity(img[1:], img[:-1]).mean())
    assert temporal_consistency(scorer, frames) == pytest.approx(manual_tc, abs=1e-5)


def test_temporal_consistency_identical_frames_is_one(weights) -> None:  # noqa: ANN001
    scorer = ClipScorer(weights["clip"], device="cpu")
    still = np.repeat(video(1, frames=1), 5, axis=0)
    assert temporal_consistency(scorer, still) == pytest.approx(1.0, abs=1e-6)
    assert math.isnan(temporal_consistency(scorer, still[:1]))


# ---------------------------------------------------------------------------------------------- VideoMAE FVD


def test_fvd_of_a_set_with_itself_is_zero(weights) -> None:  # noqa: ANN001
    extractor = VideoFeatureExtractor(weights["videomae"], device="cpu")
    videos = [video(i) for i in range(3)]
    feat = extractor.features(videos[0])
    assert feat.shape == (32,) and torch.isfinite(feat).all()
    assert abs(fvd(extractor, videos, videos)) < 1e-6
    assert fvd(extractor, videos, [video(i + 10) for i in range(3)]) > 0


# ---------------------------------------------------------------------------------------------- VLM


def test_parse_yes_no() -> None:
    assert parse_yes_no("Yes.") is True
    assert parse_yes_no(" no, they are not") is False
    assert parse_yes_no("NO") is False
    assert parse_yes_no("I think yes") is True
    assert parse_yes_no("yesterday nobody") is None
    assert parse_yes_no("") is None
    assert relation_accuracy(["yes", "No", "garbage", "yes!"]) == 0.5
    assert math.isnan(relation_accuracy([]))
    assert keyframes(np.zeros((61, 2, 2, 3)), 5).shape[0] == 5


def test_vlm_judge_tiny_llava(weights) -> None:  # noqa: ANN001
    judge = VlmJudge(weights["vlm"], device="cpu", max_new_tokens=3)
    answers = judge.answers(video(0), "approaching", n_repeats=3, seed=0)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert answers == judge.answers(video(0), "approaching", n_repeats=3, seed=0)  # seeded sampling
    # force the random model's answer through generate(suppress_tokens=...): the plumbing and parsing
    vocab = len(judge.processor.tokenizer)
    yes = judge.processor.tokenizer.convert_tokens_to_ids("\u2581yes")
    no = judge.processor.tokenizer.convert_tokens_to_ids("\u2581no")
    for keep, expected in ((yes, 1.0), (no, 0.0)):
        judge.generate_kwargs = {"suppress_tokens": [i for i in range(vocab) if i != keep]}
        assert relation_accuracy(judge.answers(video(0), "approaching", n_repeats=2)) == expected


# ---------------------------------------------------------------------------------------------- evaluate_folder


def test_missing_weights_user_error(tmp_path) -> None:  # noqa: ANN001
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match=r"clip weights .*nope.* not found.*openai/clip-vit"):
        ClipScorer(missing)
    (tmp_path / "gen").mkdir()
    with pytest.raises(UserError, match="videomae"):
        evaluate_folder(tmp_path / "gen", EvaluationConfig(metrics=["fvd"], weights={}))


def test_evaluate_folder_report(weights, tmp_path) -> None:  # noqa: ANN001
    from dreamrelation.utils.media import write_video

    gen, ref = tmp_path / "gen", tmp_path / "ref"
    for i in range(3):
        write_video(gen / f"video{i + 8}.mp4", video(i), fps=8, scale=1)
        write_video(ref / f"real{i}.mp4", video(i + 20), fps=8, scale=1)
    (gen / "video8.txt").write_text("a red circle is approaching a blue square")
    (gen / "video9.json").write_text(json.dumps({"prompt": "a blue star is approaching a red cross"}))
    prompts = {"video10": "a green circle is approaching a cyan diamond"}
    from transformers import AutoTokenizer

    vtok = AutoTokenizer.from_pretrained(weights["vlm"])
    yes = vtok.convert_tokens_to_ids("\u2581yes")
    only_yes = [i for i in range(len(vtok)) if i != yes]
    data = evaluate_folder(
        gen,
        EvaluationConfig(
            prompts=prompts,
            metrics=["clip_t", "temporal_consistency", "fvd", "relation_accuracy"],
            weights=weights,
            reference_dir=ref,
            relation="approaching",
            out_dir=tmp_path / "report",
            n_repeats=2,
            vlm_options={"max_new_tokens": 2, "generate_kwargs": {"suppress_tokens": only_yes}},
        ),
    )
    rows = data["per_video"]
    assert [r["video"] for r in rows] == ["video8.mp4", "video9.mp4", "video10.mp4"]  # natural order
    assert rows[1]["prompt"].startswith("a blue star") and rows[2]["prompt"].startswith("a green circle")
    mean, low, high = mean_ci95([r["clip_t"] for r in rows])
    assert data["metrics"]["clip_t"]["mean"] == pytest.approx(mean)
    assert data["metrics"]["clip_t"]["ci_low"] == pytest.approx(low)
    assert data["metrics"]["clip_t"]["n"] == 3
    assert data["metrics"]["fvd"]["mean"] > 0
    assert [r["relation_accuracy"] for r in rows] == [1.0, 1.0, 1.0]
    assert data["metrics"]["relation_accuracy"]["mean"] == 1.0
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["metrics"]["temporal_consistency"]["n"] == 3
    md = (tmp_path / "report" / "report.md").read_text()
    assert "clip_t" in md and "video10.mp4" in md
