"""A user's own head class, named by import path (``package.module:factory``).

Trust model: a checkpoint or bundle stores the head's weights and that path, never
code. Building the head imports the module *installed on the loading machine* and
calls its factory, so a file can only choose among code that machine already has,
and only among modules its user allowed: the ones named in the environment variable
``MTLCOMPRESS_HEAD_MODULES`` (comma-separated; a package allows its submodules), plus
the one ``mtlcompress import --head-module`` was given, while that import runs. Anything else
is refused with one line naming the module, before it is imported.

The factory's contract::

    factory(embed_dim: int, out_channels: int, patch_size: int) -> nn.Module
    factory(embed_dim, out_channels, patch_size, layers=(3, 6, ...))  # with --head-layers

and the module's ``forward(features, grid) -> [B, out_channels, H, W]``, where
``features`` is the final-norm patch tokens ``[B, N, D]`` (with ``layers``: a list of
them, one per named block, in order) and ``grid`` the token grid ``(gh, gw)``, rows
and columns of patches (tokens are row-major). It must hold only floating-point weights in its ``state_dict``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
from collections.abc import Iterator, Sequence

import torch.nn as nn

from mtlcompress.errors import CheckpointError

__all__ = ["HEAD_MODULES_ENV", "allowing_head_module", "build_module_head", "check_module_path"]

HEAD_MODULES_ENV = "MTLCOMPRESS_HEAD_MODULES"
_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_allowed_here: set[str] = set()  # modules an import in progress was told to trust (`import --head-module`)


def check_module_path(path: object) -> str:
    """``path`` if it is ``package.module:factory`` (identifiers only), else a one-line error."""
    if not isinstance(path, str) or len(path) > 200 or not _PATH.match(path):
        raise CheckpointError(f"head field 'module' must be 'package.module:factory', got {path!r:.60}")
    return path


@contextlib.contextmanager
def allowing_head_module(path: str | None) -> Iterator[None]:
    """Trust ``path``'s module while inside (the user named it; ``None``: nothing more)."""
    module = None if path is None else check_module_path(path).split(":")[0]
    fresh = module is not None and module not in _allowed_here
    if fresh:
        _allowed_here.add(module)
    try:
        yield
    finally:
        if fresh:
            _allowed_here.discard(module)


def _is_allowed(module: str) -> bool:
    names = _allowed_here | {n.strip() for n in os.environ.get(HEAD_MODULES_ENV, "").split(",") if n.strip()}
    return any(module == name or module.startswith(name + ".") for name in names)


def build_module_head(path: str, embed_dim: int, out_channels: int, patch_size: int,
                      layers: Sequence[int] | None = None) -> nn.Module:
    """The user's head, from its factory (see the module docstring for the contract)."""
    module_name, factory_name = check_module_path(path).split(":")
    if not _is_allowed(module_name):
        raise CheckpointError(f"the head is built by '{path}'; the module '{module_name}' is not allowed: list it "
                              f"in {HEAD_MODULES_ENV} to run it (files name head code, never carry it)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CheckpointError(f"the head is built by '{path}', but the module '{module_name}' is not importable "
                              f"here ({exc}); install it or put it on PYTHONPATH") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise CheckpointError(f"the head is built by '{path}', but '{module_name}' has no callable '{factory_name}'")
    kwargs = {} if layers is None else {"layers": tuple(layers)}
    head = factory(embed_dim, out_channels, patch_size, **kwargs)
    if not isinstance(head, nn.Module):
        raise CheckpointError(f"'{path}' returned a {type(head).__name__}, not a torch nn.Module")
    return head
