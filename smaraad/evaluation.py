"""Accuracy under attack, in batches, eval mode, no parameter gradients; the robustness suite.

`accuracy` is the one function the trainer's per-epoch validation uses to turn (model, images,
attack) into a fraction. `evaluate_suite` is the final evaluation the AD papers report: every
attack metric of smaraad/metrics.py's registry (clean, FGSM, PGD-20, CW_inf and AutoAttack
accuracy at eps 8/255; PGD and CW_inf step eps/4 for 20 steps), the CAM distance to a teacher
on the student's PGD-20 examples, black-box transfer from a source model, and sanity flags
(smaraad/sanity.py) for orderings a correct evaluation obeys.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from smaraad import metrics
from smaraad.attacks import model_mode, pgd
from smaraad.autoattack import aa_warnings, check_version
from smaraad.data.loader import unit_floats
from smaraad.errors import UserError
from smaraad.losses import CAM_CLASSES, align_maps, cam, cam_classes
from smaraad.sanity import sanity_flags, warn

Attack = Callable[[nn.Module, Tensor, Tensor], Tensor]
ATTACKS = metrics.attack_names()  # at import; code that must see a registry change calls it
MASKING_N = 256  # images for the PGD-20 vs PGD-50 check: at most 2.5x PGD-20 on 256 images


def batches(data: tuple[Tensor, Tensor], batch_size: int, device: torch.device):
    """Yield (x float in [0, 1], y) on `device` from uint8 (N, 3, H, W) images, in order."""
    images, labels = data
    for i in range(0, len(labels), batch_size):
        x = images[i:i + batch_size].to(device, non_blocking=True)
        x = unit_floats(x) if x.dtype == torch.uint8 else x.float()
        yield x, labels[i:i + batch_size].to(device, non_blocking=True)


def correct(model: nn.Module, x: Tensor, y: Tensor, attack: Attack | None = None) -> Tensor:
    """Per-image correctness (B,) bool of `model` on x, or on attack(model, x, y)."""
    with model_mode(model, False):
        if attack is not None:
            x = attack(model, x, y)
        with torch.no_grad():
            return model(x).argmax(dim=1) == y


def accuracy(model: nn.Module, data: tuple[Tensor, Tensor], *, attack: Attack | None = None,
             batch_size: int = 256, device: torch.device | str = "cpu", limit: int = 0) -> float:
    """Fraction of the first `limit` (0 = all) images classified correctly, optionally attacked."""
    if limit:
        data = (data[0][:limit], data[1][:limit])
    hits = torch.zeros((), dtype=torch.long, device=device)
    for x, y in batches(data, batch_size, torch.device(device)):
        hits += correct(model, x, y, attack).sum()
    return hits.item() / max(1, len(data[1]))


# ---------------------------------------------------------------------------------------------
# The evaluation suite
# ---------------------------------------------------------------------------------------------


def check_attacks(names: Sequence[str]) -> tuple[str, ...]:
    """The attack names, validated against the metric registry (UserError names the allowed)."""
    allowed = metrics.attack_names()
    unknown = [a for a in names if a not in allowed]
    if unknown or not names:
        raise UserError(f"unknown attack {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"allowed: {', '.join(allowed)}")
    return tuple(dict.fromkeys(names))


def attack_table(*, eps: float, seed: int, aa_version: str = "standard",
                 aa_attacks: Sequence[str] | None = None) -> dict[str, Attack | None]:
    """Each registry attack as an Attack (None: clean images), built for this eps and seed."""
    context = metrics.AttackContext(eps=eps, seed=seed, aa_version=aa_version,
                                    aa_attacks=aa_attacks)
    return {name: metrics.REGISTRY[name].attack(context) for name in metrics.attack_names()}


def masking_attack(eps: float) -> Attack:
    """PGD-50 at the suite's PGD step, for the gradient-masking check against PGD-20."""
    return lambda m, x, y: pgd(m, x, y, eps=eps, step=eps / 4, steps=50)


