"""The container's header checks (issue #21.2): hostile JSON and header-only shapes."""

import pytest
import torch
from safetensors.torch import save_file

from mtlcompress.errors import CheckpointError
from mtlcompress.io.container import (
    check_tensor_shapes,
    read_container_header,
    read_container_shapes,
    write_container,
)


def _container(path, document_text):
    save_file({"w": torch.zeros(2, 3)}, str(path),
              metadata={"format": "test.format", "format_version": "1", "document": document_text})
    return path


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_json_nested_thousands_deep_is_one_line(tmp_path, opener):
    path = _container(tmp_path / "deep.safetensors", opener * 100_000)
    with pytest.raises(CheckpointError, match="metadata JSON is nested too deeply") as raised:
        read_container_header(path, format_name="test.format", versions=(1,), error=CheckpointError)
    assert "\n" not in str(raised.value)


def test_ordinary_nesting_still_reads(tmp_path):
    path = _container(tmp_path / "ok.safetensors", '{"a": ' * 50 + "1" + "}" * 50)
    _, document = read_container_header(path, format_name="test.format", versions=(1,), error=CheckpointError)
    assert "a" in document


def test_shapes_come_from_the_header(tmp_path):
    path = tmp_path / "c.safetensors"
    write_container(path, {"a": torch.zeros(4, 5), "b": torch.ones(3)}, format_name="test.format",
                    version=1, document={})
    assert read_container_shapes(path, error=CheckpointError) == {"a": (4, 5), "b": (3,)}
    check_tensor_shapes({"a": (4, 5), "b": (3,)}, {"a": (4, 5), "b": (3,)}, path, error=CheckpointError, hint="")
    with pytest.raises(CheckpointError, match=r"tensor 'a' has shape \(4, 5\), the architecture in the metadata "
                                              r"needs \(5, 4\)"):
        check_tensor_shapes({"a": (5, 4), "b": (3,)}, {"a": (4, 5), "b": (3,)}, path, error=CheckpointError,
                            hint="")
    with pytest.raises(CheckpointError, match="missing 1 tensor"):
        check_tensor_shapes({"a": (4, 5), "b": (3,), "c": (1,)}, {"a": (4, 5), "b": (3,)}, path,
                            error=CheckpointError, hint="")


def test_shapes_of_a_file_that_is_not_safetensors(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x00" * 5)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_container_shapes(path, error=CheckpointError)
