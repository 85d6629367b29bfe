"""The activation-delta penalty shared by the activations and temporal stages.

``sum_l lambda_l * penalty(x^l - x_ref^l)`` over the inputs of every shared linear layer.
Element granularity uses L1 (the paper); token granularity uses a group-L1 on each token
row's RMS, so whole tokens fall below threshold: that is what gathers into a smaller
dense GEMM. Deeper layers get larger coefficients, as in the reference code.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def layer_coefficients(layers: list[str], depth: int, strength: float) -> dict[str, float]:
    """``strength * (1 + i / depth)`` for block ``i``: deeper layers are pushed harder."""
    return {layer: strength * (1.0 + int(layer.split(".")[1]) / depth) for layer in layers}


def activation_delta_penalty(current: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
                             coefficients: Mapping[str, float], granularity: str) -> torch.Tensor:
    """Sum over layers of ``lambda_l * mean |dx|`` (element) or ``lambda_l * mean_tokens RMS(dx)`` (token)."""
    total = torch.zeros(())
    for layer, coefficient in coefficients.items():
        delta = current[layer] - reference[layer]
        if granularity == "token":
            term = (delta.pow(2).mean(dim=-1) + 1e-12).sqrt().mean()
        else:
            term = delta.abs().mean()
        total = total + coefficient * term
    return total
