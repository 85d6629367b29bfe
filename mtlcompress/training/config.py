"""The training hyper-parameters every stage shares, in a torch-free module so that the
CLI can build its options (``sparsify``'s are derived from these defaults) without
importing torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class TrainConfig:
    """Hyper-parameters shared by every training stage."""

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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; stored in checkpoints so a resume can refuse other settings."""
        return asdict(self)
