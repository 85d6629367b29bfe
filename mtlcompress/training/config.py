"""The training hyper-parameters every stage shares, in a torch-free module so that the
CLI can build its options (``sparsify``'s are derived from these defaults) without
importing torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")  # autocast dtypes a run may train in


@dataclass
class TrainConfig:
    """Hyper-parameters shared by every training stage, and how its steps run.

    ``batch_size`` is the global batch (split across ``torchrun`` ranks, then into
    ``accumulate`` micro-batches); ``precision`` is the autocast dtype (``fp32``,
    ``bf16``, ``fp16``); ``device`` is ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``
    (under torchrun ``auto``/``cuda`` mean the rank's own GPU); ``workers`` DataLoader
    processes load batches ahead. A resume may change ``lr``, ``device`` and ``workers``.
    """

    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 100
    checkpoint_every: int = 50
    augment: bool = True
    # How the steps run; device and workers may change on resume, the others may not.
    accumulate: int = 1      # micro-batches per step (gradient accumulation)
    precision: str = "fp32"  # fp32, bf16 or fp16 autocast
    device: str = "auto"     # auto, cpu, cuda, cuda:N or mps
    workers: int = 0         # DataLoader worker processes

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; stored in checkpoints so a resume can refuse other settings."""
        return asdict(self)
