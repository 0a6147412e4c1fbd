"""ARD, Adversarially Robust Distillation (Goldblum et al., AAAI 2020).

Reference: github.com/goldblum/AdversariallyRobustDistillation, main.py.
- Attack (`AttackPGD`): PGD on CE(S(x'), y), uniform random start, the student in TRAIN mode
  (the attack runs inside `net.train()`), so batch-norm statistics also see the attack's points.
- Outer loss: alpha * T^2 * KL(S(x')/T, T(x)/T) + (1 - alpha) * CE(S(x), y), T = 30, alpha = 1;
  the teacher sees the CLEAN input. `nn.KLDivLoss()` averages over all B x C elements ("mean"),
  so the KL term is C times smaller than a batch mean.
Terms whose weight is zero are not computed (alpha = 1 drops the CE term).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from smaraad.fields import num
from smaraad.methods.base import Context
from smaraad.methods.common import (adversarial, attack_field, ce, kl, mode_field,
                                    reduction_field, start_field)

SOURCE = "ARD main.py"


@dataclass(frozen=True)
class ARDParams:
    alpha: float = num(1.0, 0, 1, doc="weight of the distillation term (CE on clean: 1 - alpha)")
    temperature: float = num(30.0, 0, None, lo_open=True, doc="distillation temperature T")
    attack: str = attack_field("ce", SOURCE)
    start: str = start_field("uniform", SOURCE)
    student_mode: str = mode_field("train", SOURCE)
    kl_reduction: str = reduction_field("mean", SOURCE + ": nn.KLDivLoss() default")


def ard_loss(ctx: Context, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    p = ctx.params
    x_adv = adversarial(ctx, x, y, attack=p.attack, start=p.start, student_mode=p.student_mode)
    terms = {}
    if p.alpha > 0:
        with torch.no_grad():
            zt = ctx.teacher(x)
        t = p.temperature
        terms["kl_adv"] = p.alpha * t * t * kl(ctx.student(x_adv), zt, p.kl_reduction,
                                               temperature=t)
    if p.alpha < 1:
        terms["ce_clean"] = (1 - p.alpha) * ce(ctx.student(x), y)
    return terms
