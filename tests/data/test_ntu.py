import pytest

from dreamrelation.data.ntu import NTU_RELATIONS, caption, parse_relation, scan, select, write_ntu_folder
from dreamrelation.errors import UserError


def _fake_download(root):
    names = []
    for setup in (1, 2):
        for performer in (1, 3):
            for camera in (1, 2, 3):
                for action in (58, 112, 7):
                    names.append(f"S{setup:03d}C{camera:03d}P{performer:03d}R001A{action:03d}_rgb.avi")
    for name in names:
        (root / "nturgb+d_rgb").mkdir(exist_ok=True)
        (root / "nturgb+d_rgb" / name).write_bytes(b"x")
    (root / "README.txt").write_text("not a video")
    return names


def test_catalogue_has_the_26_two_person_relations():
    assert sorted(NTU_RELATIONS) == list(range(50, 61)) + list(range(106, 121))
    assert caption(58) == "A person is shaking hands with a person."
    assert caption(112) == "A person is high-fiving with a person."
    assert parse_relation("A58") == parse_relation("a058") == parse_relation(58) == 58


@pytest.mark.parametrize("bad", ["A7", "A61", "hug", ""])
def test_unknown_or_one_person_actions_are_rejected(bad):
    with pytest.raises(UserError, match="two-person NTU relation"):
        parse_relation(bad)


def test_selection_spreads_over_setups_and_performers(tmp_path):
    _fake_download(tmp_path)
    videos = scan(tmp_path)
    assert len(videos) == 36
    chosen = select(videos, 58, 4)
    assert {(v.setup, v.performer) for v in chosen} == {(1, 1), (1, 3), (2, 1), (2, 3)}
    assert all(v.action == 58 for v in chosen)
    assert len(select(videos, 58, 100)) == 12


def test_write_folder_links_videos_and_captions(tmp_path):
    _fake_download(tmp_path)
    written = write_ntu_folder(tmp_path, tmp_path / "out", "A112", num=3)
    assert len(written) == 3 and all(p.is_symlink() for p in written)
    for path in written:
        assert "A112" in path.name
        assert path.with_suffix(".txt").read_text() == "A person is high-fiving with a person.\n"
    again = write_ntu_folder(tmp_path, tmp_path / "out", "A112", num=3, copy=True)  # re-run replaces
    assert all(not p.is_symlink() and p.read_bytes() == b"x" for p in again)
    with pytest.raises(UserError, match="no video of A055"):
        write_ntu_folder(tmp_path, tmp_path / "out2", "A55")
