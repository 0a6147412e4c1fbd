"""L_inf attacks as plain functions on images in [0, 1].

`perturb` is the one projected-gradient loop every attack and every training method uses: it
maximises any per-batch loss of the perturbed input with signed steps, keeps the point inside the
eps-ball and [0, 1], and takes input gradients with `torch.autograd.grad` (never `.backward()`, so
no parameter gradient is accumulated or computed for a frozen teacher). Threat-model arguments are
keyword-only and in [0, 1] units; configs store eps as a count of 1/255 (`eps_255: 8`) and convert
with `from_255`.

Evaluation attacks (FGSM, PGD-k, CW_inf) put the model in eval mode and restore the caller's mode in
`finally` (torchattacks' convention).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from smaraad.losses import at_least_fp32

STARTS = ("uniform", "normal", "none")


def from_255(value: float) -> float:
    """Convert a budget in 1/255 units (8 -> 8/255) to [0, 1] units: the one place this happens."""
    return float(value) / 255.0


@contextmanager
def model_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Put `model` in train or eval mode for the block; restore each submodule's mode after."""
    saved = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for m, mode in saved:
            m.training = mode


def random_start(x: Tensor, eps: float, start: str) -> Tensor:
    """The attack's first point: uniform in the eps-ball (Madry), x + 0.001 N(0, 1) (TRADES,
    RSLAD) or x itself; clipped to [0, 1]."""
    if start == "uniform":
        x0 = x + torch.empty_like(x).uniform_(-eps, eps)
    elif start == "normal":
        x0 = x + 0.001 * torch.randn_like(x)
    elif start == "none":
        x0 = x.clone()
    else:
        raise ValueError(f"unknown start {start!r}; allowed: {', '.join(STARTS)}")
    return x0.clamp_(0.0, 1.0)


def perturb(loss_fn: Callable[[Tensor], Tensor], x: Tensor, *, eps: float, step: float,
            steps: int, start: str = "uniform") -> Tensor:
    """Projected signed-gradient ascent on `loss_fn(x_adv)` (a scalar, summed over the batch).

    Returns a detached x_adv with ||x_adv - x||_inf <= eps and values in [0, 1]. With steps = 0 it
    returns the start point (x itself for start="none").
    """
    x = x.detach()
    lo, hi = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
    x_adv = torch.min(torch.max(random_start(x, eps, start), lo), hi)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = loss_fn(x_adv)
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = torch.min(torch.max(x_adv + step * grad.sign(), lo), hi)
    return x_adv.detach()


# ---------------------------------------------------------------------------------------------
# Evaluation attacks: eval mode, caller's mode restored
# ---------------------------------------------------------------------------------------------


def ce_loss(model: nn.Module, y: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda xa: F.cross_entropy(at_least_fp32(model(xa)), y, reduction="sum")


def cw_loss(model: nn.Module, y: Tensor, kappa: float = 0.0) -> Callable[[Tensor], Tensor]:
    """The CW margin max_{j != y} z_j - z_y, capped above at kappa, summed over the batch.

    Carlini & Wagner (2017) minimise f = max(z_y - max_{j != y} z_j, -kappa); this is -f. The cap
    stops the push once an image is misclassified with confidence kappa, while a correctly
    classified image always has a gradient (a floor at -kappa would zero exactly those).
    """
    def loss(xa: Tensor) -> Tensor:
        z = at_least_fp32(model(xa))
        z_y = z.gather(1, y[:, None]).squeeze(1)
        z_other = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).amax(dim=1)
        return (z_other - z_y).clamp(max=kappa).sum()
    return loss


def fgsm(model: nn.Module, x: Tensor, y: Tensor, *, eps: float = 8 / 255) -> Tensor:
    """FGSM (Goodfellow et al., 2015): one signed step of size eps on CE, no random start."""
    with model_mode(model, False):
        return perturb(ce_loss(model, y), x, eps=eps, step=eps, steps=1, start="none")


def pgd(model: nn.Module, x: Tensor, y: Tensor, *, eps: float = 8 / 255, step: float = 2 / 255,
        steps: int = 20, start: str = "uniform", restarts: int = 1) -> Tensor:
    """PGD-k on CE (Madry et al., 2018): uniform random start, step 2/255, eps 8/255.

    restarts > 1 runs further random starts on the images not yet misclassified and keeps, per
    image, the first example that fools the model: the worst case over restarts (Madry et al.'s
    evaluation protocol), so accuracy can only fall as restarts grow.
    """
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    with model_mode(model, False):
        x_adv = perturb(ce_loss(model, y), x, eps=eps, step=step, steps=steps, start=start)
        for _ in range(restarts - 1):
            with torch.no_grad():
                left = (model(x_adv).argmax(dim=1) == y).nonzero().squeeze(1)
            if left.numel() == 0:
                break
            x_adv[left] = perturb(ce_loss(model, y[left]), x[left], eps=eps, step=step,
                                  steps=steps, start=start)
        return x_adv


def cw_inf(model: nn.Module, x: Tensor, y: Tensor, *, eps: float = 8 / 255,
           step: float = 2 / 255, steps: int = 20, kappa: float = 0.0) -> Tensor:
    """CW_inf: PGD-k on the Carlini-Wagner margin loss (the AD papers' convention: k = 20)."""
    with model_mode(model, False):
        return perturb(cw_loss(model, y, kappa), x, eps=eps, step=step, steps=steps)
