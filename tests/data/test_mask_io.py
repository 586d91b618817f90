"""Colour-mask folders: round trip, numeric frame order, subjects.json order, errors."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamrelation.data.mask_io import read_colour_masks, write_colour_masks
from dreamrelation.errors import UserError
from dreamrelation.toy.render import render_video
from dreamrelation.toy.world import SubjectSpec, VideoSpec


def _masks() -> np.ndarray:
    spec = VideoSpec("high_fiving", SubjectSpec("star", "red"), SubjectSpec("circle", "blue"), seed=4)
    return render_video(spec).masks


def _write_frame(path: Path, pixels: dict[tuple[int, int], tuple[int, int, int]], size=(8, 8)) -> None:
    img = np.zeros((*size, 3), dtype=np.uint8)
    for (y, x), rgb in pixels.items():
        img[y, x] = rgb
    Image.fromarray(img).save(path)


def test_round_trip_and_layout(tmp_path: Path) -> None:
    masks = _masks()
    folder = write_colour_masks(tmp_path / "video0", masks)
    names = sorted(p.name for p in folder.iterdir())
    assert names[0] == "00000.png" and "subjects.json" in names and len(names) == masks.shape[1] + 1
    assert json.loads((folder / "subjects.json").read_text()) == {
        "subject1": [255, 0, 0],
        "subject2": [0, 255, 0],
    }
    assert np.array_equal(read_colour_masks(folder), masks)
    # overwrite atomically: no temp folders left behind
    write_colour_masks(folder, masks[:, :3], colours=((0, 0, 255), (255, 255, 0)))
    assert np.array_equal(read_colour_masks(folder), masks[:, :3])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video0"]


def test_near_colours_are_tolerated(tmp_path: Path) -> None:
    masks = _masks()[:, :4]
    folder = write_colour_masks(tmp_path / "v", masks)
    for path in folder.glob("*.png"):  # simulate lossy re-encoding
        arr = np.asarray(Image.open(path)).astype(int)
        arr = np.clip(arr + np.random.default_rng(0).integers(-30, 31, arr.shape), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(path)
    assert np.array_equal(read_colour_masks(folder), masks)


def test_numeric_frame_order_with_unpadded_names(tmp_path: Path) -> None:
    folder = tmp_path / "unpadded"
    folder.mkdir()
    for i in range(12):  # subject1 pixel at column i in frame i
        _write_frame(folder / f"frame{i}.png", {(0, i % 8): (255, 0, 0), (7, 0): (0, 255, 0)}, size=(8, 8))
    masks = read_colour_masks(folder, colours=((255, 0, 0), (0, 255, 0)))
    assert masks.shape == (2, 12, 8, 8)
    for i in range(12):
        assert masks[0, i, 0, i % 8] and masks[0, i].sum() == 1
    assert masks[1, :, 7, 0].all()


def test_subjects_json_order_is_respected(tmp_path: Path) -> None:
    folder = tmp_path / "order"
    folder.mkdir()
    # subject1 is green, subject2 is red: sorting colour values would swap them
    (folder / "subjects.json").write_text(json.dumps({"subject2": [255, 0, 0], "subject1": [0, 255, 0]}))
    _write_frame(folder / "00000.png", {(1, 1): (0, 255, 0), (5, 5): (255, 0, 0)})
    masks = read_colour_masks(folder)
    assert masks[0, 0, 1, 1] and masks[0, 0].sum() == 1
    assert masks[1, 0, 5, 5] and masks[1, 0].sum() == 1


def test_errors_name_folder_and_fix(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"empty.*no frame images"):
        read_colour_masks(empty, colours=((255, 0, 0), (0, 255, 0)))
    nojson = tmp_path / "nojson"
    nojson.mkdir()
    _write_frame(nojson / "00000.png", {})
    with pytest.raises(UserError, match=r"nojson.*subjects.json.*pass the colours"):
        read_colour_masks(nojson)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _write_frame(mixed / "00000.png", {}, size=(8, 8))
    _write_frame(mixed / "00001.png", {}, size=(8, 10))
    with pytest.raises(UserError, match=r"mixed.*different sizes.*re-export"):
        read_colour_masks(mixed, colours=((255, 0, 0), (0, 255, 0)))
    with pytest.raises(UserError, match="does not exist"):
        read_colour_masks(tmp_path / "missing")
