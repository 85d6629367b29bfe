"""Where ``run`` may write (issue #21.5): safe names, no collisions, no links, no inputs."""

from __future__ import annotations

import pytest

from mtlcompress.errors import MtlCompressError
from mtlcompress.io.output_paths import OutputFolder, output_names, safe_name


@pytest.mark.parametrize("name,expected", [
    ("frame_001", "frame_001"), ("my photo-2.v1", "my photo-2.v1"), ("..", "__"), (".", "_"), ("", "_"),
    (".hidden", "_hidden"), ("a/b", "a_b"), ("a\\b", "a_b"), ("tab\there", "tab_here"), ("été", "été"),
])
def test_safe_name_is_one_visible_component(name, expected):
    assert safe_name(name) == expected


def test_long_names_are_cut_below_the_file_name_limit():
    assert len(safe_name("é" * 300).encode()) <= 200


def test_stems_are_kept_unless_they_collide_then_whole_names_are_used():
    assert output_names(["a", "b"], ["a.png", "b.jpg"]) == ["a", "b"]
    assert output_names(["a", "a", "b"], ["a.png", "a.jpg", "b.png"]) == ["a.png", "a.jpg", "b"]
    assert output_names(["..", "x"], ["...png", "x.png"]) == ["__", "x"]
    with pytest.raises(MtlCompressError, match="several inputs are named a.png; their outputs would collide"):
        output_names(["a", "a"], ["a.png", "a.png"])


def test_a_link_in_the_output_folder_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "frame").symlink_to(victim)
    with pytest.raises(MtlCompressError, match="frame is a symbolic link; mtlcompress run never writes through"):
        OutputFolder(out).folder("frame")
    assert list(victim.iterdir()) == []


def test_the_output_root_may_itself_be_a_link(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "out").symlink_to(real)
    assert OutputFolder(tmp_path / "out").folder("a").resolve() == real / "a"


def test_unsafe_names_files_in_the_way_and_inputs_are_refused(tmp_path):
    files = OutputFolder(tmp_path / "out", protected=[tmp_path / "out" / "a" / "depth.png"])
    with pytest.raises(MtlCompressError, match="unsafe output name '..'"):
        files.folder("..")
    folder = files.folder("a")
    with pytest.raises(MtlCompressError, match="unsafe output name"):
        files.file(folder, "../x.png")
    with pytest.raises(MtlCompressError, match="is one of the inputs"):
        files.file(folder, "depth.png")
    (tmp_path / "out" / "b").write_text("a file where a folder goes")
    with pytest.raises(MtlCompressError, match="exists and is not a folder"):
        files.folder("b")
    (folder / "semseg.png").mkdir()
    with pytest.raises(MtlCompressError, match="is a folder"):
        files.file(folder, "semseg.png")
    (tmp_path / "file").write_text("")
    with pytest.raises(MtlCompressError, match="is a file; give a folder"):
        OutputFolder(tmp_path / "file")
