"""``--device`` means the same everywhere: one parser, clear one-line errors."""

import pytest
import torch

from mtlcompress.devices import parse_device, resolve_device
from mtlcompress.errors import MtlCompressError
from mtlcompress.runtime.devices import resolve_device as runtime_resolve_device


def test_auto_is_cuda_when_present_else_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert parse_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("name, expected", [("cpu", torch.device("cpu")), ("CUDA", torch.device("cuda")),
                                            ("cuda:3", torch.device("cuda", 3)), ("mps", torch.device("mps"))])
def test_names_parse(name, expected):
    assert parse_device(name) == expected


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cuda:", "tpu", ""])
def test_unknown_names_are_one_line(name):
    with pytest.raises(MtlCompressError, match="unknown device") as caught:
        resolve_device(name)
    assert "\n" not in str(caught.value) and "auto, cpu, cuda, cuda:N or mps" in str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_refused(name):
    with pytest.raises(MtlCompressError, match="no CUDA GPU"):
        resolve_device(name)


def test_local_rank_picks_the_gpu_of_an_unnumbered_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setenv("LOCAL_RANK", "5")
    assert resolve_device("cuda") == torch.device("cuda", 5)
    assert resolve_device("auto") == torch.device("cuda", 5)
    assert resolve_device("cuda:2") == torch.device("cuda", 2)  # explicit wins
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    with pytest.raises(MtlCompressError, match="has 8 CUDA GPU"):
        resolve_device("cuda:8")


def test_mps_needs_its_backend(monkeypatch):
    monkeypatch.setattr("mtlcompress.devices.mps_available", lambda: False)
    with pytest.raises(MtlCompressError, match="MPS backend"):
        resolve_device("mps")
    monkeypatch.setattr("mtlcompress.devices.mps_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")


def test_runtime_uses_the_same_parser():
    assert runtime_resolve_device is resolve_device
