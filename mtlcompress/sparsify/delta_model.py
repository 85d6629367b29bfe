"""A sub-task model written as ``W_t = W_0 + delta`` over every backbone tensor.

Stage 1 gates the delta with hard-concrete gates (``delta = z * w``); later stages
fix the support with a mask (``delta = m * w``). The wrapped ``SingleTaskModel``
holds the frozen base weights in its backbone and the sub-task's own head; the
forward substitutes ``W_0 + delta`` through ``torch.func.functional_call``, so timm's
modules, and taps on them, run unmodified.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.func import functional_call

from mtlcompress.models.single_task import SingleTaskModel
from mtlcompress.sparsify.common import student_from, weight_delta
from mtlcompress.sparsify.hard_concrete import HardConcreteGate, expected_l0


def _key(name: str) -> str:
    # ParameterDict/ModuleDict keys cannot contain dots.
    return name.replace(".", "__")


class DeltaModel(nn.Module):
    """``model``'s backbone holds ``W_0``; ``init_delta`` is the starting ``w``.

    Args:
        model: a single-task model whose backbone weights are the base task's.
        init_delta: starting ``w`` per backbone tensor name (missing names start at 0).
        masks: fixed supports (stage 2 onwards); without masks the delta is gated.
        per_tensor_gates: also learn one gate per tensor (the reference code has it).
    """

    def __init__(self, model: SingleTaskModel, init_delta: dict[str, torch.Tensor] | None = None,
                 masks: dict[str, torch.Tensor] | None = None, per_tensor_gates: bool = False,
                 init_log_alpha: float = 5.0) -> None:
        super().__init__()
        self.model = model
        for parameter in model.backbone.parameters():
            parameter.requires_grad_(False)
        self.names = [name for name, _ in model.backbone.named_parameters()]
        base = dict(model.backbone.named_parameters())
        init_delta = init_delta or {}
        self.delta = nn.ParameterDict({
            _key(n): nn.Parameter(init_delta[n].clone().float() if n in init_delta else torch.zeros_like(base[n]))
            for n in self.names})
        self.gated = masks is None
        if self.gated:
            self.gates = nn.ModuleDict({_key(n): HardConcreteGate(base[n].shape, init_log_alpha=init_log_alpha)
                                        for n in self.names})
            self.tensor_gates = nn.ModuleDict({_key(n): HardConcreteGate((), init_log_alpha=init_log_alpha)
                                               for n in self.names}) if per_tensor_gates else None
        else:
            for n in self.names:
                self.register_buffer(f"mask__{_key(n)}", masks[n].bool())

    @property
    def num_weights(self) -> int:
        return sum(self.delta[_key(n)].numel() for n in self.names)

    def mask(self, name: str) -> torch.Tensor:
        return getattr(self, f"mask__{_key(name)}")

    def effective_delta(self) -> dict[str, torch.Tensor]:
        """``z * w`` (a gate sample in training, deterministic in eval) or ``m * w``."""
        out = {}
        for n in self.names:
            w = self.delta[_key(n)]
            if self.gated:
                z = self.gates[_key(n)]()
                if self.tensor_gates is not None:
                    z = z * self.tensor_gates[_key(n)]()
                out[n] = z * w
            else:
                out[n] = self.mask(n) * w
        return out

    def expected_density(self) -> torch.Tensor:
        """Expected fraction of non-zero deltas (differentiable; gated mode only)."""
        total = sum(expected_l0(self.gates[_key(n)], self.tensor_gates[_key(n)] if self.tensor_gates else None)
                    for n in self.names)
        return total / self.num_weights

    def backbone_weights(self) -> dict[str, torch.Tensor]:
        base = dict(self.model.backbone.named_parameters())
        return {n: base[n] + d for n, d in self.effective_delta().items()}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        weights = {f"backbone.{n}": w for n, w in self.backbone_weights().items()}
        return functional_call(self.model, weights, (images,), strict=False)

    @torch.no_grad()
    def export(self, masks: dict[str, torch.Tensor] | None = None) -> SingleTaskModel:
        """A plain model with ``W_0 + delta`` baked in; ``masks`` (from a density
        projection) replace the gates: kept entries take their full ``w``."""
        was_training = self.training
        self.eval()
        if masks is not None:
            delta = {n: masks[n] * self.delta[_key(n)] for n in self.names}
        else:
            delta = self.effective_delta()
        self.train(was_training)
        model = copy.deepcopy(self.model)
        for name, parameter in model.backbone.named_parameters():
            parameter.add_(delta[name].to(parameter.dtype))
            parameter.requires_grad_(True)
        return model.eval()

    def gate_scores(self) -> dict[str, torch.Tensor]:
        """Per-weight log-alpha (plus the tensor gate's), used to rank weights."""
        scores = {}
        for n in self.names:
            score = self.gates[_key(n)].log_alpha.detach()
            if self.tensor_gates is not None:
                score = score + self.tensor_gates[_key(n)].log_alpha.detach()
            scores[n] = score
        return scores


def masked_delta_model(base_model: SingleTaskModel, task_model: SingleTaskModel) -> DeltaModel:
    """``W_0 + m * w`` with the support ``m`` and values ``w`` read off the checkpoint (stages 2-4)."""
    delta = weight_delta(task_model, base_model)
    return DeltaModel(student_from(base_model, task_model), init_delta=delta,
                      masks={name: d != 0 for name, d in delta.items()})
