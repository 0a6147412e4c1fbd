"""The one training loop: any registered method, any model, laptop CPU or GPU.

`fit(cfg, teacher=..., report=...)` trains and returns (model, last metrics). After every epoch it
calls `report(metrics, state)`: metrics are `epoch`, `lr`, `train/loss`, `train/loss_<term>` per named
term, `val/clean_acc`, `val/pgd_acc` (fractions, on the validation split held out of the training
set), `time/epoch_s` and `time/train_s` (the run's seconds so far, validation included); state is
everything needed to continue the same run (weights, optimiser, schedule, RNG, epoch, the method's
state and its auxiliary networks with their optimisers and schedules), made of
tensors and plain types so that `torch.load(weights_only=True)` reads it back. Passing that
state as `resume=` continues the run as if it had never stopped (bit for bit on the CPU; on
CUDA only with cfg.deterministic, see `cuda_kernels`). The state holds the live tensors
(no copy per epoch): save it inside the callback.

A method's auxiliary networks (smaraad/methods/base.py, `AuxNet`) are trained here but never
evaluated or returned: an auxiliary term "<aux>/<term>" is logged as `train/<aux>/loss_<term>`
and is not part of `train/loss`.

The state also holds the best-on-validation weights so far (`BestState`, under "best"): with
robust overfitting the last epoch is not the most robust one, so callers keep both.

This module never imports Ray or MLflow: trainables/ adapts `report` to them.
"""

from __future__ import annotations

import math
import os
import time
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from smaraad.attacks import from_255, pgd
from smaraad.config import ConfigError, TrainConfig
from smaraad.data import BatchLoader, Splits, load_data
from smaraad.evaluation import accuracy
from smaraad.methods import METHODS, Context
from smaraad.methods.base import AuxNet, epoch_points, is_aux_term, sgd_schedule
from smaraad.models import build_model, fold_batchnorm

Report = Callable[[dict, dict], None]
VAL_STEP_OF_EPS = 0.25  # validation PGD's step: the evaluation's convention, eps/4 (2/255 at
#                         8/255; 0.025 at Fashion-MNIST's 0.1, where 10 steps of 2/255 could not
#                         even reach the budget's edge)


class DivergedError(RuntimeError):
    """The loss became NaN or infinite: the run cannot continue."""


@dataclass
class BestState:
    """The weights of the epoch with the highest validation `metric` (MAIR's `save_best` rule
    on one metric), kept beside the last ones.

    Ties go to the later epoch (`>=`, decision): under a decaying learning rate the later of two
    equally robust weights is the more converged, and a flat validation curve then gives best =
    last, so the two differ only where the metric really fell (robust overfitting). The weights
    are a copy on the model's device; `state_dict` / `load_state_dict` make it part of fit's
    resumable state, so a resumed run keeps the best of its earlier epochs.
    """
    metric: str = "val/pgd_acc"
    epoch: int = 0                  # 0 = no epoch validated yet
    score: float = -math.inf
    model: dict = field(default_factory=dict)

    def offer(self, epoch: int, metrics: dict, model: nn.Module) -> bool:
        """Keep `model`'s weights if this epoch's metric ties or beats the best; True if kept."""
        score = metrics[self.metric]
        if score < self.score:
            return False
        self.epoch, self.score = epoch, float(score)
        self.model = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return True

    def record(self) -> dict:
        """What a checkpoint and metrics.json say of it: epoch, metric and score."""
        return {"epoch": self.epoch, "metric": self.metric, "score": self.score}

    def model_like(self, model: nn.Module) -> nn.Module | None:
        """A copy of `model` holding the best weights, in eval mode (None before any epoch)."""
        if not self.epoch:
            return None
        copy = deepcopy(model)
        copy.load_state_dict(self.model)
        return copy.eval()

    def state_dict(self) -> dict:
        return {"metric": self.metric, "epoch": self.epoch, "score": self.score,
                "model": self.model}

    def load_state_dict(self, saved: dict) -> None:
        if saved["metric"] != self.metric:
            raise ConfigError(f"resume: the state kept its best weights by {saved['metric']}, "
                              f"this run by {self.metric}")
        self.epoch, self.score, self.model = saved["epoch"], saved["score"], dict(saved["model"])


def resolve_device(name: str) -> torch.device:
    """The device `name` means for a plain command, which may use every GPU it can see."""
    return placed_device(name, None, visible_gpus())


