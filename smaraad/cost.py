"""What one training step costs: FLOPs per image, counted on the method's real loss.

`step_flops` runs one real training step of a method (its inner attack, its outer loss forward
and the backward) under torch's FlopCounterMode on a random batch of the data set's shape and
returns the FLOPs per image. Decisions, each a keyword:
- `mode="fake"`: the models and the batch are FakeTensors (shapes, no arithmetic), so a
  ResNet-18 <- WRN-34-10 step (~3e11 FLOP per image) is counted in seconds on a laptop. The
  count equals a real CPU step's exactly (tests/test_plan.py). A method that reads a value
  during its step (MTARD's adaptive weights call .item()) cannot run on fake tensors; it is
  counted on real CPU tensors with a batch of one instead (`mode="cpu"` forces that for all).
- `extrapolate=True`: every attack step runs the same passes, so the count is exact as
  F(0 steps) + steps * (F(1 step) - F(0 steps)); this costs two short steps instead of one with
  the whole attack. False counts the whole attack.
- Only matrix products and convolutions are counted (FlopCounterMode's registry): norms,
  activations and elementwise updates are memory-bound and a few percent of the total.
- `epoch`: IAD's introspection term is on only late in the run; the default counts the last
  epoch's step (the dearer one).
- A method's own networks (`MethodSpec.aux`) are built and trained in the step: PeerAiD's peer
  is counted; LAS-AT's strategy network is counted on the steps that run it, its policy update
  (one in `interval` = 20 steps, the first step's count here) is not.
FlopCounterMode's per-module breakdown registers backward hooks that torch.autograd.grad (every
attack's input gradient) rejects ("A leaf node was passed to _will_engine_execute_node"), so the
counter here keeps only the total.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
import time
from typing import Any, Mapping

import torch
from torch.utils.flop_counter import FlopCounterMode

from smaraad.attacks import from_255
from smaraad.methods import METHODS, Context
from smaraad.models import build_model


class _Total:
    """Stands in for FlopCounterMode's module tracker: every op counts toward one total."""
    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class TotalFlops(FlopCounterMode):
    """FlopCounterMode without the per-module hooks (see the module docstring)."""

    def __init__(self):
        super().__init__(display=False)
        self.mod_tracker = _Total()


def _fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode
    return FakeTensorMode()


def _data_dependent(exc: Exception) -> bool:
    from torch._subclasses.fake_tensor import DataDependentOutputException
    return isinstance(exc, DataDependentOutputException)


def make_context(method: str, student: str, teacher: str | None, *, num_classes: int,
                 params: Mapping[str, Any] | None = None, steps: int = 10,
                 eps_255: float = 8.0, step_255: float = 2.0, epoch: int | None = None,
                 epochs: int = 200, natural_teacher: str | None = None,
                 channels: int = 3) -> Context:
    """A method's Context with freshly built models (the current device / fake mode applies):
    the student in train mode, the teachers frozen in eval mode."""
    spec = METHODS[method]
    s = build_model(student, num_classes=num_classes, channels=channels).train()

    def frozen(arch: str):
        return build_model(arch, num_classes=num_classes,
                           channels=channels).eval().requires_grad_(False)

    t = frozen(teacher) if spec.needs_teacher and teacher else None
    n = frozen(natural_teacher or teacher) if spec.needs_natural_teacher else None
    aux = {}
    if spec.aux:  # the method's own networks (PeerAiD's peer, LAS-AT's strategy net), trained too
        from smaraad.config import TrainConfig

        cfg = TrainConfig.from_flat({"method": method, "student": student, "epochs": epochs,
                                     **dict(params or {})})
        aux = spec.aux(cfg, SimpleNamespace(num_classes=num_classes, mean=(0.0,) * channels,
                                            std=(1.0,) * channels, center=False))
        for net in aux.values():
            net.module.train()
    opt = torch.optim.SGD(s.parameters(), lr=0.1, momentum=0.9)
    return Context(student=s, teacher=t, params=spec.make_params(dict(params or {})),
                   eps=from_255(eps_255), step=from_255(step_255), steps=steps,
                   epoch=epochs - 1 if epoch is None else epoch, epochs=epochs,
                   natural_teacher=n, aux=aux, student_optimizer=opt)


def train_step(method: str, ctx: Context, x, y, opt=None) -> None:
    """One training step as the trainer takes it: the loss's terms summed, backward, update."""
    terms = METHODS[method].loss(ctx, x, y)
    loss = torch.stack(list(terms.values())).sum()
    if opt is not None:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    if opt is not None:
        opt.step()


def _count(method, student, teacher, *, num_classes, image_size, batch, fake, **kw) -> float:
    torch.manual_seed(0)
    with _fake_mode() if fake else contextlib.nullcontext():
        ctx = make_context(method, student, teacher, num_classes=num_classes, **kw)
        x = torch.rand(batch, kw.get("channels", 3), image_size, image_size)
        y = torch.randint(0, num_classes, (batch,))
        with TotalFlops() as counter:
            train_step(method, ctx, x, y)
    return counter.get_total_flops() / batch


def step_flops(method: str, student: str, teacher: str | None, *, num_classes: int,
               image_size: int = 32, steps: int = 10, mode: str = "fake", batch: int = 2,
               extrapolate: bool = True, **kw) -> float:
    """FLOPs per image of one training step of `method` (see the module docstring).

    kw: params (the method's hyperparameters), eps_255, step_255, epoch, epochs,
    natural_teacher (MTARD's second teacher; default: the teacher's architecture), channels
    (the images', default 3)."""
    if mode not in ("fake", "cpu"):
        raise ValueError(f"mode {mode!r}; allowed: fake, cpu")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")

    def count(k: int) -> float:
        args = dict(num_classes=num_classes, image_size=image_size, steps=k, **kw)
        if mode == "fake":
            try:
                return _count(method, student, teacher, batch=batch, fake=True, **args)
            except Exception as exc:  # noqa: BLE001 -- only a value read falls back
                if not _data_dependent(exc):
                    raise
        return _count(method, student, teacher, batch=1, fake=False, **args)

    if not extrapolate or steps <= 1:
        return count(steps)
    f0, f1 = count(0), count(1)
    return f0 + steps * (f1 - f0)


def forward_flops(arch: str, *, num_classes: int, image_size: int = 32,
                  channels: int = 3) -> float:
    """FLOPs of one eval-mode forward pass per image (on fake tensors)."""
    with _fake_mode():
        model = build_model(arch, num_classes=num_classes, channels=channels).eval()
        x = torch.rand(1, channels, image_size, image_size)
        with TotalFlops() as counter, torch.no_grad():
            model(x)
    return float(counter.get_total_flops())


def cpu_step_seconds(method: str, student: str, teacher: str | None, *, num_classes: int,
                     image_size: int = 32, batch: int = 2, **kw) -> float:
    """Wall seconds of one real fp32 training step (attack, loss, backward, SGD update) on this
    CPU with `batch` images: the one measured figure of a plan (no warm-up step: the first step
    of a run is what a user waits for)."""
    torch.manual_seed(0)
    ctx = make_context(method, student, teacher, num_classes=num_classes, **kw)
    opt = torch.optim.SGD(ctx.student.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, kw.get("channels", 3), image_size, image_size)
    y = torch.randint(0, num_classes, (batch,))
    start = time.perf_counter()
    train_step(method, ctx, x, y, opt)
    return time.perf_counter() - start
