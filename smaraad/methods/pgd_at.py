"""PGD-AT (Madry et al., 2018): cross-entropy on PGD examples, no teacher. Trains teachers.

The attack maximises CE from a uniform random start. Following the common PyTorch
implementations (e.g. Rice et al., 2020), the model stays in train mode during the attack
(`student_mode`); "eval" is the alternative.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from smaraad.attacks import ce_loss, model_mode, perturb
from smaraad.fields import choice
from smaraad.losses import at_least_fp32
from smaraad.methods.base import Context


@dataclass(frozen=True)
class PGDATParams:
    student_mode: str = choice("train", ("eval", "train"), "model's mode during the attack")


def pgd_at_loss(ctx: Context, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    model = ctx.student
    with model_mode(model, ctx.params.student_mode == "train"):
        x_adv = perturb(ce_loss(model, y), x, eps=ctx.eps, step=ctx.step, steps=ctx.steps)
    return {"ce_adv": F.cross_entropy(at_least_fp32(model(x_adv)), y)}