def visible_gpus() -> int:
    """CUDA devices this process can see (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def placed_device(name: str, gpu_ids: Sequence[str] | None, cuda_count: int) -> torch.device:
    """The device a run trains on: what cfg.device asks for (`name`) within what the run holds.

    `gpu_ids`: the GPU ids a scheduler gave the run (Ray: `get_accelerator_ids()["GPU"]`), or
    None for a plain command (it holds every visible GPU); `cuda_count`: torch's device count.
    Ray points CUDA_VISIBLE_DEVICES at a task's own GPUs, but leaves it alone when the task holds
    none (ray/_private/utils.py, set_visible_accelerator_ids), so a trial without a GPU still
    sees the node's GPUs: it must train on the CPU, not on an unreserved cuda:0. "auto" is cuda:0
    when the run holds a GPU, else the CPU; cuda:N must be one of the devices it holds."""
    held = cuda_count if gpu_ids is None else min(len(gpu_ids), cuda_count)
    allowed = ", ".join(["auto", "cpu", *(["cuda"] if held else []),
                         *(f"cuda:{i}" for i in range(held))])
    if name == "auto":
        return torch.device("cuda:0" if held else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: {name!r} is not a device; allowed: {allowed}") from None
    if device.type != "cuda":
        return device
    index = device.index or 0
    if index >= held:
        where = ("the trial holds no GPU (--gpus-per-trial)" if gpu_ids is not None and not held
                 else "CUDA is not available" if not held else f"the run sees {held} GPU(s)")
        raise ConfigError(f"device: {name!r} asked for but {where}; allowed: {allowed}")
    return torch.device("cuda", index)


def cuda_kernels(deterministic: bool, device: torch.device) -> None:
    """cfg.deterministic on a CUDA device. On: cuDNN and cuBLAS run deterministic algorithms
    only (torch.use_deterministic_algorithms; cuBLAS needs CUBLAS_WORKSPACE_CONFIG, set here
    unless the user set it), so a rerun, or a run resumed from its state, repeats bit for bit; an
    operation without a deterministic CUDA kernel raises instead of running. Off (the default):
    cudnn.benchmark picks the fastest convolution kernels for the fixed batch shape, and atomic
    adds in backward passes (scatter, index_add, bilinear resizing) make the last bits vary
    between runs: a resumed CUDA run is close to, not equal to, one that never stopped. The CPU
    kernels are deterministic either way."""
    if device.type != "cuda":
        return
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware: a CUDA GPU of compute capability 8.0 or later
    (Ampere on; older GPUs emulate it), or a CPU with AMX or AVX512-BF16 (elsewhere bf16 autocast
    is emulated and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu, 2.1+
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def training_precision(cfg: TrainConfig) -> str:
    """What a run of `cfg` trains in, "bf16" (autocast) or "fp32": cfg.precision with auto
    resolved on its device (bf16 where `native_bf16`). The losses compute soft ranks, softmaxes
    and CAM norms in fp32 regardless."""
    if cfg.precision == "auto":
        return "bf16" if native_bf16(resolve_device(cfg.device)) else "fp32"
    return cfg.precision


def milestones(cfg: TrainConfig) -> list[int]:
    """The paper's /10 points (115, 160, 185 of 200) scaled to cfg.epochs, as epoch indices
    (repeats kept: [2, 2] gives lr/100 from epoch 2)."""
    return epoch_points(cfg.lr_milestones, cfg.epochs)


def load_splits(cfg: TrainConfig, download: bool = False) -> Splits:
    """The run's train / validation / test splits; `download` fetches a missing data set's files
    into cfg.data_root with torchvision's downloader (md5-checked) first."""
    val_size = int(cfg.val_size) if cfg.val_size >= 1 else cfg.val_size  # a count or a fraction
    return load_data(cfg.dataset, root=cfg.data_root or None, val_size=val_size,
                     seed=cfg.split_seed, n_train=cfg.train_size or None, download=download)


def prepare_teacher(teacher: nn.Module, device: torch.device, num_classes: int,
                    memory: torch.memory_format | None = None) -> nn.Module:
    """A frozen eval-mode copy on `device` (in `memory` format, if given) with its BatchNorms
    folded into its convs (the same function, faster): the attack differentiates through it,
    never into its weights."""
    if getattr(teacher, "num_classes", num_classes) != num_classes:
        raise ConfigError(f"teacher: it has {teacher.num_classes} classes, the data set "
                          f"{num_classes}")
    folded = fold_batchnorm(teacher.to(device))
    return folded.to(memory_format=memory) if memory else folded


