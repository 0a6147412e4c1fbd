"""SmaraAD (Eq. 8-9), SmaraAD++ (Eq. 10) and the ablation variants of Figure 4.

Decisions where the paper is silent (each one a switch in the params below):
- Eq. 6: the CAM is formed from the weights of the TRUE class y for both models (`cam_class`:
  "label"); "teacher" uses the teacher's predicted class for both, "own" each model's own argmax.
  Maps are ReLU'd and min-max normalised per image before Eq. 7 (`cam_relu`, `cam_norm`).
- Eq. 8: the attack maximises KL(S(x'), T(x')) + L_align(x') with the teacher on the moving point
  (it is differentiated through, parameters frozen); the student is in eval mode during the attack
  (`student_mode`), so batch-norm statistics see only the outer minimisation's inputs. The paper
  does not say where the attack starts: `attack_start` "uniform" (in the eps-ball, Madry's PGD
  start, the default) or "normal" (x + 0.001 N(0, 1), the start of AdaAD's attack, which Eq. 8
  extends with L_align).
- Eq. 9: terms whose weight is zero are not computed (alpha = 1, the paper's value, drops the clean
  terms). c is a constant: it shifts the loss and changes no gradient; it is logged as `const`.
- Ablation (Figure 4): the four variants keep Eq. 8's attack and change only the outer loss, so
  the comparison isolates slack matching and alignment in the outer loss (`attack_align`).
- Eq. 10: P_T(x'|y) and w come from the teacher on x' (`entropy_from`), and carry no gradient (the
  teacher is frozen and x' is detached). The self-learning term rho(S(x)||S(x')) becomes the loss
  1 - rho (`self_loss`: "one_minus_rho"; "neg_rho" gives -rho). Both differ by a per-sample constant
  times a weight that does not depend on the student, so they give the same gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from smaraad.attacks import model_mode, perturb
from smaraad.fields import choice, num
from smaraad.losses import (CAM_CLASSES, CAM_NORMS, align_maps, at_least_fp32, cam, cam_classes,
                            entropy_weight, kl_div, slack_matching)
from smaraad.methods.base import Context, batch_mean


@dataclass(frozen=True)
class SmaraADParams:
    alpha: float = num(1.0, 0, 1, doc="Eq. 9: weight of the adversarial terms (clean: 1 - alpha)")
    gamma: float = num(1000.0, 0, None, lo_open=True, doc="Eq. 4: soft-rank sharpness")
    c: float = num(2.0, 1, None, doc="Eq. 9: constant added to the loss, >= 1")
    outer: str = choice("sm", ("sm", "kl"), "outer matching term: L_sm (Eq. 5) or KL (ablation)")
    align: bool = choice(True, (True, False), "outer loss includes L_align (Eq. 7)")
    attack_align: bool = choice(True, (True, False), "Eq. 8's attack includes L_align")
    rho_form: str = choice("eq2", ("eq2", "pearson"), "rho from soft ranks: Eq. 2 or Pearson")
    cam_class: str = choice("label", CAM_CLASSES, "class whose weights form CAMs")
    cam_norm: str = choice("minmax", CAM_NORMS, "per-image CAM normalisation before Eq. 7")
    cam_relu: bool = choice(True, (True, False), "rectify CAMs before normalising")
    cam_size: int = num(0, 0, None, doc="G's common size (0 = the larger of the two maps)")
    student_mode: str = choice("eval", ("eval", "train"), "student's mode during the attack")
    attack_start: str = choice("uniform", ("uniform", "normal"), "Eq. 8's start: uniform in the "
                               "eps-ball, or x + 0.001 N(0, 1) (AdaAD's)")


@dataclass(frozen=True)
class SmaraADPPParams(SmaraADParams):
    lam: float = num(0.1, 0, 1, lo_open=True, doc="Eq. 10: exponent lambda on P_T(x'|y)")
    entropy_from: str = choice("teacher_adv", ("teacher_adv", "teacher_clean"),
                               "Eq. 10: whose prediction gives the entropy weight w")
    self_loss: str = choice("one_minus_rho", ("one_minus_rho", "neg_rho"),
                            "Eq. 10: self-learning term as a loss")


# ---------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------


def _align(p: SmaraADParams, ctx: Context, y, zs, fs, zt, ft) -> Tensor:
    """L_align per sample (Eq. 6-7) between the student's and the teacher's CAMs."""
    cs, ct = cam_classes(p.cam_class, y, zs, zt)
    kw = dict(relu=p.cam_relu, norm=p.cam_norm)
    return align_maps(cam(fs, ctx.student.fc.weight, cs, **kw),
                      cam(ft, ctx.teacher.fc.weight, ct, **kw), p.cam_size)


def inner_max(ctx: Context, x: Tensor, y: Tensor) -> Tensor:
    """Eq. 8: x' = argmax_{||x' - x||_inf <= eps} KL(S(x'), T(x')) + L_align(x')."""
    p = ctx.params

    def loss(xa: Tensor) -> Tensor:
        zs, fs = ctx.student.forward_features(xa)
        zt, ft = ctx.teacher.forward_features(xa)
        total = kl_div(zs, zt)
        if p.attack_align:
            total = total + _align(p, ctx, y, zs, fs, zt, ft)
        return total.sum()

    with model_mode(ctx.student, p.student_mode == "train"):
        return perturb(loss, x, eps=ctx.eps, step=ctx.step, steps=ctx.steps, start=p.attack_start)


def distill_terms(ctx: Context, x: Tensor, y: Tensor, x_adv: Tensor,
                  outputs: dict) -> dict[str, Tensor]:
    """Eq. 9's terms per sample, already weighted by alpha: {const, sm_adv, align_adv, ...}.

    `outputs` caches each input's (student logits, teacher logits) for Eq. 10.
    """
    p = ctx.params
    terms = {"const": torch.full((x.shape[0],), p.c, device=x.device, dtype=x.dtype)}
    for name, inp, w in (("adv", x_adv, p.alpha), ("clean", x, 1.0 - p.alpha)):
        if w == 0:
            continue
        zs, fs = ctx.student.forward_features(inp)
        with torch.no_grad():
            zt, ft = ctx.teacher.forward_features(inp)
        outputs[name] = (zs, zt)
        if p.outer == "sm":
            terms[f"sm_{name}"] = w * slack_matching(zs, zt, p.gamma, form=p.rho_form)
        else:
            terms[f"kl_{name}"] = w * kl_div(zs, zt)
        if p.align:
            terms[f"align_{name}"] = w * _align(p, ctx, y, zs, fs, zt, ft)
    return terms


# ---------------------------------------------------------------------------------------------
# The outer losses
# ---------------------------------------------------------------------------------------------


def smaraad_loss(ctx: Context, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """SmaraAD (Eq. 9): c + (1-alpha)(L_sm(x) + L_align(x)) + alpha(L_sm(x') + L_align(x'))."""
    x_adv = inner_max(ctx, x, y)
    return batch_mean(distill_terms(ctx, x, y, x_adv, {}))


def smaraad_pp_loss(ctx: Context, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """SmaraAD++ (Eq. 10): per-sample teacher guidance vs student self-learning.

    guidance weight  g = P_T(x'|y)^lambda * w,   w = clamp(1 - H(P_T(x'))/log C, 0, 1)
    self weight      s = 1 - P_T(x'|y)^lambda
    loss = mean_i  g_i * L_sm&align_i  +  s_i * (self_i + CE(S(x_i), y_i))
    Terms are reported as guide_<Eq. 9 term>, self_rho and self_ce.
    """
    p = ctx.params
    x_adv = inner_max(ctx, x, y)
    outputs: dict = {}
    per_sample = distill_terms(ctx, x, y, x_adv, outputs)
    if "adv" in outputs:
        zs_adv, zt_adv = outputs["adv"]
    else:  # alpha = 0: the adversarial outputs are still needed for the weights and rho
        zs_adv = ctx.student(x_adv)
        with torch.no_grad():
            zt_adv = ctx.teacher(x_adv)
    zs_clean = outputs["clean"][0] if "clean" in outputs else ctx.student(x)

    with torch.no_grad():
        p_true = F.softmax(at_least_fp32(zt_adv), dim=1).gather(1, y[:, None]).squeeze(1)
        confidence = p_true.pow(p.lam)
        if p.entropy_from == "teacher_adv":
            w = entropy_weight(zt_adv)
        else:
            w = entropy_weight(ctx.teacher(x))
    rho = -slack_matching(zs_clean, zs_adv, p.gamma, form=p.rho_form)
    self_terms = {"rho": (1.0 - rho) if p.self_loss == "one_minus_rho" else -rho,
                  "ce": F.cross_entropy(at_least_fp32(zs_clean), y, reduction="none")}
    return {**batch_mean(per_sample, confidence * w, prefix="guide_"),
            **batch_mean(self_terms, 1.0 - confidence, prefix="self_")}
