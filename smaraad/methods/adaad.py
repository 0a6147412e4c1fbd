"""AdaAD, Adaptive Adversarial Distillation (Huang et al., CVPR 2023).

Reference: github.com/boyellow/AdaAD, AT_helper.py (`adaad_inner_loss`) and main.py.
- Attack: maximise KL(S(x'), T(x')) summed over the batch, the teacher on the MOVING point (it is
  differentiated through, parameters frozen), from x + 0.001 N(0, 1), the student in eval mode
  (`BN_eval=True`).
- Outer loss: alpha * KL(S(x'), T(x')) + (1 - alpha) * KL(S(x), T(x)), alpha = 1, T = 1.
  main.py reduces with `nn.KLDivLoss()` (mean over all B x C elements, "mean") on CIFAR-10 and
  with sum / B ("batchmean") on CIFAR-100.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from smaraad.fields import num
from smaraad.methods.base import Context
from smaraad.methods.common import (adversarial, attack_field, kl, mode_field, reduction_field,
                                    start_field)

SOURCE = "AdaAD AT_helper.py"


@dataclass(frozen=True)
class AdaADParams:
    alpha: float = num(1.0, 0, 1, doc="weight of the adversarial KL (clean KL: 1 - alpha)")
    temperature: float = num(1.0, 0, None, lo_open=True, doc="KL temperature (reference: 1)")
    attack: str = attack_field("kl_moving", SOURCE)
    start: str = start_field("normal", SOURCE)
    student_mode: str = mode_field("eval", SOURCE)
    kl_reduction: str = reduction_field("mean", "AdaAD main.py, CIFAR-10: nn.KLDivLoss(); "
                                                "CIFAR-100 uses batchmean")


def adaad_loss(ctx: Context, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    p = ctx.params
    x_adv = adversarial(ctx, x, y, attack=p.attack, start=p.start, student_mode=p.student_mode)
    terms = {}
    for name, inp, w in (("adv", x_adv, p.alpha), ("clean", x, 1 - p.alpha)):
        if w > 0:
            with torch.no_grad():
                zt = ctx.teacher(inp)
            terms[f"kl_{name}"] = w * kl(ctx.student(inp), zt, p.kl_reduction,
                                         temperature=p.temperature)
    return terms