def validate(model: nn.Module, data: Splits, cfg: TrainConfig, device: torch.device) -> dict:
    eps = from_255(cfg.eps_255)
    step = eps * VAL_STEP_OF_EPS
    attack = lambda m, x, y: pgd(m, x, y, eps=eps, step=step, steps=cfg.val_pgd_steps)  # noqa: E731
    kw = dict(batch_size=max(cfg.batch_size, 256), device=device, limit=cfg.val_max)
    return {"val/clean_acc": accuracy(model, data.val, **kw),
            "val/pgd_acc": accuracy(model, data.val, attack=attack, **kw)}


def fit(cfg: TrainConfig, *, teacher: nn.Module | None = None, data: Splits | None = None,
        report: Report | None = None, resume: dict | None = None,
        log: Callable[[str], None] | None = print,
        natural_teacher: nn.Module | None = None,
        best: BestState | None = None) -> tuple[nn.Module, dict]:
    """Train `cfg`; return the last epoch's model (eval mode) and metrics. `best`, if given,
    receives the best-on-validation weights (a resumed run restores it from `resume`)."""
    spec = METHODS[cfg.method]
    if spec.needs_teacher and teacher is None:
        raise ConfigError(f"method {cfg.method!r} distils from a teacher, and none was given")
    if spec.needs_natural_teacher and natural_teacher is None:
        raise ConfigError(f"method {cfg.method!r} also needs a naturally trained teacher")
    device = resolve_device(cfg.device)
    cuda_kernels(cfg.deterministic, device)
    data = data if data is not None else load_splits(cfg)
    amp = training_precision(cfg) == "bf16"
    memory = torch.channels_last if cfg.channels_last else None

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.student, num_classes=data.num_classes, channels=data.channels,
                        mean=data.mean, std=data.std, center=data.center).to(device, memory_format=memory or torch.preserve_format)
    if teacher is not None and spec.needs_teacher:
        teacher = prepare_teacher(teacher, device, data.num_classes, memory)
    if natural_teacher is not None and spec.needs_natural_teacher:
        natural_teacher = prepare_teacher(natural_teacher, device, data.num_classes, memory)
    opt, sched = sgd_schedule(model, lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay, milestones=cfg.lr_milestones,
                              epochs=cfg.epochs, decay=cfg.lr_decay)
    aux: dict[str, AuxNet] = spec.aux(cfg, data) if spec.aux else {}
    for net in aux.values():  # .to() keeps the Parameter objects the optimiser holds
        net.module.to(device, memory_format=memory or torch.preserve_format)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = BatchLoader(data.train, cfg.batch_size, shuffle=True, augment=True, generator=gen,
                         device=device)
    start, metrics = 0, {}
    best = best if best is not None else BestState()
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        gen.set_state(resume["rng"]["loader"])
        torch.set_rng_state(resume["rng"]["torch"])
        if device.type == "cuda" and "cuda" in resume["rng"]:
            torch.cuda.set_rng_state_all(resume["rng"]["cuda"])
        start, metrics = resume["epoch"], dict(resume.get("metrics", {}))
        restore_aux(aux, resume.get("aux", {}))
        if "best" in resume:  # a state written before the best weights were kept has none
            best.load_state_dict(resume["best"])

    ctx = Context(student=model, teacher=teacher if spec.needs_teacher else None,
                  params=cfg.params, eps=from_255(cfg.eps_255), step=from_255(cfg.step_255),
                  steps=cfg.attack_steps, epochs=cfg.epochs,
                  natural_teacher=natural_teacher if spec.needs_natural_teacher else None,
                  state=dict(resume.get("method_state", {})) if resume else {},
                  aux=aux, student_optimizer=opt)
    stepped = [opt, *(net.optimizer for net in aux.values() if net.trainer_steps)]
    finite = FiniteWatch()
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        ctx.epoch = epoch
        lr = opt.param_groups[0]["lr"]
        sums: dict[str, torch.Tensor] = {}
        seen = 0
        for m in (model, *(net.module for net in aux.values())):
            m.train()
        for x, y in loader:
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                terms = spec.loss(ctx, x, y)
            total = torch.stack(list(terms.values())).sum()  # student's and auxiliary terms
            finite.step(total, terms, epoch)
            for o in stepped:
                o.zero_grad(set_to_none=True)
            total.backward()
            for o in stepped:
                o.step()
            n = y.shape[0]
            loss = sum(v.detach() for k, v in terms.items() if not is_aux_term(k))
            for k, v in (("train/loss", loss), *((term_metric(k), v) for k, v in terms.items())):
                sums[k] = sums.get(k, 0.0) + v.detach() * n
            seen += n
        finite.check()
        for scheduler in (sched, *(net.scheduler for net in aux.values() if net.scheduler)):
            scheduler.step()
        trained = metrics.get("time/train_s", 0.0)  # earlier epochs', a resumed run's included
        metrics = {"epoch": epoch + 1, "lr": lr,
                   **{k: (v / seen).item() for k, v in sums.items()},
                   **validate(model, data, cfg, device),
                   "time/epoch_s": time.perf_counter() - t0}
        metrics["time/train_s"] = trained + metrics["time/epoch_s"]
        best.offer(epoch + 1, metrics, model)
        state = {"epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                 "scheduler": sched.state_dict(), "metrics": metrics, "config": cfg.to_flat(),
                 "method_state": ctx.state, "aux": aux_state(aux), "best": best.state_dict(),
                 "rng": {"torch": torch.get_rng_state(), "loader": gen.get_state(),
                         **({"cuda": torch.cuda.get_rng_state_all()} if device.type == "cuda" else {})}}
        if log:
            log(progress_line(metrics, cfg.epochs))
        if report:
            report(metrics, state)
    model.eval()
    return model, metrics


