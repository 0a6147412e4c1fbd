"""TRADES (Zhang et al., ICML 2019): CE on clean inputs + beta * KL(S(x'), S(x)). No teacher.

Reference: github.com/yaodongyu/TRADES, trades.py (`trades_loss`) and train_trades_cifar10.py.
- Attack: maximise KL(S(x'), S(x)) summed over the batch, the target being the model's own clean
  prediction (computed in eval mode), from x + 0.001 N(0, 1), the model in eval mode.
- Outer loss: CE(S(x), y) + beta * sum_i KL_i / B ("batchmean"), beta = 6 (the CIFAR-10 setting).
  The clean prediction inside the KL is NOT detached in the reference: the robust term pulls
  S(x) towards S(x') as well (`detach_clean`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from smaraad.fields import choice, num
from smaraad.methods.base import Context
from smaraad.methods.common import (adversarial, attack_field, ce, kl, mode_field,
                                    reduction_field, start_field)

SOURCE = "TRADES trades.py"


@dataclass(frozen=True)
class TRADESParams:
    beta: float = num(6.0, 0, None, doc="weight of the robust KL term (TRADES CIFAR-10: 6)")
    attack: str = attack_field("kl_self", SOURCE, options=("kl_self", "ce"))
    start: str = start_field("normal", SOURCE)
    student_mode: str = mode_field("eval", SOURCE)
    kl_reduction: str = reduction_field("batchmean", SOURCE + ": KLDivLoss(sum) / batch_size")
    detach_clean: bool = choice(False, (True, False),
                                "detach S(x) inside the robust KL (reference: not detached)")


def trades_loss(ctx: Context, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    p = ctx.params
    x_adv = adversarial(ctx, x, y, attack=p.attack, start=p.start, student_mode=p.student_mode)
    z_clean = ctx.student(x)
    target = z_clean.detach() if p.detach_clean else z_clean
    return {"ce_clean": ce(z_clean, y),
            "kl_adv": p.beta * kl(ctx.student(x_adv), target, p.kl_reduction)}
