"""``dreamrelation masks``: detector -> segmenter -> colour-mask folders.

Real classes (Grounding DINO, SAM 2 video) run as tiny random models saved to and loaded from disk, so only
format, shapes and subject order are checked there. Accuracy is checked on toy videos with the stand-ins
(ground-truth boxes + colour tracking) through MP4 encoding, the colour-mask format and read-back.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamrelation.data.mask_generation import (
    ColourTrackSegmenter,
    Detector,
    GroundTruthBoxDetector,
    MaskOptions,
    Segmenter,
    generate_masks,
    load_grounding_dino,
    load_sam2_video,
    mask_box,
)
from dreamrelation.data.mask_io import read_colour_masks
from dreamrelation.errors import UserError
from dreamrelation.toy.render import render_background, render_video
from dreamrelation.toy.world import SubjectSpec, VideoSpec
from dreamrelation.utils.media import write_video

VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    ".",
    "red",
    "star",
    "blue",
    "circle",
    "green",
    "square",
]
SPECS = [
    VideoSpec("high_fiving", SubjectSpec("star", "red"), SubjectSpec("circle", "blue"), "textured", seed=3),
    VideoSpec(
        "chasing", SubjectSpec("square", "green"), SubjectSpec("triangle", "yellow"), "gradient", seed=8
    ),
    VideoSpec("passing", SubjectSpec("person", "skin"), SubjectSpec("diamond", "cyan"), "plain", seed=11),
]


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Grounding DINO (Swin + BERT) with a word-level BERT tokenizer, saved like a checkpoint."""
    from transformers import BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection, SwinConfig
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )
    from transformers.models.grounding_dino.processing_grounding_dino import GroundingDinoProcessor

    torch.manual_seed(0)
    swin = SwinConfig(
        window_size=7,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        image_size=98,
        out_indices=[2, 3, 4],
    )
    text = {
        "model_type": "bert",
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 8,
        "max_position_embeddings": 32,
        "vocab_size": len(VOCAB),
    }
    config = GroundingDinoConfig(
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=8,
        decoder_ffn_dim=8,
        num_queries=12,
        num_feature_levels=4,
        encoder_n_points=2,
        decoder_n_points=2,
        use_timm_backbone=False,
        backbone_config=swin,
        max_text_len=16,
        text_config=text,
    )
    out = tmp_path_factory.mktemp("dino")
    GroundingDinoForObjectDetection(config).save_pretrained(out)
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": 96, "longest_edge": 128})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SAM 2 video model (128 px input, hidden 128 > memory 64 as in the real model)."""
    from transformers import Sam2HieraDetConfig, Sam2VideoConfig, Sam2VideoModel, Sam2VisionConfig

    torch.manual_seed(0)
    size = 128
    backbone = Sam2HieraDetConfig(
        hidden_size=12,
        image_size=size,
        patch_stride=4,
        patch_kernel_size=7,
        patch_padding=3,
        blocks_per_stage=[1, 1, 1, 1],
        embed_dim_per_stage=[12, 24, 48, 96],
        num_attention_heads_per_stage=[1, 1, 1, 1],
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[96, 48, 24, 12],
        backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]],
        fpn_hidden_size=128,
    )
    config = Sam2VideoConfig(
        vision_config=vision,
        image_size=size,
        prompt_encoder_config={
            "hidden_size": 128,
            "image_size": size,
            "patch_size": 16,
            "mask_input_channels": 8,
        },
        mask_decoder_config={
            "hidden_size": 128,
            "mlp_dim": 64,
            "num_attention_heads": 4,
            "iou_head_hidden_dim": 32,
        },
        memory_attention_hidden_size=128,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[8, 8],
        memory_encoder_hidden_size=128,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=128,
        memory_fuser_embed_dim=128,
        memory_fuser_intermediate_dim=64,
        memory_fuser_num_layers=1,
    )
    out = tmp_path_factory.mktemp("sam2")
    Sam2VideoModel(config).save_pretrained(out)
    return out


