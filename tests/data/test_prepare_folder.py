"""`prepare_folder`: mask formats, pixel/mask alignment, fps resampling, incremental re-runs, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from dreamrelation.backbones.loading import load_pipeline
from dreamrelation.data.latent_masks import latent_masks
from dreamrelation.data.mask_io import write_colour_masks
from dreamrelation.data.prepare_folder import PrepareConfig, load_prepared, prepare_folder, read_example
from dreamrelation.errors import UserError
from dreamrelation.toy.render import RenderedVideo, render_video
from dreamrelation.toy.world import sample_video_spec
from dreamrelation.utils.media import upscale_nearest, write_gif, write_video

RED, GREEN = (255, 0, 0), (0, 255, 0)
TOY = {"num_frames": 25, "height": 64, "width": 64, "fps": 8}


def _toy(seed: int, num_frames: int = 25) -> RenderedVideo:
    return render_video(sample_video_spec(np.random.default_rng(seed)), num_frames=num_frames)


def _binary_pngs(folder: Path, mask: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for t, m in enumerate(mask):
        Image.fromarray(m.astype(np.uint8) * 255).save(folder / f"frame{t}.png")  # unpadded names


def _colour_frames(masks: np.ndarray, colours=(RED, GREEN)) -> np.ndarray:
    img = np.zeros((*masks.shape[1:], 3), np.uint8)
    for k in (1, 0):
        img[masks[k]] = colours[k]
    return img


def _write(
    root: Path, name: str, video: RenderedVideo, fmt: str = "colour", scale: int = 1, caption: bool = True
) -> None:
    """Write a toy video (upscaled by ``scale``), its caption and masks in format ``fmt``."""
    frames = upscale_nearest(video.frames, scale)
    masks = upscale_nearest(video.masks[..., None], scale)[..., 0]
    write_video(root / f"{name}.mp4", frames, fps=8, scale=1)
    if caption:
        (root / f"{name}.txt").write_text(video.caption + "\n")
    m = root / "masks"
    if fmt == "colour":
        write_colour_masks(m / name, masks, (RED, GREEN))
    elif fmt == "binary":
        for k in range(2):
            _binary_pngs(m / name / f"subject{k + 1}", masks[k])
    elif fmt == "colour_video":
        write_video(m / f"{name}.mp4", _colour_frames(masks), fps=8, scale=1)
        (m / f"{name}.json").write_text(json.dumps({"subject1": RED, "subject2": GREEN}))
    elif fmt == "binary_video":
        for k in range(2):
            write_video(m / name / f"subject{k + 1}.mp4", masks[k].astype(np.uint8) * 255, fps=8, scale=1)


@pytest.mark.parametrize("fmt", ["colour", "binary", "colour_video", "binary_video"])
def test_mask_formats_read_back_aligned(tmp_path, fmt):
    video = _toy(1)
    _write(tmp_path, "clip", video, fmt, scale=4)  # 256x256 on disk, prepared at 64x64
    frames, masks, chosen = read_example(tmp_path, "clip", PrepareConfig(**TOY))
    assert frames.shape == (25, 64, 64, 3) and masks.shape == (2, 25, 64, 64) and chosen == list(range(25))
    agreement = (masks == video.masks).mean()
    assert agreement == 1.0 if fmt in ("colour", "binary") else agreement > 0.995
    assert np.abs(frames.astype(int) - video.frames).mean() < 4


def test_crop_and_pad_keep_masks_on_their_pixels(tmp_path):
    video = _toy(2)
    rng = np.random.default_rng(0)
    # crop: 4x upscale, then 32 columns of noise either side -> 256x320; a centre crop must undo it exactly
    big = upscale_nearest(video.frames, 4)
    noise = rng.integers(0, 255, (25, 256, 32, 3), dtype=np.uint8)
    wide = np.concatenate([noise, big, noise], axis=2)
    write_video(tmp_path / "wide.mp4", wide, fps=8, scale=1)
    big_masks = upscale_nearest(video.masks[..., None], 4)[..., 0]
    write_colour_masks(tmp_path / "masks" / "wide", np.pad(big_masks, ((0, 0), (0, 0), (0, 0), (32, 32))))
    # pad: 2x upscale (128x128) into a 64x128 frame -> 64x64 in the middle, 32 black columns either side
    _write(tmp_path, "square", video, "binary", scale=2)

    frames, masks, _ = read_example(
        tmp_path, "wide", PrepareConfig(**TOY, subjects={"subject1": RED, "subject2": GREEN})
    )
    assert (masks == video.masks).all()
    assert np.abs(frames.astype(int) - video.frames).mean() < 4
    for k, subject in enumerate(video.spec.subjects):  # the subject's colour is where its mask says
        inside = frames[masks[k]].astype(int).mean(axis=0)
        assert np.abs(inside - subject.rgb).max() < 25

    frames, masks, _ = read_example(
        tmp_path, "square", PrepareConfig(num_frames=25, height=64, width=128, fps=8, resize="pad")
    )
    assert (
        (masks[..., 32:96] == video.masks).all() and not masks[..., :32].any() and not masks[..., 96:].any()
    )
    assert (
        frames[..., :30, :].max() <= 16
        and np.abs(frames[..., 32:96, :].astype(int) - video.frames).mean() < 4
    )


def test_masks_resampled_to_the_video_timeline_or_rejected(tmp_path):
    video = _toy(3)
    write_video(tmp_path / "a.mp4", video.frames, fps=8, scale=1)
    twice = np.repeat(upscale_nearest(video.masks[..., None], 2)[..., 0], 2, axis=1)  # 50 frames, 128x128
    write_colour_masks(tmp_path / "masks" / "a", twice)
    _, masks, _ = read_example(tmp_path, "a", PrepareConfig(**TOY))
    assert (masks == video.masks).all()

    write_video(tmp_path / "b.mp4", video.frames, fps=8, scale=1)
    write_colour_masks(tmp_path / "masks" / "b", np.repeat(video.masks, 5, axis=1))  # 125 frames
    with pytest.raises(Exception, match=r"masks[/\\]b: 125 mask frames for a video of 25 frames"):
        read_example(tmp_path, "b", PrepareConfig(**TOY))
    write_video(tmp_path / "c.mp4", video.frames, fps=8, scale=1)
    write_colour_masks(tmp_path / "masks" / "c", video.masks[:, :, :, :40])
    with pytest.raises(Exception, match="another aspect ratio"):
        read_example(tmp_path, "c", PrepareConfig(**TOY))


def _squares_video(path: Path, n: int = 75, fps: int = 30, h: int = 96, w: int = 160) -> np.ndarray:
    """A real H.264/MPEG-4 encode with PyAV: red and green squares moving 1 px per frame; returns their masks."""
    masks = np.zeros((2, n, h, w), bool)
    with av.open(str(path), "w") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            img = np.full((h, w, 3), 30, np.uint8)
            masks[0, i, 30:54, 20 + i : 44 + i] = True
            masks[1, i, 40:64, 120 - i : 144 - i] = True
            img[masks[0, i]] = RED
            img[masks[1, i]] = GREEN
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return masks


def test_real_video_with_fps_resampling(tmp_path, tiny_bundle):
    masks = _squares_video(tmp_path / "squares.mp4")  # 2.5 s at 30 fps
    (tmp_path / "squares.txt").write_text("A red square is passing a green square.\n")
    for k in range(2):
        _binary_pngs(tmp_path / "masks" / "squares" / f"subject{k + 1}", masks[k])
    out = tmp_path / "out"
    report = prepare_folder(
        tmp_path,
        out,
        tiny_bundle,
        PrepareConfig(num_frames=25, height=64, width=64, fps=11, start=0.1),
        progress=False,
    )
    assert report.ok and report.prepared == ["squares"], report.problems
    entry = json.loads((out / "manifest.json").read_text())["videos"]["squares"]
    assert entry["source_frames"] == [int(np.floor((0.1 + i / 11) * 30 + 0.5)) for i in range(25)]
    (sample,) = load_prepared(out)
    assert sample.latents.shape == (12, 5, 8, 8) and sample.masks.shape == (2, 5, 8, 8)
    assert sample.latent_logvar.shape == sample.latents.shape and sample.prompt_mask.any()
    frames, pixel_masks, chosen = read_example(
        tmp_path, "squares", PrepareConfig(num_frames=25, height=64, width=64, fps=11, start=0.1)
    )
    assert chosen == entry["source_frames"]
    assert torch.equal(sample.masks, latent_masks(torch.from_numpy(pixel_masks)))
    for k, colour in enumerate((RED, GREEN)):  # the squares moved and their masks moved with them
        assert np.abs(frames[pixel_masks[k]].astype(int).mean(axis=0) - colour).max() < 40
    assert pixel_masks[0, -1].nonzero()[1].mean() > pixel_masks[0, 0].nonzero()[1].mean() + 20


def test_rerun_skips_up_to_date_and_redoes_changed(tmp_path, tiny_bundle):
    src, out = tmp_path / "src", tmp_path / "out"
    for i in range(3):
        _write(src, f"v{i}", _toy(10 + i))
    first = prepare_folder(src, out, tiny_bundle, PrepareConfig(**TOY, preview=True), progress=False)
    assert first.ok and first.prepared == ["v0", "v1", "v2"] and first.frames == 75
    assert all((out / "previews" / f"v{i}.png").is_file() for i in range(3))
    samples = load_prepared(out)
    assert [s.name for s in samples] == ["v0", "v1", "v2"] and samples[0].prompt_embeds.ndim == 2
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "samples").iterdir()}

    second = prepare_folder(src, out, tiny_bundle, PrepareConfig(**TOY), progress=False)
    assert second.prepared == [] and second.skipped == ["v0", "v1", "v2"]

    (src / "v1.txt").write_text("A red star is passing a blue circle.\n")
    third = prepare_folder(src, out, tiny_bundle, PrepareConfig(**TOY), progress=False)
    assert third.prepared == ["v1"] and third.skipped == ["v0", "v2"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "samples").iterdir()}["v0.safetensors"] == stamps[
        "v0.safetensors"
    ]
    assert json.loads((out / "manifest.json").read_text())["videos"]["v1"]["caption"].startswith("A red star")
    assert not list(out.rglob(".*tmp*"))

    (src / "v2.txt").touch()  # same content: hashes decide, so nothing to redo
    (src / "v0.mp4").unlink()  # a removed video leaves the manifest and its sample is deleted
    fourth = prepare_folder(src, out, tiny_bundle, PrepareConfig(**TOY), progress=False)
    assert fourth.prepared == [] and not (out / "samples" / "v0.safetensors").exists()
    assert [s.name for s in load_prepared(out)] == ["v1", "v2"]
    # other settings never replace (or drop) a cache's samples: a new folder, or delete this one
    with pytest.raises(UserError, match=r"other settings \(resize crop -> pad\); prepare into a new folder"):
        prepare_folder(src, out, tiny_bundle, PrepareConfig(**TOY, resize="pad"), progress=False)
    assert [s.name for s in load_prepared(out)] == ["v1", "v2"]
    with pytest.raises(UserError, match="run `dreamrelation prepare`"):
        load_prepared(tmp_path / "nothing")


def test_large_frames_encode_tiled_and_gif_input(tmp_path, tiny_bundle):
    video = _toy(5, num_frames=7)
    write_gif(tmp_path / "g.gif", video.frames, fps=8, scale=1)
    (tmp_path / "g.txt").write_text(video.caption)
    write_colour_masks(tmp_path / "masks" / "g", video.masks, (RED, GREEN))
    pipe = load_pipeline(tiny_bundle)
    seen = []
    encode = pipe.vae.encode
    pipe.vae.encode = lambda x: seen.append((pipe.vae.use_tiling, tuple(x.shape))) or encode(x)
    report = prepare_folder(
        tmp_path,
        tmp_path / "out",
        pipe,
        PrepareConfig(num_frames=7, height=272, width=272, fps=8),
        progress=False,
    )
    assert report.ok, report.problems
    assert seen == [(True, (1, 3, 7, 272, 272))] and not pipe.vae.use_tiling
    (sample,) = load_prepared(tmp_path / "out")
    assert sample.latents.shape == (12, 2, 34, 34) and sample.masks.sum() > 0


def test_captions_from_argument_or_template(tmp_path, tiny_bundle):
    src = tmp_path / "src"
    for i in range(2):
        _write(src, f"v{i}", _toy(20 + i), caption=False)
    meta = src / "masks" / "v0" / "subjects.json"
    meta.write_text(
        json.dumps({**json.loads(meta.read_text()), "subject1_name": "cat", "subject2_name": "dog"})
    )

    missing = prepare_folder(src, tmp_path / "a", tiny_bundle, PrepareConfig(**TOY), progress=False)
    assert sorted(missing.problems) == [
        f"{src / name}.txt: missing caption file; write one line describing the video."
        for name in ("v0", "v1")
    ]
    given = prepare_folder(
        src, tmp_path / "b", tiny_bundle, PrepareConfig(**TOY, caption="A cat is near a dog."), progress=False
    )
    assert given.ok and len(given.prepared) == 2
    # a loaded pipeline (transformer included) encodes exactly like a model path (VAE + T5 only)
    prepare_folder(
        src,
        tmp_path / "b2",
        load_pipeline(tiny_bundle),
        PrepareConfig(**TOY, caption="A cat is near a dog."),
        progress=False,
    )
    for a, b in zip(load_prepared(tmp_path / "b"), load_prepared(tmp_path / "b2"), strict=True):
        assert torch.equal(a.latents, b.latents) and torch.equal(a.prompt_embeds, b.prompt_embeds)
        assert torch.equal(a.prompt_mask, b.prompt_mask) and torch.equal(a.masks, b.masks)
    templ = prepare_folder(
        src,
        tmp_path / "c",
        tiny_bundle,
        PrepareConfig(
            **TOY,
            caption_template="A {subject1} is with a {subject2}.",
            subjects={"subject1_name": "fox", "subject2_name": "owl"},
        ),
        progress=False,
    )
    assert templ.ok
    captions = {
        k: v["caption"]
        for k, v in json.loads((tmp_path / "c" / "manifest.json").read_text())["videos"].items()
    }
    assert captions == {"v0": "A cat is with a dog.", "v1": "A fox is with a owl."}


def test_bad_inputs_each_get_one_clear_line(tmp_path, tiny_bundle):
    src, out = tmp_path / "src", tmp_path / "out"
    _write(src, "good", _toy(30))
    (src / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    (src / "junk.txt").write_text("junk\n")
    write_colour_masks(src / "masks" / "junk", _toy(30).masks)
    _write(src, "cut", _toy(31))
    data = (src / "cut.mp4").read_bytes()
    (src / "cut.mp4").write_bytes(data[: len(data) // 3])
    _write(src, "short", _toy(32, num_frames=13))
    _write(src, "nomask", _toy(33))
    write_colour_masks(src / "masks" / "orphan", _toy(34).masks)
    _write(src, "nocaption", _toy(35), caption=False)
    for name, edit in {
        "empty": lambda m: np.zeros_like(m),
        "onlyone": lambda m: np.stack([m[0], np.zeros_like(m[1])]),
        "colours": None,
    }.items():
        video = _toy(40 + len(name))
        _write(src, name, video)
        if edit is not None:
            write_colour_masks(src / "masks" / name, edit(video.masks), (RED, GREEN))
        else:  # subject1 painted blue although subjects.json says red
            write_colour_masks(src / "masks" / name, video.masks, ((0, 0, 255), GREEN))
            (src / "masks" / name / "subjects.json").write_text(
                json.dumps({"subject1": RED, "subject2": GREEN})
            )
    shutil.rmtree(src / "masks" / "nomask")

    report = prepare_folder(src, out, tiny_bundle, PrepareConfig(**TOY), progress=False)
    assert report.prepared == ["good"] and not report.ok
    problems = report.problems
    assert all("\n" not in p for p in problems) and len(problems) == 9, problems

    def line(fragment: str) -> str:
        hits = [p for p in problems if fragment in p]
        assert len(hits) == 1, (fragment, problems)
        return hits[0]

    assert "cannot open video" in line("junk.mp4")
    assert "truncated" in line("cut.mp4")
    assert "too few frames: 13 frames" in line("short.mp4")
    assert "no masks; add masks/nomask/" in line("nomask.mp4")
    assert "masks without a video" in line("orphan")
    assert "missing caption file" in line("nocaption.txt")
    assert "zero-area masks" in line(str(src / "masks" / "empty"))
    assert "subject2 is missing in all selected frames" in line(str(src / "masks" / "onlyone"))
    assert "match neither subject1 [255, 0, 0] nor subject2 [0, 255, 0] (wrong colours)" in line("colours")
    assert [s.name for s in load_prepared(out)] == ["good"]
    assert not list(out.rglob(".*tmp*")) and sorted(p.name for p in (out / "samples").iterdir()) == [
        "good.safetensors"
    ]
