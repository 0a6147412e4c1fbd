"""What a training method is: hyperparameters, and one loss that returns named terms.

A method (mdistiller's shape) is a frozen params dataclass with its paper's defaults and one
function `loss(ctx, x, y) -> {"term": scalar}` that runs its own inner maximisation and returns its
outer loss as named, already-weighted, batch-averaged terms. The trainer sums the terms and logs
each one, so an ablation shows every component's curve with no special code. Adding a method is one
module and one line in the registry (smaraad/methods/__init__.py).

Auxiliary networks. A method may own trainable networks besides the student (PeerAiD's peer,
LAS-AT's strategy network): `MethodSpec.aux(cfg, data)` builds them, each an `AuxNet` (module,
optimiser, per-epoch schedule), and the loss reaches them as `ctx.aux[name]`. The trainer builds
them after the student, moves them to the device, puts them in train mode each epoch, steps their
schedules once per epoch, saves them in every state and restores them on resume; evaluation and
the saved checkpoint see only the student. Their losses are terms named "<aux>/<term>" and are
stepped in one of two ways, chosen per network by `AuxNet.trainer_steps`:
- True (PeerAiD): the terms carry gradient; the trainer sums ALL terms into one backward (so a
  gradient one network's loss sends into another flows as in the joint objective) and steps the
  student's and the auxiliary optimisers after it;
- False (LAS-AT's policy, updated every k steps before the student's attack): the method steps
  the optimiser itself inside loss() and returns its loss detached, for logging only.
Either way `train/loss` is the student's terms only; an auxiliary term is logged as
`train/<aux>/loss_<term>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from smaraad.fields import build


@dataclass
class Context:
    """What a method's loss may use besides the batch."""
    student: nn.Module
    teacher: nn.Module | None   # frozen (no parameter gradients) and in eval mode
    params: Any                 # the method's params dataclass instance
    eps: float                  # L_inf budget, [0, 1] units
    step: float                 # attack step, [0, 1] units
    steps: int                  # attack steps
    epoch: int = 0              # 0-based epoch being trained
    epochs: int = 1
    state: dict = field(default_factory=dict)  # per-run scratch space (e.g. adaptive weights)
    natural_teacher: nn.Module | None = None  # a second, naturally trained teacher (MTARD)
    aux: dict = field(default_factory=dict)   # name -> AuxNet, the method's own networks
    student_optimizer: Any = None  # read-only: for a method that imitates a student step (LAS-AT)


@dataclass
class AuxNet:
    """A trainable network a method owns: its module, optimiser and per-epoch lr schedule."""
    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any = None        # an lr scheduler stepped once per epoch by the trainer, or None
    trainer_steps: bool = True   # False: the method steps `optimizer` itself inside loss()


def aux_term(name: str, term: str) -> str:
    """The key of an auxiliary network's term: "<aux>/<term>"."""
    return f"{name}/{term}"


def is_aux_term(key: str) -> bool:
    return "/" in key


PAPER_LR_MILESTONES = (115 / 200, 160 / 200, 185 / 200)  # lr /10 points, fractions of the run


def epoch_points(fractions, epochs: int) -> list[int]:
    """Fractions of a run as epoch indices, round(f * epochs), 0 dropped, repeats kept: points
    that land on the same epoch of a short run each still count (MultiStepLR counts repeats)."""
    return sorted(m for m in (round(f * epochs) for f in fractions) if m > 0)


def sgd_schedule(module: nn.Module, *, lr: float, momentum: float, weight_decay: float,
                 milestones, epochs: int, decay: float = 0.1):
    """SGD with a per-epoch step schedule: lr x `decay` at each fraction of the run in
    `milestones` (the student's optimiser, and an auxiliary network's built like it)."""
    opt = torch.optim.SGD(module.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, epoch_points(milestones, epochs), gamma=decay)
    return opt, sched

Loss = Callable[[Context, Tensor, Tensor], dict[str, Tensor]]
AuxFactory = Callable[[Any, Any], dict]  # (TrainConfig, data with num_classes/mean/std/center)


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its params class, its loss, whether it needs a teacher, and the
    factory of the networks it trains besides the student (`aux`, see the module docstring).

    `defaults` overrides the params class's defaults, so that an ablation variant is a named
    setting of a shared loss (e.g. `kd` = SmaraAD's machinery with a KL outer term, no alignment).
    `dataset_defaults` maps a data set to the params its reference code changes there (RSLAD's
    CIFAR-100 script multiplies its loss by 10): `preset_config` lays them over `defaults` and
    under the user's values, so the switch stays and the default follows the data set.
    """
    params: type
    loss: Loss
    needs_teacher: bool = True
    needs_natural_teacher: bool = False
    defaults: Mapping[str, Any] = field(default_factory=dict)
    dataset_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    doc: str = ""
    aux: AuxFactory | None = None  # builds the method's own networks (name -> AuxNet)

    def make_params(self, values: Mapping[str, Any]):
        return build(self.params, {**self.defaults, **values})


def batch_mean(per_sample: Mapping[str, Tensor], weight: Tensor | float = 1.0,
               prefix: str = "") -> dict[str, Tensor]:
    """Weight per-sample terms (B,) and average them over the batch: named scalar terms."""
    return {prefix + k: (weight * v).mean() for k, v in per_sample.items()}
