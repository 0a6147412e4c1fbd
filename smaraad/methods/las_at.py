"""LAS-AT: "Adversarial Training with Learnable Attack Strategy" (Jia et al., CVPR 2022). No teacher.

Reference: github.com/jiaxiaojunQAQ/LAS-AT, LAS_PGD_AT/LAS_AT_train_cifar10.py and
LAS_AT_train_cifar100.py (`select_action`, `Attack_policy_batch`, `Get_reward`, `train`) and
LAS_PGD_AT/StrategyNet.py. A strategy network looks at each clean image and chooses its attack:
eps, steps and step size from the lists of `action_space` (its own budgets, as TRADES's attack is
TRADES's; evaluation keeps the run's threat model). The default lists are the authors' README
training commands (README.md lines 12 and 14: eps 3..15/255, step 1..5/255, steps 3..14 on
CIFAR-10, 3..12 on CIFAR-100), which the authors ran; the scripts' argparse defaults (eps 3..14,
step 1..4, steps 3..13 / 3..11) are the `argparse_*` spaces. Per training step:
- Every `interval` (20) steps, first the policy update (REINFORCE): the strategy network, in
  train mode, samples an action per image from its categorical heads; the student (eval mode)
  is attacked with those settings; the reward, one number for the batch, is
      R = a clamp(CE(S(x'), y), 0, 10) + b clamp(r2 acc(S'(x_pgd)), -10, 10)
          + c clamp(r3 acc(S'(x)), -10, 10),          a = b = c = 1, r2 = 4, r3 = 2,
  where S' is a copy of the student trained one SGD step (the student's current lr, momentum and
  weight decay, fresh momentum) on the label-smoothed CE of x', and x_pgd is PGD-10 (8/255,
  2/255, 2 restarts) on S', attacked in train mode as in the reference, then S' in eval mode.
  Policy loss: -R * sum over heads of mean log pi(action); SGD at 1e-4 (CIFAR-10 script: no
  momentum, `SGD_without_momentum`; CIFAR-100 script: momentum 0.9, weight decay 5e-4,
  `SGD_with_momentum`), gradient norm clipped to 1. The reference steps its policy scheduler per
  policy update with milestones counted in target steps, which are never reached: its policy lr
  is constant (`policy_lr_at` empty).
- Then the student step: the strategy network in eval mode samples the actions (sampled, not the
  most likely), the student is attacked with them in eval mode (start uniform in the 8/255 ball,
  whatever eps was chosen; per image its own step count, step and eps ball; CE), and trained on
  the label-smoothed CE of x' (`factor` on the true class: 0.7 in the CIFAR-10 script, 0.6 in
  the CIFAR-100 one; the rest shared by the other classes).
The reference's fourth head (attack type) has one option (I-FGSM), so its log-probability is 0:
omitted. The strategy network is the student's architecture with one linear layer for the three
heads (three linear heads on the same features); the reference's is a ResNet-18, the same for the
paper's ResNet-18 student (`strategy_arch`). Not reproduced: the reward's PGD freezes an image
once it is misclassified and keeps the restart of largest CE; here an image counts as robust only
if no restart fools S' (the worst case over restarts).
The policy's state (step counter, last reward and policy loss) is in ctx.state (`las_at/...`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Categorical

from smaraad.attacks import ce_loss, model_mode, perturb
from smaraad.fields import ConfigError, choice, num
from smaraad.losses import at_least_fp32
from smaraad.methods.base import AuxNet, Context, aux_term, epoch_points
from smaraad.models import MODELS, build_model

STRATEGY = "strategy"

# The strategy's lists, (eps in 1/255, steps, step size in 1/255), inclusive ranges:
ACTION_SPACES = {
    # README.md:12 and :14, the training commands the authors give for LAS-PGD-AT
    "readme_cifar10": (range(3, 16), range(3, 15), range(1, 6)),
    "readme_cifar100": (range(3, 16), range(3, 13), range(1, 6)),
    # LAS_PGD_AT/LAS_AT_train_cifar10.py:39-41 and _cifar100.py:39-41, the argparse defaults
    "argparse_cifar10": (range(3, 15), range(3, 14), range(1, 5)),
    "argparse_cifar100": (range(3, 15), range(3, 12), range(1, 5)),
}


@dataclass(frozen=True)
class LASATParams:
    action_space: str = choice("readme_cifar10", tuple(ACTION_SPACES), "the eps, steps and step "
                               "size lists a strategy chooses from: the README's training "
                               "command or the script's argparse defaults, per data set")
    eps_choices_255: tuple = field(default=(), metadata=dict(
        doc="the eps a strategy may choose, 1/255 units; empty = the action space's"))
    steps_choices: tuple = field(default=(), metadata=dict(
        doc="the attack steps it may choose; empty = the action space's"))
    step_choices_255: tuple = field(default=(), metadata=dict(
        doc="the step sizes it may choose, 1/255 units; empty = the action space's"))
    start_eps_255: float = num(8.0, 0, 255, doc="radius of the uniform start (reference: 8/255)")
    factor: float = num(0.7, 0, 1, doc="label smoothing: target probability of the true class "
                                       "(`--factor`: 0.7 CIFAR-10 script, 0.6 CIFAR-100)")
    interval: int = num(20, 1, None, doc="student steps per policy update (`--interval_num`)")
    policy_lr: float = num(1e-4, 0, None, lo_open=True, doc="policy SGD lr (`--policy_model_lr`)")
    policy_momentum: float = num(0.0, 0, 1, hi_open=True, doc="policy SGD momentum (CIFAR-10 "
                                 "script: 0, `SGD_without_momentum`; CIFAR-100 script: 0.9)")
    policy_weight_decay: float = num(0.0, 0, None, doc="policy SGD weight decay (CIFAR-10 "
                                     "script: 0; CIFAR-100 script: 5e-4)")
    policy_lr_at: tuple = field(default=(), metadata=dict(
        doc="fractions of the run where the policy lr is divided by 10 (reference: in effect "
            "never)"))
    clip_grad_norm: float = num(1.0, 0, None, doc="policy gradient norm cap (0 = none)")
    a: float = num(1.0, doc="reward weight of R1, the attacked student's CE")
    b: float = num(1.0, doc="reward weight of R2, the stepped copy's PGD accuracy")
    c: float = num(1.0, doc="reward weight of R3, the stepped copy's clean accuracy")
    r2_scale: float = num(4.0, doc="R2 = r2_scale x accuracy (`--R2_param` 4)")
    r3_scale: float = num(2.0, doc="R3 = r3_scale x accuracy (`--R3_param` 2)")
    reward_eps_255: float = num(8.0, 0, 255, doc="reward PGD eps (reference: 8/255)")
    reward_step_255: float = num(2.0, 0, 255, doc="reward PGD step (reference: 2/255)")
    reward_steps: int = num(10, 0, None, doc="reward PGD steps (reference: 10)")
    reward_restarts: int = num(2, 1, None, doc="reward PGD restarts (reference: 2)")
    reward_attack_mode: str = choice("train", ("eval", "train"), "the copy's mode while it is "
                                     "attacked for the reward (reference: train)")
    strategy_arch: str = choice("student", lambda: ("student", *MODELS),
                                "strategy network; student = the run's (reference: ResNet-18)")

    def choices(self) -> tuple[tuple, tuple, tuple]:
        """(eps in 1/255, steps, step size in 1/255): each list set here, else the action
        space's."""
        space = ACTION_SPACES[self.action_space]
        return tuple(own or tuple(map(float, default)) for own, default in
                     zip((self.eps_choices_255, self.steps_choices, self.step_choices_255), space))

    def __post_init__(self):
        if any(s != int(s) or s < 0 for s in self.choices()[1]):
            raise ConfigError(f"steps_choices: {list(self.steps_choices)}; allowed: whole numbers "
                              ">= 0")