def sweep(model: nn.Module, data: tuple[Tensor, Tensor], attack: Attack | None, *,
          batch_size: int, device: torch.device,
          visit: Callable[[Tensor, Tensor], None] | None = None) -> Tensor:
    """Per-image correctness (N,) bool on CPU; visit(x_adv, y) sees every attacked batch."""
    out = []
    with model_mode(model, False):
        for x, y in batches(data, batch_size, device):
            xa = attack(model, x, y) if attack is not None else x
            with torch.no_grad():
                out.append((model(xa).argmax(dim=1) == y).cpu())
            if visit is not None:
                visit(xa, y)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def cam_distance(student: nn.Module, teacher: nn.Module, x: Tensor, y: Tensor, *,
                 cam_class: str = "label") -> Tensor:
    """Per-image L_align (Eq. 6-7) between the student's and the teacher's CAMs on x, (B,):
    ReLU'd, per-image min-max normalised maps, bilinearly resized to the larger map, MSE.
    cam_class picks the class whose weights form each map: the label, the teacher's prediction
    (both maps), or each model's own prediction."""
    with torch.no_grad(), model_mode(student, False), model_mode(teacher, False):
        zs, fs = student.forward_features(x)
        zt, ft = teacher.forward_features(x)
        cs, ct = cam_classes(cam_class, y, zs, zt)
        return align_maps(cam(fs, student.fc.weight, cs), cam(ft, teacher.fc.weight, ct))


def evaluate_suite(model: nn.Module, data: tuple[Tensor, Tensor], *,
                   attacks: Sequence[str] | None = None, eps: float = 8 / 255, n: int = 0,
                   batch_size: int = 256, device: torch.device | str = "cpu", seed: int = 0,
                   teacher: nn.Module | None = None, source: nn.Module | None = None,
                   cam_class: str = "label", prefix: str = "test/",
                   aa_version: str = "standard", aa_attacks: Sequence[str] | None = None,
                   aa_n: int = 0, check_masking: bool | None = None) -> dict:
    """Robust accuracy of `model` on the first n (0 = all) images of `data` (uint8 or [0, 1]).

    Returns fractions `{prefix}<attack>_acc` for each of `attacks` (default: every attack of the
    metric registry: clean, fgsm, pgd20, cw, aa);
    `{prefix}cam_dist` (mean per-image L_align on the same PGD-20 examples that give
    `{prefix}pgd20_acc`) when a teacher is given; `blackbox/pgd20_acc` and `blackbox/cw_acc`
    (examples made on `source`, evaluated on `model`) when a source is given; the PGD-20 vs
    PGD-50 check on the first MASKING_N images (`masking/*`, on by default whenever pgd20 runs:
    it costs at most 2.5x PGD-20 on 256 images); `time/<attack>_s`; `n`, `seed`, `eps` and
    `flags` (sanity flags, also emitted as SanityWarning; pyautoattack's own check warnings join
    them as "autoattack: ...").

    AutoAttack costs hundreds of PGD-20s per robust image, so `aa_n` (0 = all n) runs it on the
    first aa_n of the n images only; the result then holds `aa/n` and the accuracy of every other
    attack on that same subset (`aa/<attack>_acc`), which the sanity flags compare AA against.

    Deterministic for a fixed seed: torch's RNG is seeded before each attack (so an attack's
    result does not depend on which others ran) and the caller's RNG state is restored after.
    """
    names = check_attacks(metrics.attack_names() if attacks is None else attacks)
    if n < 0 or aa_n < 0:
        raise ValueError(f"n and aa_n must be >= 0 (0 = all images), got {n} and {aa_n}")
    if cam_class not in CAM_CLASSES:
        raise ValueError(f"unknown cam_class {cam_class!r}; allowed: {', '.join(CAM_CLASSES)}")
    if "aa" in names:
        check_version(aa_version, aa_attacks)
    device = torch.device(device)
    if n:
        data = (data[0][:n], data[1][:n])
    count = len(data[1])
    model, teacher, source = (m.to(device) if m is not None else None
                              for m in (model, teacher, source))
    table = attack_table(eps=eps, seed=seed, aa_version=aa_version, aa_attacks=aa_attacks)
    kw = dict(batch_size=batch_size, device=device)
    result: dict = {"n": count, "seed": seed, "eps": eps}
    flags: list[str] = []

    def timed(name: str, attack: Attack | None, subset=data, visit=None) -> Tensor:
        torch.manual_seed(seed)
        begin = time.perf_counter()
        hits = sweep(model, subset, attack, visit=visit, **kw)
        result[f"time/{name}_s"] = time.perf_counter() - begin
        return hits

    hits: dict[str, Tensor] = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        # cam_dist is measured on the PGD-20 examples themselves: made once, used twice
        for name in names + (("pgd20",) if teacher is not None and "pgd20" not in names else ()):
            dist: list[Tensor] = []
            visit = None
            if name == "pgd20" and teacher is not None:
                visit = lambda xa, y: dist.append(  # noqa: E731
                    cam_distance(model, teacher, xa, y, cam_class=cam_class).cpu())
            subset = (data[0][:aa_n], data[1][:aa_n]) if name == "aa" and aa_n else data
            with aa_warnings() if name == "aa" else nullcontext([]) as messages:
                hits[name] = timed(name, table[name], subset, visit=visit)
            flags += [f"autoattack: {m}" for m in dict.fromkeys(messages)]
            if name in names:
                result[f"{prefix}{name}_acc"] = _mean(hits[name])
            if visit is not None:
                cam_key = metrics.REGISTRY["cam_dist"].key(prefix)
                result[cam_key] = _mean(torch.cat(dist)) if dist else 0.0
        if "aa" in names and len(hits["aa"]) < count:
            m = len(hits["aa"])
            result["aa/n"] = m
            result.update({f"aa/{k}_acc": _mean(hits[k][:m]) for k in names if k != "aa"})
        if source is not None:  # transfer: examples made on the source, judged by the model
            for name in metrics.blackbox_names():
                transfer = lambda m, x, y, a=table[name]: a(source, x, y)  # noqa: E731
                hits_box = timed(f"blackbox_{name}", transfer)
                result[metrics.REGISTRY[name].key("blackbox/")] = _mean(hits_box)
        if (check_masking if check_masking is not None else "pgd20" in names) and count:
            m = min(MASKING_N, count)
            sub = (data[0][:m], data[1][:m])
            pgd20 = hits["pgd20"] if "pgd20" in hits else timed("pgd20", table["pgd20"], sub)
            result["masking/pgd20_acc"] = _mean(pgd20[:m])
            result["masking/pgd50_acc"] = _mean(timed("pgd50", masking_attack(eps), sub))
            result["masking/n"] = m
    flags = sanity_flags(result, prefix=prefix) + flags
    warn(flags)
    result["flags"] = flags
    return result


