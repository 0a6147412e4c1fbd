"""Sanity flags for a robustness evaluation: orderings that must hold unless the evaluation is wrong.

A stronger attack cannot leave more images correct than a weaker one on the same images: clean >=
FGSM >= PGD-20 >= AutoAttack, clean >= CW_inf >= AutoAttack (each metric's `at_most` in
smaraad/metrics.py's registry), and a transfer (black-box) attack cannot beat the white-box attack
of the same kind (the registry's `blackbox` metrics). Accuracy that rises with more PGD steps, or AA
above PGD-20, is the classic sign of gradient masking (Athalye et al., ICML 2018; Carlini et al.,
"On Evaluating Adversarial Robustness", 2019; Croce & Hein, 2020).

The attacks are random, so each comparison allows for noise: two binomial standard errors of the
mean of the two accuracies, sqrt(p (1 - p) / n), plus one image (1 / n). The images are the same
for both attacks, so this is loose on purpose: a flag means something is off, not that a small
difference is real.

Every flag is a string in the result's `flags` and a `SanityWarning`.
"""

from __future__ import annotations

import math
import warnings

from smaraad import metrics


class SanityWarning(UserWarning):
    """An evaluation result that contradicts an ordering every correct evaluation obeys."""


def tolerance(p: float, n: int, *, z: float = 2.0) -> float:
    """z binomial standard errors of an accuracy p measured on n images, plus one image."""
    n = max(1, n)
    return z * math.sqrt(max(0.0, p * (1.0 - p)) / n) + 1.0 / n


def above(acc: float, bound: float, n: int) -> bool:
    """Whether `acc` exceeds `bound` by more than the noise of n images (p = their mean)."""
    return acc - bound > tolerance((acc + bound) / 2.0, n)


def sanity_flags(result: dict, *, prefix: str = "test/") -> list[str]:
    """Flags for the accuracies in an `evaluate_suite` result (missing keys are skipped).

    Reads `{prefix}<attack>_acc` and `n`; `blackbox/<attack>_acc`; `masking/pgd20_acc`,
    `masking/pgd50_acc` and `masking/n` (PGD-20 against PGD-50 on the same subset); and, when
    AutoAttack ran on a subset, `aa/n` and `aa/<attack>_acc`, against which AA is compared.
    """
    n = int(result.get("n", 0))
    acc = {name[len(prefix):-len("_acc")]: v for name, v in result.items()
           if name.startswith(prefix) and name.endswith("_acc")}
    flags = []
    aa_n = int(result.get("aa/n", 0))
    for weak, strong in metrics.orderings():
        if weak not in acc or strong not in acc:
            continue
        k, bound = n, acc[weak]
        if "aa" in (weak, strong) and aa_n:  # AA ran on a subset: compare on that subset only
            if f"aa/{weak}_acc" not in result:
                continue
            k, bound = aa_n, result[f"aa/{weak}_acc"]
        if above(acc[strong], bound, k):
            flags.append(f"{strong} accuracy {acc[strong]:.4f} is above {weak} accuracy "
                         f"{bound:.4f} (n={k}): the stronger attack failed where the weaker "
                         "succeeded; suspect gradient masking or a broken attack")
    for name in metrics.blackbox_names():
        box = result.get(metrics.REGISTRY[name].key("blackbox/"))
        if box is not None and name in acc and above(acc[name], box, n):
            flags.append(f"black-box {name} accuracy {box:.4f} is below white-box {acc[name]:.4f} "
                         f"(n={n}): transfer examples beat the model's own gradients; suspect "
                         "gradient masking")
    m = int(result.get("masking/n", 0))
    if m and above(result["masking/pgd50_acc"], result["masking/pgd20_acc"], m):
        flags.append(f"accuracy rises with more PGD steps: PGD-50 {result['masking/pgd50_acc']:.4f}"
                     f" > PGD-20 {result['masking/pgd20_acc']:.4f} on the same {m} images; "
                     "suspect gradient masking")
    return flags


def warn(flags: list[str]) -> None:
    """Emit each flag as a SanityWarning (the command line prints them in its table instead)."""
    for flag in flags:
        warnings.warn(flag, SanityWarning, stacklevel=3)
