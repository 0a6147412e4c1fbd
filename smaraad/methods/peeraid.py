"""PeerAiD: "Improving Adversarial Distillation from a Specialized Peer Tutor" (Jung et al., CVPR
2024).

Reference: github.com/jaewonalive/PeerAiD, main.py (`train_kd`), attack_function.py
(`LinfPeerAttack`), training_scripts/{resnet18,wideresnet34x10}_cifar{10,100}.sh and
configs/PeerAiD_*.json. No pretrained
teacher: a peer network P is trained alongside the student S, on the student's adversarial
examples, and the student distils from it. Per step (one backward of the sum, then both steps):
- Attack, on the STUDENT: maximise KL(S(x'), P(x)) summed over the batch, the target being the
  peer's clean prediction (peer in eval mode, no gradient), from x + 0.001 N(0, 1), the student in
  eval mode; the run's eps, step and steps (the reference's 8/255, 2/255, 10).
- Peer loss: gamma1 CE(P(x'), y) + gamma2 tau_p^2 KL(P(x')/tau_p, S(x')/tau_p), i.e. the
  peer's log-softmax against the student's softmax (`nn.KLDivLoss()`: mean over all B x C
  elements, "mean"); gamma1 = 1, tau_p = 1 (`--re_kd_temperature`), gamma2 = 0.1 on CIFAR-10
  and 1 on CIFAR-100 (the scripts' `--gamma2`). The student's
  S(x') inside it is NOT detached in the reference, so this term moves the student too
  (`detach_student`); it is its own student forward (a second BN-statistics update on x').
- Student loss: lamb1 CE(S(x'), y) + lamb2 tau^2 KL(S(x')/tau, P(x')/tau) + lamb3 tau^2
  KL(S(x')/tau, S(x)/tau), "mean" reduction, tau = 5, lamb = (0, 1, 1) (the training script;
  argparse defaults differ: tau 6, lamb 1, 1, 1). P(x') is detached; S(x) in the last term is
  not (`detach_clean`).
- The peer's optimiser: SGD with the student's momentum, weight decay and lr schedule (the
  reference's configs give both networks lr 0.1, weight decay 2e-4 and the same decay epochs);
  `peer_lr` = 0 takes the run's lr. Its architecture is the student's (both configs) unless
  `peer_arch` names one.
Not reproduced: the scripts' `--swa_s` (weight averaging of the student from the first lr decay)
is a recipe choice any method could take, not PeerAiD's loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from smaraad.attacks import model_mode, perturb
from smaraad.fields import choice, num
from smaraad.losses import kl_div
from smaraad.methods.base import AuxNet, Context, aux_term, sgd_schedule
from smaraad.methods.common import ce, kl, mode_field, reduction_field, start_field
from smaraad.models import MODELS, build_model

SOURCE = "PeerAiD main.py"
PEER = "peer"


@dataclass(frozen=True)
class PeerAiDParams:
    temperature: float = num(5.0, 0, None, lo_open=True, doc="student's KL temperature tau "
                             "(training script: 5)")
    lamb1: float = num(0.0, 0, None, doc="weight of the student's CE on x' (script: 0)")
    lamb2: float = num(1.0, 0, None, doc="weight of tau^2 KL(S(x'), P(x')) (script: 1)")
    lamb3: float = num(1.0, 0, None, doc="weight of tau^2 KL(S(x'), S(x)) (script: 1)")
    gamma1: float = num(1.0, 0, None, doc="weight of the peer's CE(P(x'), y) (script: 1)")
    gamma2: float = num(0.1, 0, None, doc="weight of the peer's tau_p^2 KL(P(x'), S(x')) "
                                          "(scripts: 0.1 CIFAR-10, 1 CIFAR-100)")
    peer_temperature: float = num(1.0, 0, None, lo_open=True,
                                  doc="the peer's KL temperature tau_p (`--re_kd_temperature` 1)")
    peer_arch: str = choice("student", lambda: ("student", *MODELS),
                            "peer architecture; student = the run's (reference: the same)")
    peer_lr: float = num(0.0, 0, None, doc="peer's initial lr; 0 = the run's lr (reference: "
                                           "both 0.1)")
    detach_student: bool = choice(False, (True, False), "detach S(x') in the peer's KL "
                                  "(reference: not detached, the term also moves the student)")
    detach_clean: bool = choice(False, (True, False), "detach S(x) in KL(S(x'), S(x)) "
                                "(reference: not detached)")
    start: str = start_field("normal", SOURCE + " LinfPeerAttack")
    student_mode: str = mode_field("eval", SOURCE + " LinfPeerAttack")
    kl_reduction: str = reduction_field("mean", SOURCE + ": nn.KLDivLoss()")


def make_peer(cfg, data) -> dict[str, AuxNet]:
    """The peer, built like the student and optimised with the student's recipe."""
    p = cfg.params
    arch = cfg.student if p.peer_arch == "student" else p.peer_arch
    peer = build_model(arch, num_classes=data.num_classes, channels=len(data.mean),
                       mean=data.mean, std=data.std, center=data.center)
    opt, sched = sgd_schedule(peer, lr=p.peer_lr or cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay, milestones=cfg.lr_milestones,
                              epochs=cfg.epochs, decay=cfg.lr_decay)
    return {PEER: AuxNet(peer, opt, sched)}


def peeraid_loss(ctx: Context, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    p, student = ctx.params, ctx.student
    peer = ctx.aux[PEER].module
    with torch.no_grad(), model_mode(peer, False):
        zp_clean = peer(x)
    with model_mode(student, p.student_mode == "train"):
        x_adv = perturb(lambda xa: kl_div(student(xa), zp_clean).sum(), x, eps=ctx.eps,
                        step=ctx.step, steps=ctx.steps, start=p.start)
    zp_adv = peer(x_adv)
    zs_target = student(x_adv)  # the reference's separate forward for the peer's target
    tp, t = p.peer_temperature, p.temperature
    peer_kl = kl(zp_adv, zs_target.detach() if p.detach_student else zs_target, p.kl_reduction,
                 temperature=tp)
    terms = {aux_term(PEER, "ce_adv"): p.gamma1 * ce(zp_adv, y),
             aux_term(PEER, "kl_student"): p.gamma2 * tp * tp * peer_kl}
    zs_adv, zs_clean = student(x_adv), student(x)
    if p.lamb1 > 0:
        terms["ce_adv"] = p.lamb1 * ce(zs_adv, y)
    terms["kl_peer"] = p.lamb2 * t * t * kl(zs_adv, zp_adv.detach(), p.kl_reduction, temperature=t)
    terms["kl_self"] = p.lamb3 * t * t * kl(
        zs_adv, zs_clean.detach() if p.detach_clean else zs_clean, p.kl_reduction, temperature=t)
    return terms
