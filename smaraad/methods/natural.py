"""Natural (standard) training: CE on clean inputs, no attack, no teacher.

Trains MTARD's natural teacher (`provide_teacher(cfg, method="natural")`) and gives the clean
baseline. The run's attack settings are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from smaraad.methods.base import Context
from smaraad.methods.common import ce


@dataclass(frozen=True)
class NaturalParams:
    """No hyperparameters: the training recipe is the run config's."""


def natural_loss(ctx: Context, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    return {"ce_clean": ce(ctx.student(x), y)}
