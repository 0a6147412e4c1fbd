"""IAD-I, Introspective Adversarial Distillation: "Reliable Adversarial Distillation with Unreliable
Teachers" (Zhu et al., ICLR 2022).

Reference: github.com/ZFancy/IAD, IAD-I.py.
- Attack: ARD's (PGD on CE, uniform start, the student in TRAIN mode).
- Outer loss, with A_i = P_T(x'_i)[y_i]^beta (no gradient; `.item()` in the reference):
    alpha * T^2 * KL(S(x')/T, T(x)/T) + alpha * KL_w(S(x'), S(x); 1 - A) + (1 - alpha) CE(S(x), y)
  the second ("introspection") term only from epoch `begin` (60 of 200). Both KLs are summed over
  classes and averaged over the batch ("batchmean"); T = 1, beta = 0.1, alpha = 1.
- The introspection target S(x) is NOT detached in the reference: its gradient also moves the
  clean prediction towards S(x') (`detach_self`).
- Schedule: the reference starts the term at epoch 60 (0-based) of 200. Runs here have any length,
  so `begin` is the fraction 0.3 of the run: the term is on from epoch round(begin * epochs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from smaraad.fields import choice, num
from smaraad.losses import at_least_fp32
from smaraad.methods.base import Context
from smaraad.methods.common import (adversarial, attack_field, ce, kl, mode_field,
                                    reduction_field, start_field)

SOURCE = "IAD IAD-I.py"


@dataclass(frozen=True)
class IADParams:
    alpha: float = num(1.0, 0, 1, doc="weight of the distillation terms (CE on clean: 1 - alpha)")
    beta: float = num(0.1, 0, None, doc="exponent on the teacher's true-class probability, A")
    temperature: float = num(1.0, 0, None, lo_open=True, doc="distillation temperature T")
    begin: float = num(0.3, 0, 1, doc="fraction of the run before the introspection term starts "
                                      "(reference: epoch 60 of 200)")
    attack: str = attack_field("ce", SOURCE + ", ARD's attack")
    start: str = start_field("uniform", SOURCE)
    student_mode: str = mode_field("train", SOURCE)
    kl_reduction: str = reduction_field("batchmean", SOURCE + ": KLDivLoss(reduce=False) "
                                                              ".sum(1), then (1/B) sum")
    detach_self: bool = choice(False, (True, False),
                               "detach S(x) in the introspection KL (reference: not detached)")


def introspection_on(ctx: Context) -> bool:
    """True from epoch round(begin * epochs) on (0-based epochs: 60 of 200 in the reference)."""
    return ctx.epoch >= round(ctx.params.begin * ctx.epochs)


def iad_loss(ctx: Context, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    p = ctx.params
    x_adv = adversarial(ctx, x, y, attack=p.attack, start=p.start, student_mode=p.student_mode)
    introspect = introspection_on(ctx) and p.alpha > 0
    terms = {}
    zs_adv = ctx.student(x_adv) if p.alpha > 0 else None
    zs_clean = ctx.student(x) if (introspect or p.alpha < 1) else None
    if p.alpha > 0:
        with torch.no_grad():
            zt = ctx.teacher(x)
        t = p.temperature
        terms["kl_adv"] = p.alpha * t * t * kl(zs_adv, zt, p.kl_reduction, temperature=t)
    if introspect:
        with torch.no_grad():
            p_true = F.softmax(at_least_fp32(ctx.teacher(x_adv)), dim=1).gather(1, y[:, None]).squeeze(1)
            trust = p_true.pow(p.beta)
        target = zs_clean.detach() if p.detach_self else zs_clean
        terms["kl_self"] = p.alpha * kl(zs_adv, target, p.kl_reduction, weight=1.0 - trust)
    if p.alpha < 1:
        terms["ce_clean"] = (1 - p.alpha) * ce(zs_clean, y)
    return terms
