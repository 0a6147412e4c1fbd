"""RSLAD: "Revisiting Adversarial Robustness Distillation: Robust Soft Labels Make Student Better"
(Zi et al., ICCV 2021).

Reference: github.com/zibojia/RSLAD, rslad_loss.py (`rslad_inner_loss`) and
resnet18_rslad_cifar10.py / _cifar100.py.
- Attack: maximise KL(S(x'), T(x)) summed over the batch, the teacher's soft label of the CLEAN
  input as target, from x + 0.001 N(0, 1), the student in eval mode.
- Outer loss: 5/6 KL(S(x'), T(x)) + 1/6 KL(S(x), T(x)), each `torch.mean` over all B x C elements
  ("mean"), T = 1. The CIFAR-100 script multiplies both by 10 "to keep consistent with CIFAR-10"
  (`scale`: 1 here, set 10 for CIFAR-100).
- The reference's KL adds 1e-5 inside the log of the teacher's probabilities (`log_eps`): a
  teacher-only shift of the value, at most 1e-5 per element, with no effect on any gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from smaraad.fields import num
from smaraad.methods.base import Context
from smaraad.methods.common import (adversarial, attack_field, kl, mode_field, reduction_field,
                                    start_field)

SOURCE = "RSLAD rslad_loss.py"


@dataclass(frozen=True)
class RSLADParams:
    alpha: float = num(5 / 6, 0, 1, doc="weight of the adversarial KL (clean KL: 1 - alpha)")
    scale: float = num(1.0, 0, None, lo_open=True,
                       doc="factor on both KLs (reference: 1 on CIFAR-10, 10 on CIFAR-100)")
    temperature: float = num(1.0, 0, None, lo_open=True, doc="KL temperature (reference: 1)")
    log_eps: float = num(1e-5, 0, None, doc="added to P_T inside the KL's log (reference "
                                            "`kl_loss`: 1e-5; 0 = exact KL)")
    attack: str = attack_field("kl_clean", SOURCE)
    start: str = start_field("normal", SOURCE)
    student_mode: str = mode_field("eval", SOURCE)
    kl_reduction: str = reduction_field("mean", SOURCE + ": torch.mean over elements")


def rslad_loss(ctx: Context, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    p = ctx.params
    x_adv = adversarial(ctx, x, y, attack=p.attack, start=p.start, student_mode=p.student_mode)
    with torch.no_grad():
        zt = ctx.teacher(x)
    terms = {}
    for name, inp, w in (("adv", x_adv, p.alpha), ("clean", x, 1 - p.alpha)):
        if w > 0:
            terms[f"kl_{name}"] = w * p.scale * kl(ctx.student(inp), zt, p.kl_reduction,
                                                   temperature=p.temperature, log_eps=p.log_eps)
    return terms