def heads(p: LASATParams) -> tuple[int, int, int]:
    return tuple(len(c) for c in p.choices())


def make_strategy(cfg, data) -> dict[str, AuxNet]:
    p = cfg.params
    arch = cfg.student if p.strategy_arch == "student" else p.strategy_arch
    net = build_model(arch, num_classes=sum(heads(p)), channels=len(data.mean), mean=data.mean,
                      std=data.std, center=data.center)
    opt = torch.optim.SGD(net.parameters(), lr=p.policy_lr, momentum=p.policy_momentum,
                          weight_decay=p.policy_weight_decay)
    points = epoch_points(p.policy_lr_at, cfg.epochs)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, points) if points else None  # constant
    return {STRATEGY: AuxNet(net, opt, sched, trainer_steps=False)}


def sample_actions(ctx: Context, x: Tensor) -> tuple[list[Categorical], list[Tensor]]:
    """One categorical per head (eps, steps, step size) and an index sampled from each, (B,)."""
    logits = at_least_fp32(ctx.aux[STRATEGY].module(x)).split(heads(ctx.params), dim=1)
    dists = [Categorical(logits=z) for z in logits]
    return dists, [d.sample() for d in dists]


def budgets(p: LASATParams, actions: list[Tensor], dtype=torch.float32
            ) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image eps and step ([0, 1] units, (B, 1, 1, 1), `dtype`) and step count (B,)."""
    dev = actions[0].device
    eps, steps, step = (torch.tensor(v, device=dev, dtype=dtype)[a] for v, a in
                        zip(p.choices(), actions))
    return (eps / 255).view(-1, 1, 1, 1), (step / 255).view(-1, 1, 1, 1), steps.long()


def policy_attack(model, x: Tensor, y: Tensor, eps: Tensor, step: Tensor, steps: Tensor,
                  start_eps: float) -> Tensor:
    """`Attack_policy_batch`: signed CE ascent, each image with its own eps ball, step size and
    number of steps (an image stops moving after its steps); clipped to [0, 1]. The loop runs to
    the batch's largest step count, read from the device (the one wait for the GPU per call):
    running every call to the largest allowed count instead would cost more passes whenever the
    strategy prefers short attacks."""
    x = x.detach()
    delta = ((x + torch.empty_like(x).uniform_(-start_eps, start_eps)).clamp(0, 1) - x)
    for t in range(int(steps.max().item()) if steps.numel() else 0):
        delta.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(at_least_fp32(model(x + delta)), y, reduction="sum"),
                                   delta)
        active = (steps > t).to(x.dtype).view(-1, 1, 1, 1)
        with torch.no_grad():
            delta = torch.max(torch.min(delta + active * step * g.sign(), eps), -eps)
            delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


def smoothed_ce(logits: Tensor, y: Tensor, factor: float) -> Tensor:
    """CE against `factor` on the true class and (1 - factor) / (C - 1) on each other class."""
    c = logits.shape[1]
    logp = F.log_softmax(at_least_fp32(logits), dim=1)
    one_hot = F.one_hot(y, c).to(logp.dtype)
    target = one_hot * factor + (1 - one_hot) * (1 - factor) / (c - 1)
    return -(target * logp).sum(dim=1).mean()


def reward(ctx: Context, x: Tensor, y: Tensor, x_adv: Tensor) -> float:
    """`Get_reward`: the attacked student's CE and a one-step-trained copy's robust and clean
    accuracy, each scaled and clamped."""
    p, student = ctx.params, ctx.student
    with torch.no_grad(), model_mode(student, False):
        r1 = F.cross_entropy(at_least_fp32(student(x_adv)), y).clamp(0, 10).item()
    if ctx.student_optimizer is None:
        raise ValueError("las_at needs ctx.student_optimizer: its reward imitates a student step")
    group = ctx.student_optimizer.param_groups[0]
    twin = copy.deepcopy(student).train()
    opt = torch.optim.SGD(twin.parameters(), lr=group["lr"], momentum=group["momentum"],
                          weight_decay=group["weight_decay"])
    opt.zero_grad(set_to_none=True)
    smoothed_ce(twin(x_adv), y, p.factor).backward()
    opt.step()
    robust = torch.ones_like(y, dtype=torch.bool)
    for _ in range(p.reward_restarts):
        with model_mode(twin, p.reward_attack_mode == "train"):
            x_pgd = perturb(ce_loss(twin, y), x, eps=p.reward_eps_255 / 255,
                            step=p.reward_step_255 / 255, steps=p.reward_steps)
        with torch.no_grad(), model_mode(twin, False):
            robust &= twin(x_pgd).argmax(dim=1) == y
    with torch.no_grad(), model_mode(twin, False):
        clean = (twin(x).argmax(dim=1) == y).float().mean().item()
    r2 = min(max(p.r2_scale * robust.float().mean().item(), -10.0), 10.0)
    r3 = min(max(p.r3_scale * clean, -10.0), 10.0)
    return p.a * r1 + p.b * r2 + p.c * r3


def policy_update(ctx: Context, x: Tensor, y: Tensor) -> None:
    p, net = ctx.params, ctx.aux[STRATEGY]
    with model_mode(net.module, True):
        dists, actions = sample_actions(ctx, x)
    with model_mode(ctx.student, False):
        x_adv = policy_attack(ctx.student, x, y, *budgets(p, actions, x.dtype),
                              p.start_eps_255 / 255)
    r = reward(ctx, x, y, x_adv)
    loss = -r * sum(d.log_prob(a).mean() for d, a in zip(dists, actions))
    net.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if p.clip_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(net.module.parameters(), p.clip_grad_norm)
    net.optimizer.step()
    ctx.state["las_at/reward"], ctx.state["las_at/policy_loss"] = float(r), float(loss.item())


def las_at_loss(ctx: Context, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    p, s = ctx.params, ctx.state
    s["las_at/step"] = int(s.get("las_at/step", 0)) + 1
    if s["las_at/step"] % p.interval == 0:
        policy_update(ctx, x, y)  # before the student's attack, as in the reference
    with torch.no_grad(), model_mode(ctx.aux[STRATEGY].module, False):
        _, actions = sample_actions(ctx, x)
    eps, step, steps = budgets(p, actions, x.dtype)
    with model_mode(ctx.student, False):
        x_adv = policy_attack(ctx.student, x, y, eps, step, steps, p.start_eps_255 / 255)
    # logged terms, made on the device: a fill and two means, no wait for the GPU (.item())
    fill = lambda v: torch.full((), float(v), device=x.device, dtype=x.dtype)  # noqa: E731
    return {"ce_adv_ls": smoothed_ce(ctx.student(x_adv), y, p.factor),
            aux_term(STRATEGY, "reward"): fill(s.get("las_at/reward", 0.0)),
            aux_term(STRATEGY, "policy_loss"): fill(s.get("las_at/policy_loss", 0.0)),
            aux_term(STRATEGY, "eps_255"): (eps.mean() * 255).detach(),
            aux_term(STRATEGY, "steps"): steps.to(x.dtype).mean()}