def _write_videos(folder: Path, specs: list[VideoSpec], num_frames: int, scale: int) -> dict[str, object]:
    folder.mkdir(parents=True, exist_ok=True)
    rendered = {}
    for i, spec in enumerate(specs):
        video = render_video(spec, num_frames=num_frames)
        write_video(folder / f"clip{i}.mp4", video.frames, fps=8, scale=scale)
        rendered[f"clip{i}"] = video
    return rendered


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_missing_or_wrong_weights_name_the_path_and_the_download(tmp_path: Path, sam_dir: Path) -> None:
    missing = tmp_path / "weights" / "grounding-dino"
    with pytest.raises(UserError, match=r"not found at .*grounding-dino.*IDEA-Research/grounding-dino-tiny"):
        load_grounding_dino(missing)
    with pytest.raises(
        UserError, match=r"SAM 2 video weights not found at .*sam.*facebook/sam2.1-hiera-tiny"
    ):
        load_sam2_video(tmp_path / "sam")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no config.json"):
        load_sam2_video(tmp_path / "empty")
    with pytest.raises(UserError, match=r"holds a 'sam2_video' model, not Grounding DINO"):
        load_grounding_dino(sam_dir)


def test_tiny_real_models_end_to_end(tmp_path: Path, dino_dir: Path, sam_dir: Path) -> None:
    detector = load_grounding_dino(dino_dir, box_threshold=0.0)
    segmenter = load_sam2_video(sam_dir)
    assert isinstance(detector, Detector) and isinstance(segmenter, Segmenter)
    src = tmp_path / "data" / "videos"
    _write_videos(src, SPECS[:2], num_frames=5, scale=1)
    (src / "broken.mp4").write_bytes(b"not a video")
    report = generate_masks(
        tmp_path / "data", tmp_path / "data" / "masks", "red star", "blue circle", detector, segmenter
    )
    assert report.written == ["clip0", "clip1"], report.problems
    assert report.prompt_frames == {"clip0": 0, "clip1": 0}
    assert len(report.problems) == 1 and "broken.mp4" in report.problems[0]
    for name in report.written:
        folder = tmp_path / "data" / "masks" / name
        assert sorted(p.name for p in folder.iterdir()) == [f"{t:05d}.png" for t in range(5)] + [
            "subjects.json"
        ]
        masks = read_colour_masks(folder)
        assert masks.shape == (2, 5, 64, 64) and masks.dtype == bool
        assert not (masks[0] & masks[1]).any()
        assert (tmp_path / "data" / "masks_previews" / f"{name}.png").is_file()
    # prompts on a later frame propagate both ways and keep subject order (object id k + 1 -> subject k)
    frames = render_video(SPECS[0], num_frames=5).frames
    box_a, box_b = (2.0, 2.0, 30.0, 30.0), (30.0, 20.0, 60.0, 60.0)
    masks = segmenter.propagate(frames, [box_a, box_b], start=3)
    assert masks.shape == (2, 5, 64, 64) and masks.dtype == bool
    swapped = segmenter.propagate(frames, [box_b, box_a], start=3)
    assert masks.any() and np.array_equal(masks, swapped[::-1])


def test_masks_command_passes_its_options(tmp_path: Path, dino_dir: Path, sam_dir: Path) -> None:
    """`dreamrelation masks`: --max-frames, --no-preview and --overwrite reach the mask writer."""
    _write_videos(tmp_path / "videos", SPECS[:1], num_frames=5, scale=1)
    stale = tmp_path / "masks" / "clip0"
    stale.mkdir(parents=True)
    (stale / "subjects.json").write_text("{}")  # without --overwrite the video would be skipped
    command = [sys.executable, "-m", "dreamrelation.cli", "masks", str(tmp_path), "--subject1", "red star"]
    command += ["--subject2", "blue circle", "--grounding-dino", str(dino_dir), "--sam2", str(sam_dir)]
    command += ["--box-threshold", "0", "--max-frames", "3", "--no-preview", "--overwrite", "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert read_colour_masks(stale).shape == (2, 3, 64, 64)
    assert not (tmp_path / "masks_previews").exists()


def test_grounding_dino_assignment_gives_distinct_boxes(dino_dir: Path) -> None:
    detector = load_grounding_dino(dino_dir, box_threshold=0.5)
    text, spans = detector.prompt(["Red  star", "blue.circle"])
    assert text == "red star. blue circle." and [text[a:b] for a, b in spans] == ["red star", "blue circle"]
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], dtype=float)
    scores = np.array([[0.9, 0.9], [0.8, 0.8], [0.6, 0.6], [0.2, 0.2]])
    detector.scores_and_boxes = lambda frame, texts: (scores, boxes)  # type: ignore[method-assign]
    frame = np.zeros((64, 64, 3), dtype=np.uint8)
    # same text twice: query 1 overlaps query 0 too much, so subject 2 gets query 2
    assert detector.detect(frame, ["person", "person"]) == [(0, 0, 10, 10), (20, 20, 30, 30)]
    scores = np.array([[0.9, 0.1], [0.1, 0.3], [0.1, 0.2], [0.1, 0.1]])
    assert detector.detect(frame, ["red star", "blue circle"]) == [(0, 0, 10, 10), None]


