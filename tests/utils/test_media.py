"""Tests for video/GIF I/O, contact sheets and mask overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamrelation.errors import UserError
from dreamrelation.utils import media
from dreamrelation.utils.media import (
    SHEET_GAP,
    SHEET_PAD,
    contact_sheet,
    overlay_masks,
    read_video,
    save_png,
    write_gif,
    write_video,
)


def moving_square(t: int = 25, h: int = 64, w: int = 64) -> np.ndarray:
    """A red square moving diagonally over a dark blue background."""
    video = np.empty((t, h, w, 3), np.uint8)
    video[:] = (30, 30, 90)
    for i in range(t):
        video[i, 8 + i : 24 + i, 4 + i : 20 + i] = (220, 40, 40)
    return video


def test_mp4_round_trip(tmp_path: Path) -> None:
    video = moving_square()
    path = write_video(tmp_path / "a.mp4", video, fps=8, scale=1)
    frames, fps = read_video(path)
    assert frames.shape == video.shape and frames.dtype == np.uint8
    assert fps == pytest.approx(8.0)
    assert np.abs(frames.astype(int) - video.astype(int)).mean() < 6.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]  # no temp left behind
    first, _ = read_video(path, max_frames=5)
    assert first.shape[0] == 5


def test_mp4_default_upscale_and_odd_sizes(tmp_path: Path) -> None:
    video = moving_square(t=6)
    frames, _ = read_video(write_video(tmp_path / "big.mp4", video, fps=10))
    assert frames.shape == (6, 256, 256, 3)  # 64 -> x4 so the short side is >= 256
    assert np.abs(frames[:, ::4, ::4].astype(int) - video.astype(int)).mean() < 6.0
    odd = moving_square(t=3, h=33, w=47)
    frames, _ = read_video(write_video(tmp_path / "odd.mp4", odd, fps=10, scale=1))
    assert frames.shape == (3, 34, 48, 3)  # padded to even for yuv420p


def test_mpeg4_fallback_codec(tmp_path: Path) -> None:
    video = moving_square(t=5)
    frames, _ = read_video(write_video(tmp_path / "m.mp4", video, fps=8, scale=1, codec="mpeg4"))
    assert frames.shape == video.shape
    assert np.abs(frames.astype(int) - video.astype(int)).mean() < 8.0


def test_gif_round_trip(tmp_path: Path) -> None:
    video = moving_square(t=10)
    path = write_gif(tmp_path / "a.gif", video, fps=10, scale=2)
    with Image.open(path) as im:
        assert im.n_frames == 10
        assert im.size == (128, 128)
        assert im.info["loop"] == 0 and im.info["duration"] == 100
    frames, fps = read_video(path)
    assert frames.shape == (10, 128, 128, 3)
    assert fps == pytest.approx(10.0, rel=0.05)
    assert np.abs(frames[:, ::2, ::2].astype(int) - video.astype(int)).max() <= 2


def test_unreadable_files_raise_user_error(tmp_path: Path) -> None:
    good = write_video(tmp_path / "good.mp4", moving_square(t=10), fps=8, scale=1)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 10)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for path in (truncated, garbage, empty, tmp_path / "missing.mp4"):
        with pytest.raises(UserError) as info:
            read_video(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message


def test_no_video_stream_raises_user_error(tmp_path: Path) -> None:
    import av

    path = tmp_path / "audio.m4a"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = np.zeros((1, 1024), np.float32)
        for _ in range(4):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    with pytest.raises(UserError, match="no video stream") as info:
        read_video(path)
    assert str(path) in str(info.value)


def test_contact_sheet_grid_maths(tmp_path: Path) -> None:
    video = moving_square(t=9)
    rows = [[video, video, video], [video, None, video[0]]]
    sheet = contact_sheet(rows, frames_per_cell=3)
    scale = 2  # 64 px frames are upscaled x2 to reach 128 px
    cell_w = 3 * 64 * scale + 2 * SHEET_GAP
    cell_h = 64 * scale
    assert sheet.size == (SHEET_PAD + 3 * (cell_w + SHEET_PAD), SHEET_PAD + 2 * (cell_h + SHEET_PAD))
    arr = np.asarray(sheet)
    # top-left pixel of the first cell is the video's background, the blank cell stays white
    assert tuple(arr[SHEET_PAD, SHEET_PAD]) == (30, 30, 90)
    blank_x = SHEET_PAD + (cell_w + SHEET_PAD) + cell_w // 2
    blank_y = SHEET_PAD + (cell_h + SHEET_PAD) + cell_h // 2
    assert tuple(arr[blank_y, blank_x]) == (255, 255, 255)

    one = contact_sheet([[video]], frames_per_cell=1, scale=1)
    assert one.size == (64 + 2 * SHEET_PAD, 64 + 2 * SHEET_PAD)

    prompt = "a red square moving diagonally towards the bottom right corner of a dark blue background"
    labelled = contact_sheet(rows, ["row A", "row B"], [prompt, "b", "c"], frames_per_cell=3)
    assert labelled.size[0] > sheet.size[0] and labelled.size[1] > sheet.size[1] + 20  # wrapped header
    out = save_png(tmp_path / "sheet.png", labelled)
    with Image.open(out) as im:
        assert im.size == labelled.size


def test_overlay_masks() -> None:
    video = np.zeros((4, 8, 8, 3), np.uint8)
    masks = np.zeros((2, 4, 8, 8), bool)
    masks[0, :, :4] = True
    masks[1, :, 4:] = True
    out = overlay_masks(video, masks, colours=[(255, 0, 0), (0, 0, 255)], alpha=0.5)
    assert out.shape == video.shape and out.dtype == np.uint8
    assert tuple(out[0, 0, 0]) == (128, 0, 0)
    assert tuple(out[0, 7, 7]) == (0, 0, 128)
    # low-resolution static masks are resized to the frame size
    small = np.zeros((1, 2, 2), bool)
    small[0, 0, 0] = True
    out = overlay_masks(video, small, alpha=1.0)
    assert out[:, :4, :4].any() and not out[:, 4:, :].any()
    assert tuple(out[2, 0, 0]) == media.DEFAULT_MASK_COLOURS[0]
