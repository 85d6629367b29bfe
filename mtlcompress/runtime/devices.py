"""The runtime engines' ``device=`` check: the package-wide parser in ``mtlcompress.devices``
(one implementation for training, evaluation and inference)."""

from __future__ import annotations

from mtlcompress.devices import DEVICE_CHOICES, resolve_device

__all__ = ["DEVICE_CHOICES", "resolve_device"]
