"""``check_output``: an output never replaces an input (same path, symlink or hard link),
replaces an existing file only when asked, and is of the right kind."""

from __future__ import annotations

import os

import pytest

from mtlcompress.errors import MtlCompressError
from mtlcompress.io.outputs import HTML_SUFFIXES, SAFETENSORS_SUFFIXES, OutputError, check_output


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "in.safetensors"
    path.write_bytes(b"input")
    return path


def test_a_new_file_next_to_the_inputs_is_fine(source, tmp_path):
    out = tmp_path / "out.safetensors"
    assert check_output(out, [source, None], suffixes=SAFETENSORS_SUFFIXES) == out


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_input_is_never_an_output_even_with_overwrite(source, overwrite):
    with pytest.raises(OutputError, match="is also an input"):
        check_output(source, [source], overwrite=overwrite)


def test_another_spelling_of_the_input_is_caught(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    with pytest.raises(OutputError, match="is also an input"):
        check_output("sub/../in.safetensors", [source], overwrite=True)


def test_a_symlink_to_the_input_is_caught(source, tmp_path):
    link = tmp_path / "link.safetensors"
    link.symlink_to(source)
    with pytest.raises(OutputError, match="is also an input"):
        check_output(link, [source], overwrite=True)
    with pytest.raises(OutputError, match="is also an input"):
        check_output(source, [link], overwrite=True)


def test_a_hard_link_to_the_input_is_caught(source, tmp_path):
    twin = tmp_path / "twin.safetensors"
    os.link(source, twin)
    with pytest.raises(OutputError, match="is also an input"):
        check_output(twin, [source], overwrite=True)


def test_an_existing_output_needs_overwrite(source, tmp_path):
    out = tmp_path / "old.safetensors"
    out.write_bytes(b"old")
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        check_output(out, [source])
    assert check_output(out, [source], overwrite=True) == out


def test_a_dangling_symlink_counts_as_existing(tmp_path):
    out = tmp_path / "dangling.safetensors"
    out.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="already exists"):
        check_output(out)


def test_a_folder_is_not_a_file_output(tmp_path):
    folder = tmp_path / "b.safetensors"
    folder.mkdir()
    with pytest.raises(OutputError, match="is a folder; give a file path"):
        check_output(folder, overwrite=True)


def test_the_wrong_extension_is_refused(tmp_path):
    with pytest.raises(OutputError, match=r"must end in \.safetensors"):
        check_output(tmp_path / "b.txt", suffixes=SAFETENSORS_SUFFIXES)
    assert check_output(tmp_path / "r.HTML", suffixes=HTML_SUFFIXES)


def test_a_file_where_a_folder_goes_is_refused(source, tmp_path):
    with pytest.raises(OutputError, match="is a file; it must be a folder"):
        check_output(source, folder=True, overwrite=True)


def test_a_folder_output_that_is_not_empty_needs_overwrite(tmp_path):
    folder = tmp_path / "data"
    assert check_output(folder, folder=True) == folder  # not there yet
    folder.mkdir()
    assert check_output(folder, folder=True) == folder  # empty
    (folder / "manifest.json").write_text("{}")
    with pytest.raises(OutputError, match="not empty; pass --overwrite"):
        check_output(folder, folder=True)
    assert check_output(folder, folder=True, overwrite=True) == folder


def test_it_is_a_user_error_with_its_own_code():
    assert issubclass(OutputError, MtlCompressError) and OutputError.code == "output"