class FiniteWatch:
    """Whether every step's loss was finite, kept on the device and read every `every` steps and
    at the end of each epoch: a check per step (`if not torch.isfinite(total)`) would make the
    host wait for the GPU at every step. The terms of the first non-finite step are kept on the
    device too, so the DivergedError still names its epoch, its step and each term's value; the
    steps between it and the check are wasted, not harmful (the run stops there)."""

    def __init__(self, every: int = 50):
        self.every, self.pending = every, 0
        self.epoch, self.index = -1, 0
        self.names: tuple = ()
        self.bad = self.first = None

    def step(self, total: torch.Tensor, terms: dict, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.index = epoch, 0
        self.index += 1
        if tuple(terms) != self.names:  # the first step, or a method whose terms vary
            self.check()
            self.names = tuple(terms)
            self.bad = torch.zeros((), dtype=torch.bool, device=total.device)
            self.first = torch.zeros(len(terms) + 3, dtype=torch.float64, device=total.device)
        where = [torch.full((1,), float(v), dtype=torch.float64, device=total.device)
                 for v in (epoch + 1, self.index)]  # a fill, not a copy from the host
        values = torch.stack([t.detach().to(torch.float64) for t in (total, *terms.values())])
        new = ~torch.isfinite(total.detach()) & ~self.bad
        self.first = torch.where(new, torch.cat([values, *where]), self.first)
        self.bad = self.bad | new
        self.pending += 1
        if self.pending >= self.every:
            self.check()

    def check(self) -> None:
        """Raise DivergedError if a step so far had a non-finite loss (one host sync)."""
        self.pending = 0
        if self.bad is not None and bool(self.bad):
            total, *values, epoch, index = self.first.tolist()
            raise DivergedError(f"loss is {total} at epoch {int(epoch)}, step {int(index)} "
                                f"({', '.join(f'{k}={v:.4g}' for k, v in zip(self.names, values))})")


def term_metric(key: str) -> str:
    """The metric of a loss term: train/loss_<term>, or train/<aux>/loss_<term> for an auxiliary
    network's term "<aux>/<term>"."""
    if is_aux_term(key):
        name, term = key.split("/", 1)
        return f"train/{name}/loss_{term}"
    return f"train/loss_{key}"


def aux_state(aux: dict[str, AuxNet]) -> dict:
    """Each auxiliary network's weights, optimiser and schedule (tensors and plain types)."""
    return {name: {"model": net.module.state_dict(), "optimizer": net.optimizer.state_dict(),
                   **({"scheduler": net.scheduler.state_dict()} if net.scheduler else {})}
            for name, net in aux.items()}


def restore_aux(aux: dict[str, AuxNet], saved: dict) -> None:
    if set(saved) != set(aux):
        raise ConfigError(f"resume: the state holds auxiliary networks {sorted(saved)}, the "
                          f"method has {sorted(aux)}")
    for name, net in aux.items():
        net.module.load_state_dict(saved[name]["model"])
        net.optimizer.load_state_dict(saved[name]["optimizer"])
        if net.scheduler:
            net.scheduler.load_state_dict(saved[name]["scheduler"])


def progress_line(m: dict, epochs: int) -> str:
    terms = " ".join(f"{k[len('train/'):].replace('loss_', '')}={v:.3f}" for k, v in m.items()
                     if k.startswith("train/") and "loss_" in k)
    return (f"epoch {m['epoch']:>3}/{epochs}  lr {m['lr']:.4g}  loss {m['train/loss']:.4f} "
            f"({terms})  val clean {m['val/clean_acc']:.3f}  val pgd {m['val/pgd_acc']:.3f}  "
            f"{m['time/epoch_s']:.1f}s")
