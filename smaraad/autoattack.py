"""AutoAttack (Croce & Hein, ICML 2020) through pyautoattack, the packaged official attack code.

Threat model: L_inf, eps 8/255 on images in [0, 1]. Version "standard" (the number every AD paper
reports) runs APGD-CE (100 iterations), APGD-T (9 target classes x 100 iterations), FAB-T
(9 targets) and Square (5000 queries), each sub-attack only on the images still correctly
classified. Not torchattacks' AutoAttack: it runs 10 iterations instead of 100, so its numbers
are not the ones the papers report.

`autoattack(model, x, y)` has the same shape as every attack in smaraad/attacks.py, so it plugs
into `evaluation.accuracy` as an Attack. Like them it puts the model in eval mode and restores the
caller's mode; it also leaves the caller's RNG state and `requires_grad` flags as it found them
(pyautoattack reseeds torch's global RNG, and FAB calls `.backward()`, which would otherwise
accumulate parameter gradients into a model that is being trained).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from pyautoattack import AutoAttack
from torch import Tensor, nn

from smaraad.attacks import model_mode

AA_VERSIONS = ("standard", "plus", "rand")
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")  # for version="custom"
AA_LOGGER = "auto-attack"  # pyautoattack reports its checks (zero gradients, ...) here


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Parameters stop requiring grad for the block; each parameter's flag is restored after."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def check_version(version: str, attacks: Sequence[str] | None = None) -> None:
    """Raise ValueError unless (version, attacks) is a combination pyautoattack accepts."""
    if version == "custom":
        unknown = [a for a in attacks or () if a not in AA_ATTACKS]
        if not attacks or unknown:
            raise ValueError(f"AutoAttack version 'custom' needs attacks from: {', '.join(AA_ATTACKS)}"
                             f" (got {list(attacks or ())})")
    elif version not in AA_VERSIONS:
        raise ValueError(f"unknown AutoAttack version {version!r}; allowed: "
                         f"{', '.join(AA_VERSIONS)}, custom")
    elif attacks:
        raise ValueError(f"AutoAttack version {version!r} fixes its attacks; use version='custom'")


def autoattack(model: nn.Module, x: Tensor, y: Tensor, *, eps: float = 8 / 255,
               version: str = "standard", attacks: Sequence[str] | None = None, seed: int = 0,
               device: torch.device | str | None = None) -> Tensor:
    """AutoAttack L_inf examples for (x, y): x_adv within eps of x and in [0, 1], detached.

    version: "standard" (default: APGD-CE, APGD-T, FAB-T, Square-5000), "plus", "rand" (EOT, for
    randomised defences), or "custom" with `attacks` drawn from AA_ATTACKS (tests use a cheap
    subset). seed fixes every sub-attack's randomness; device defaults to x's.
    The targeted sub-attacks use min(9, C - 1) target classes, so data sets with fewer than
    10 classes run too (9 for CIFAR-10/100, as in the standard version).
    """
    check_version(version, attacks)
    device = torch.device(device) if device is not None else x.device
    with model_mode(model, False), frozen(model), torch.random.fork_rng(
            devices=[device] if device.type == "cuda" else []):
        with torch.no_grad():
            num_classes = model(x[:1].to(device)).shape[1]
        aa = AutoAttack(model, eps=eps, norm="Linf", version=version, seed=seed, device=device,
                        attacks=list(attacks) if version == "custom" else None)
        targets = min(9, num_classes - 1)
        aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, targets)
        aa.fab.n_target_classes = min(aa.fab.n_target_classes, targets)
        x_adv, _ = aa.run_standard_evaluation(x.detach().to(device), y.to(device),
                                              batch_size=max(1, len(y)))
    return x_adv.detach()


@contextmanager
def aa_warnings() -> Iterator[list[str]]:
    """Collect the warnings pyautoattack's own checks log (zero gradients, a randomised or
    dynamic defence, Square beating the gradient attacks) instead of letting them print; the
    evaluation suite turns them into sanity flags."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger(AA_LOGGER)
    handler, propagate = Collect(level=logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