def test_toy_accuracy_through_mp4_and_colour_masks(tmp_path: Path) -> None:
    num_frames = 13
    rendered = _write_videos(tmp_path / "videos", SPECS, num_frames=num_frames, scale=None)
    # clip3: both subjects appear only from frame 2 on (two background-only frames first)
    late = render_video(SPECS[0], num_frames=num_frames)
    late_frames = np.concatenate([render_background(SPECS[0], num_frames=2), late.frames])
    late_masks = np.concatenate([np.zeros((2, 2, 64, 64), dtype=bool), late.masks], axis=1)
    write_video(tmp_path / "videos" / "clip3.mp4", late_frames, fps=8)
    # clip4: subject2 never visible to the detector
    gone = render_video(
        VideoSpec("chasing", SubjectSpec("cross", "orange"), SubjectSpec("star", "white"), seed=5),
        num_frames=num_frames,
    )
    write_video(tmp_path / "videos" / "clip4.mp4", gone.frames, fps=8)
    references = [(v.frames, v.masks) for v in rendered.values()]  # type: ignore[attr-defined]
    references += [
        (late_frames, late_masks),
        (gone.frames, gone.masks & np.array([True, False])[:, None, None, None]),
    ]
    detector = GroundTruthBoxDetector(references)
    out = tmp_path / "masks"

    report = generate_masks(
        tmp_path / "videos",
        out,
        "first",
        "second",
        detector,
        ColourTrackSegmenter(),
        MaskOptions(preview=False),
    )
    assert report.written == ["clip0", "clip1", "clip2", "clip3"], report.problems
    assert report.prompt_frames["clip3"] == 2
    assert report.problems == [
        f"{tmp_path / 'videos' / 'clip4.mp4'}: subject2 'second' not found in any of its {num_frames} frames; "
        "check the subject text or lower the detection threshold."
    ]
    expected = {name: v.masks for name, v in rendered.items()} | {"clip3": late_masks}  # type: ignore[attr-defined]
    for name, truth in expected.items():
        got = read_colour_masks(out / name)
        assert got.shape == (2, truth.shape[1], 256, 256)
        big = truth.repeat(4, axis=2).repeat(4, axis=3)  # write_video upscaled the 64 px toy frames x4
        for k in range(2):
            assert _iou(got[k], big[k]) >= 0.9, (name, k, _iou(got[k], big[k]))
    assert not (tmp_path / "masks_previews").exists()

    again = generate_masks(tmp_path / "videos", out, "first", "second", detector, ColourTrackSegmenter())
    assert again.skipped == ["clip0", "clip1", "clip2", "clip3"] and again.written == []


def test_mask_box_and_empty_folder(tmp_path: Path) -> None:
    mask = np.zeros((8, 8), dtype=bool)
    assert mask_box(mask) is None
    mask[2:4, 5] = True
    assert mask_box(mask) == (5.0, 2.0, 6.0, 4.0)
    report = generate_masks(
        tmp_path, tmp_path / "masks", "a", "b", GroundTruthBoxDetector([]), ColourTrackSegmenter()
    )
    assert not report.ok and "no videos" in report.problems[0]
    with pytest.raises(UserError, match="does not exist"):
        generate_masks(
            tmp_path / "nope",
            tmp_path / "masks",
            "a",
            "b",
            GroundTruthBoxDetector([]),
            ColourTrackSegmenter(),
        )