def evaluate_best(candidate: nn.Module | None, epoch: int, data: tuple[Tensor, Tensor], *,
                  eps: float, n: int = 0, device: torch.device | str = "cpu", seed: int = 0,
                  last: dict | None = None, last_epoch: int | None = None) -> dict:
    """The best-on-validation weights (`candidate`, from epoch `epoch`; None before any epoch: {})
    scored on the same test images as the last ones, by the registry's BEST_OF attacks (clean and
    PGD-20): `test/best_<field>` and `test/best_epoch`. Robust overfitting makes the best and the
    last weights differ; both the training command and a trial report both. When the best epoch
    is the last (`last_epoch`) the weights are the same, and the last weights' scores (`last`,
    from the same images and seed) are taken rather than computed again."""
    if candidate is None:
        return {}
    keys = [metrics.REGISTRY[a].key() for a in metrics.BEST_OF]
    if epoch == last_epoch and last is not None and all(k in last for k in keys):
        result = last
    else:
        result = evaluate_suite(candidate, data, attacks=metrics.BEST_OF, n=n, device=device,
                                seed=seed, eps=eps, check_masking=False)
    scores = {metrics.best(m).key(): result[m.key()]
              for m in (metrics.REGISTRY[a] for a in metrics.BEST_OF)}
    return {**scores, metrics.BEST_EPOCH.key(): epoch}


def _mean(hits: Tensor) -> float:
    return hits.float().mean().item() if hits.numel() else 0.0
