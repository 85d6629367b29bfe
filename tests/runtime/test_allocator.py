"""glibc malloc keeps freed memory in the process after keep_freed_memory()."""

from __future__ import annotations

import ctypes
import sys

import pytest

from mtlcompress.runtime.allocator import keep_freed_memory


def _glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and hasattr(ctypes.CDLL("libc.so.6"), "gnu_get_libc_version")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc(), reason="glibc only")
def test_applies_on_glibc_and_can_be_called_again():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True


def test_is_a_no_op_off_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert keep_freed_memory() is False
