"""What a training method is: hyperparameters, and one loss that returns named terms.

A method (mdistiller's shape) is a frozen params dataclass with its paper's defaults and one
function `loss(ctx, x, y) -> {"term": scalar}` that runs its own inner maximisation and returns its
outer loss as named, already-weighted, batch-averaged terms. The trainer sums the terms and logs
each one, so an ablation shows every component's curve with no special code. Adding a method is one
module and one line in the registry (smaraad/methods/__init__.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import Tensor, nn

from smaraad.fields import build


@dataclass
class Context:
    """What a method's loss may use besides the batch."""
    student: nn.Module
    teacher: nn.Module | None   # frozen (no parameter gradients) and in eval mode
    params: Any                 # the method's params dataclass instance
    eps: float                  # L_inf budget, [0, 1] units
    step: float                 # attack step, [0, 1] units
    steps: int                  # attack steps
    epoch: int = 0              # 0-based epoch being trained
    epochs: int = 1
    state: dict = field(default_factory=dict)  # per-run scratch space (e.g. adaptive weights)
    natural_teacher: nn.Module | None = None  # a second, naturally trained teacher (MTARD)


PAPER_LR_MILESTONES = (115 / 200, 160 / 200, 185 / 200)  # lr /10 points, fractions of the run


def epoch_points(fractions, epochs: int) -> list[int]:
    """Fractions of a run as epoch indices, round(f * epochs), 0 dropped, repeats kept: points
    that land on the same epoch of a short run each still count (MultiStepLR counts repeats)."""
    return sorted(m for m in (round(f * epochs) for f in fractions) if m > 0)

Loss = Callable[[Context, Tensor, Tensor], dict[str, Tensor]]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its params class, its loss and whether it needs a teacher.

    `defaults` overrides the params class's defaults, so that an ablation variant is a named
    setting of a shared loss (e.g. `kd` = SmaraAD's machinery with a KL outer term, no alignment).
    `dataset_defaults` maps a data set to the params its reference code changes there (RSLAD's
    CIFAR-100 script multiplies its loss by 10): `preset_config` lays them over `defaults` and
    under the user's values, so the switch stays and the default follows the data set.
    """
    params: type
    loss: Loss
    needs_teacher: bool = True
    needs_natural_teacher: bool = False
    defaults: Mapping[str, Any] = field(default_factory=dict)
    dataset_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    doc: str = ""

    def make_params(self, values: Mapping[str, Any]):
        return build(self.params, {**self.defaults, **values})


def batch_mean(per_sample: Mapping[str, Tensor], weight: Tensor | float = 1.0,
               prefix: str = "") -> dict[str, Tensor]:
    """Weight per-sample terms (B,) and average them over the batch: named scalar terms."""
    return {prefix + k: (weight * v).mean() for k, v in per_sample.items()}
