"""MTARD: "Enhanced Accuracy and Robustness via Multi-Teacher Adversarial Distillation"
(Zhao et al., ECCV 2022).

Reference: github.com/zhaoshiji123/MTARD, mtard/mtard_loss.py (`mtard_inner_loss_ce`) and
mtard/mtard_resnet18_cifar10.py / _cifar100.py. Two teachers: `ctx.teacher` is the adversarially
trained one, `ctx.natural_teacher` a naturally trained one (`natural` method).
- Attack: PGD on CE(S(x'), y), from x + 0.001 N(0, 1), the student in eval mode. (The reference's
  uniform-start `attack_pgd` is only its test-time attack.)
- Outer loss: w_adv * KL(S(x'), T_adv(x')) + w_nat * KL(S(x), T_nat(x)), T = 1, each KL a
  `torch.mean` over all B x C elements ("mean"); x10 on both in the CIFAR-100 script (`scale`).
- Adaptive weights (the training script's update), every step, before the step's loss is formed:
    r_k = (L_k / L_k^0)^power            L_k^0 = the first step's value of loss k, power = 1
    w_nat <- w_nat - rate * (w_nat - r_nat / (r_adv + r_nat)),   w_adv = 1 - w_nat
  from w_nat = w_adv = 1/2, rate = 0.025. The loss whose value has fallen least relative to its
  start gets more weight. The weights use the losses' values only (no gradient).
- The reference divides `rate` by 10 each time it divides the learning rate (epochs 215, 260, 285
  of 300). `rate_decay_at` holds those points as fractions of the run; its default is the
  training recipe's default `lr_milestones`, so the two decay together unless one is changed.
- State (`ctx.state`, saved in checkpoints, floats only): mtard/w_nat, mtard/init_adv,
  mtard/init_nat.
- The reference's KL adds 1e-5 inside the log of the teacher's probabilities (`log_eps`): a
  teacher-only shift of each KL's value of at most 1e-5 (element mean), no gradient change, but
  it enters the loss ratios that set the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from smaraad.fields import num
from smaraad.methods.base import PAPER_LR_MILESTONES, epoch_points
from smaraad.methods.base import Context
from smaraad.methods.common import (adversarial, attack_field, kl, mode_field, reduction_field,
                                    start_field)

SOURCE = "MTARD mtard_loss.py"
_LR_MILESTONES = PAPER_LR_MILESTONES


@dataclass(frozen=True)
class MTARDParams:
    rate: float = num(0.025, 0, 1, doc="weight learning rate (reference `weight_learn_rate`)")
    power: float = num(1.0, 0, None, doc="exponent on each loss's ratio to its first value "
                                         "(reference `bert`)")
    rate_decay_at: tuple = field(default=_LR_MILESTONES, metadata=dict(
        doc="fractions of the run where `rate` is divided by 10 (reference: with the lr; "
            "default = the recipe's lr_milestones; [] = never)"))
    scale: float = num(1.0, 0, None, lo_open=True,
                       doc="factor on both KLs (reference: 1 on CIFAR-10, 10 on CIFAR-100)")
    temperature: float = num(1.0, 0, None, lo_open=True, doc="KL temperature (reference: 1)")
    log_eps: float = num(1e-5, 0, None, doc="added to P_T inside the KL's log (reference "
                                            "`kl_loss`: 1e-5; 0 = exact KL)")
    attack: str = attack_field("ce", SOURCE)
    start: str = start_field("normal", SOURCE)
    student_mode: str = mode_field("eval", SOURCE)
    kl_reduction: str = reduction_field("mean", "MTARD train script: torch.mean over elements")


def current_rate(ctx: Context) -> float:
    """`rate` divided by 10 for each decay point already passed (epoch indices as the trainer's
    lr milestones: round(fraction * epochs), 0 excluded)."""
    p = ctx.params
    return p.rate * 0.1 ** sum(ctx.epoch >= m for m in epoch_points(p.rate_decay_at, ctx.epochs))


def update_weights(ctx: Context, loss_adv: float, loss_nat: float) -> tuple[float, float]:
    """One step of MTARD's weight update; returns (w_adv, w_nat) and keeps them in ctx.state."""
    p, s = ctx.params, ctx.state
    s.setdefault("mtard/init_adv", loss_adv)
    s.setdefault("mtard/init_nat", loss_nat)
    r_adv = (loss_adv / max(s["mtard/init_adv"], 1e-12)) ** p.power
    r_nat = (loss_nat / max(s["mtard/init_nat"], 1e-12)) ** p.power
    w_nat = s.get("mtard/w_nat", 0.5)
    w_nat = w_nat - current_rate(ctx) * (w_nat - r_nat / max(r_adv + r_nat, 1e-12))
    s["mtard/w_nat"] = float(w_nat)
    return 1.0 - w_nat, w_nat


def mtard_loss(ctx: Context, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    p = ctx.params
    if ctx.natural_teacher is None:
        raise ValueError("mtard needs ctx.natural_teacher, a naturally trained teacher")
    x_adv = adversarial(ctx, x, y, attack=p.attack, start=p.start, student_mode=p.student_mode)
    with torch.no_grad():
        zt_adv = ctx.teacher(x_adv)
        zt_nat = ctx.natural_teacher(x)
    kw = dict(temperature=p.temperature, log_eps=p.log_eps)
    kl_adv = p.scale * kl(ctx.student(x_adv), zt_adv, p.kl_reduction, **kw)
    kl_nat = p.scale * kl(ctx.student(x), zt_nat, p.kl_reduction, **kw)
    w_adv, w_nat = update_weights(ctx, kl_adv.item(), kl_nat.item())
    return {"kl_adv": w_adv * kl_adv, "kl_clean": w_nat * kl_nat}
