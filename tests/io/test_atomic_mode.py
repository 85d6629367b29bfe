"""Files written atomically get the mode an ordinary ``open(path, "w")`` would give
(0666 minus the umask), not the 0600 of the temp file they start as."""

from __future__ import annotations

import os
import stat
import sys

import pytest
import torch

from mtlcompress.io.atomic import save_safetensors_atomic, write_json_atomic, write_text_atomic

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_get_the_same_mode_as_an_ordinary_write(tmp_path, umask):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    write_text_atomic(tmp_path / "a.txt", "x")
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    save_safetensors_atomic({"w": torch.zeros(2)}, tmp_path / "a.safetensors", {})
    assert mode(plain) == 0o666 & ~umask
    for name in ("a.txt", "a.json", "a.safetensors"):
        assert mode(tmp_path / name) == 0o666 & ~umask, name
