"""Pieces the baseline methods share: the attack objectives, the attack call and a named KL.

The AD repositories differ in a few small ways that change results: what the inner maximisation
maximises, where it starts, whether the student's batch-norm runs in train or eval mode during it,
and how KL is reduced ("batchmean": sum over classes, mean over the batch, i.e. torch's
reduction="batchmean" or `KLDivLoss(size_average=False) / B`; "mean": mean over all B x C
elements, i.e. `nn.KLDivLoss()`'s default, which is batchmean / C). Each method names its choice
as a params field built with the helpers below, whose default is its reference code's value.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from smaraad.attacks import STARTS, ce_loss, model_mode, perturb
from smaraad.fields import choice
from smaraad.losses import at_least_fp32, kl_div
from smaraad.methods.base import Context

# ---------------------------------------------------------------------------------------------
# Params fields: one spelling of each switch, with the reference's value as the default
# ---------------------------------------------------------------------------------------------

KL_REDUCTIONS = ("batchmean", "mean")
ATTACKS = ("ce", "kl_clean", "kl_moving")


def attack_field(default: str, source: str, options=ATTACKS):
    """What the inner maximisation maximises: "ce" = CE(S(x'), y) (Madry, ARD);
    "kl_clean" = KL(S(x'), T(x)), the teacher on the clean input (RSLAD); "kl_moving" =
    KL(S(x'), T(x')), the teacher on the moving point (AdaAD): ATTACKS, the teacher-based
    choices. "kl_self" = KL(S(x'), S(x)) with the student's own clean prediction needs no teacher
    and is offered only where a method passes it in `options` (TRADES)."""
    return choice(default, options, f"attack objective ({source})")


def start_field(default: str, source: str):
    return choice(default, STARTS, f"attack start: uniform in the ball, x + 0.001 N(0, 1) or x "
                                   f"({source})")


def mode_field(default: str, source: str):
    return choice(default, ("eval", "train"), f"student's mode during the attack ({source})")


def reduction_field(default: str, source: str):
    return choice(default, KL_REDUCTIONS, f"KL reduction: batchmean (sum over classes / B) or "
                                          f"mean (over all B x C elements) ({source})")


# ---------------------------------------------------------------------------------------------
# KL with a named reduction
# ---------------------------------------------------------------------------------------------


def kl(student_logits: Tensor, teacher_logits: Tensor, reduction: str, *,
       temperature: float = 1.0, weight: Tensor | None = None, log_eps: float = 0.0) -> Tensor:
    """KL(P_T || P_S) at a temperature, reduced to a scalar by `reduction` (see KL_REDUCTIONS).

    `weight` (B,) scales each sample before the reduction (IAD's 1 - A). The tau^2 factor that
    some methods apply is the caller's. `log_eps` > 0 computes sum P_T (log(P_T + log_eps) -
    log P_S), the spelling of RSLAD's and MTARD's `kl_loss` (1e-5): it adds a teacher-only amount,
    at most log_eps per element, to the value (no gradient change), which matters where the
    value itself is used (MTARD's weights).
    """
    if log_eps > 0:
        log_ps = F.log_softmax(at_least_fp32(student_logits) / temperature, dim=1)
        pt = F.softmax(at_least_fp32(teacher_logits) / temperature, dim=1)
        per_sample = (pt * ((pt + log_eps).log() - log_ps)).sum(dim=1)
    else:
        per_sample = kl_div(student_logits, teacher_logits, temperature=temperature)
    if weight is not None:
        per_sample = per_sample * weight
    if reduction == "batchmean":
        return per_sample.mean()
    if reduction == "mean":
        return per_sample.mean() / student_logits.shape[1]
    raise ValueError(f"unknown KL reduction {reduction!r}; allowed: {', '.join(KL_REDUCTIONS)}")


# ---------------------------------------------------------------------------------------------
# The inner maximisation
# ---------------------------------------------------------------------------------------------


def attack_objective(name: str, ctx: Context, x: Tensor, y: Tensor) -> Callable[[Tensor], Tensor]:
    """The loss of x' that the attack maximises, summed over the batch (see `attack_field`).

    Fixed targets (T(x), S(x)) are computed once, without gradient, in the modes the models are
    in when this is called (inside `adversarial`, so the student's attack mode applies).
    """
    student = ctx.student
    if name == "ce":
        return ce_loss(student, y)
    if name == "kl_moving":
        return lambda xa: kl_div(student(xa), ctx.teacher(xa)).sum()
    if name in ("kl_clean", "kl_self"):
        with torch.no_grad():
            target = (ctx.teacher if name == "kl_clean" else student)(x)
        return lambda xa: kl_div(student(xa), target).sum()
    raise ValueError(f"unknown attack objective {name!r}; allowed: {', '.join(ATTACKS)}, kl_self")


def adversarial(ctx: Context, x: Tensor, y: Tensor, *, attack: str, start: str,
                student_mode: str) -> Tensor:
    """x' from ctx's threat model (eps, step, steps) with the method's attack switches; the
    caller's train/eval mode is restored afterwards."""
    with model_mode(ctx.student, student_mode == "train"):
        objective = attack_objective(attack, ctx, x, y)
        return perturb(objective, x, eps=ctx.eps, step=ctx.step, steps=ctx.steps, start=start)


def ce(logits: Tensor, y: Tensor) -> Tensor:
    """Batch-mean cross-entropy in fp32 (float64 stays float64)."""
    return F.cross_entropy(at_least_fp32(logits), y)
