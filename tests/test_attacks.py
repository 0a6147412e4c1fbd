"""Attacks stay in the threat model, restore the caller's state, and are as strong as they should be.

The models here are trained in seconds on a synthetic task (oriented gratings of amplitude 0.04,
about 10/255, in noise): a naturally trained CNN solves it and is not robust at 8/255, so every
attack must drive it to ~0, while at 4/255 accuracy is intermediate and attacks can be compared.
"""

import math
from functools import lru_cache, partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smaraad import metrics
from smaraad.attacks import cw_loss, fgsm, pgd
from smaraad.autoattack import autoattack, check_version
from smaraad.evaluation import accuracy
from smaraad.models import build_model
from smaraad.sanity import tolerance

EPS = 8 / 255


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids OpenMP spin contention
    (measured: pyautoattack's loops ran 17x faster)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gratings(n: int, seed: int, classes: int = 10, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images: class k is a sine grating at angle k*pi/classes, random phase, in noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(classes, (n,), generator=g)
    theta = math.pi * y.float() / classes
    phase = 2 * math.pi * torch.rand(n, generator=g)
    r = torch.arange(size).float()
    u = theta.cos()[:, None, None] * r[None, :, None] + theta.sin()[:, None, None] * r[None, None, :]
    wave = torch.sin(2 * math.pi * u / 5 + phase[:, None, None])
    x = 0.5 + 0.04 * wave[:, None] + 0.06 * torch.randn(n, 3, size, size, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), y


@lru_cache(maxsize=None)
def natural_model() -> nn.Module:
    """small_cnn trained with plain CE (3 epochs, ~3 s): ~100% clean, not robust. Shared, so
    callers must leave it as they found it (which is what the attacks promise)."""
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    images, labels = gratings(2048, seed=0)
    for _ in range(3):
        for i in range(0, len(labels), 64):
            loss = F.cross_entropy(model(images[i:i + 64].float() / 255), labels[i:i + 64])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    """256 test images of the grating task (a different seed from training)."""
    return gratings(256, seed=1)


class ConstantModel(nn.Module):
    """Fixed logits whatever the input (connected to x with weight 0, so gradients exist and
    are exactly zero): no attack can change its accuracy."""

    num_classes = 10

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.linspace(-1.0, 1.0, 10))

    def forward(self, x):
        return self.logits.expand(len(x), -1) + 0.0 * x.flatten(1).sum(1, keepdim=True)


RESTARTS = "pgd20x2"  # PGD-20 with 2 restarts: the restarts path, which no registry entry takes


def attack(name: str):
    """The registry's attack `name` at EPS, built as the evaluation suite builds it (or RESTARTS)."""
    if name == RESTARTS:
        return partial(pgd, eps=EPS, steps=20, restarts=2)
    return metrics.REGISTRY[name].attack(metrics.AttackContext(eps=EPS))


ATTACKS = [n for n in metrics.attack_names() if attack(n) is not None]  # `clean` attacks nothing
CHEAP = [n for n in ATTACKS if not metrics.REGISTRY[n].costly]


@pytest.mark.parametrize("name", [*ATTACKS, RESTARTS])
def test_attack_stays_in_ball_and_range_and_restores_state(name):
    model = natural_model()
    images, y = held_out()
    x = images[:32].float() / 255
    model.train()
    model.body[0].eval()  # a mixed mode must come back submodule by submodule
    rng = torch.get_rng_state()
    try:
        x_adv = attack(name)(model, x, y[:32])
        assert model.training and not model.body[0].training and model.body[1].training
    finally:
        model.eval()
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert not x_adv.requires_grad
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    if name == "aa":  # pyautoattack reseeds torch's RNG; ours hands the caller's back
        assert torch.equal(torch.get_rng_state(), rng)


def test_undefended_model_falls_to_pgd20_and_autoattack():
    model, data = natural_model(), held_out()
    assert accuracy(model, data, limit=32) > 0.9
    for name in ("pgd20", "aa"):
        assert accuracy(model, data, attack=attack(name), limit=32) <= 0.1, name


@pytest.mark.parametrize("name", [*CHEAP, RESTARTS])
def test_constant_model_keeps_its_accuracy(name):
    """AutoAttack on the constant model runs through evaluate_suite (test_evaluation.py)."""
    x, y = held_out()
    model = ConstantModel()
    clean = accuracy(model, (x[:64], y[:64]))
    assert 0 < clean < 1
    assert accuracy(model, (x[:64], y[:64]), attack=attack(name)) == clean


def test_pgd20_is_not_weaker_than_fgsm_nor_apgd_ce():
    """At 4/255 the natural model keeps some accuracy, so the orderings mean something:
    PGD-20 <= FGSM and PGD-20 <= pyautoattack's APGD-CE (100 iterations), within noise."""
    model, (x, y) = natural_model(), held_out()
    eps = 4 / 255
    data = (x[:96], y[:96])
    torch.manual_seed(0)
    acc = {
        "fgsm": accuracy(model, data, attack=lambda m, a, b: fgsm(m, a, b, eps=eps)),
        "pgd20": accuracy(model, data, attack=lambda m, a, b: pgd(m, a, b, eps=eps, step=eps / 4)),
        "apgd": accuracy(model, data, attack=lambda m, a, b: autoattack(
            m, a, b, eps=eps, version="custom", attacks=["apgd-ce"])),
    }
    assert 0.05 < acc["fgsm"] < 1.0, acc  # the comparison is not vacuous
    for weaker in ("fgsm", "apgd"):
        assert acc["pgd20"] <= acc[weaker] + tolerance(acc[weaker], 96), acc


def test_more_restarts_never_raise_accuracy():
    model, (x, y) = natural_model(), held_out()
    eps = 4 / 255
    accs = []
    for restarts in (1, 3):
        torch.manual_seed(0)  # the first restart then sees the same random start
        accs.append(accuracy(model, (x, y), attack=lambda m, a, b: pgd(
            m, a, b, eps=eps, step=eps / 4, steps=5, restarts=restarts)))
    assert accs[1] <= accs[0]


def test_cw_loss_has_a_gradient_at_correctly_classified_points():
    """Carlini-Wagner's margin is capped above (at kappa), not below: a floor at -kappa zeroed
    the gradient of every correctly classified image, and CW_inf then never moved."""
    model, (x, y) = natural_model(), held_out()
    xa = (x[:16].float() / 255).requires_grad_(True)
    assert (model(xa).argmax(1) == y[:16]).all()
    (grad,) = torch.autograd.grad(cw_loss(model, y[:16])(xa), xa)
    assert (grad.flatten(1).abs().sum(1) > 0).all()
    assert accuracy(model, (x, y), attack=attack("cw"), limit=32) <= 0.1


@pytest.mark.parametrize("version, attacks", [("fast", None), ("custom", None),
                                              ("custom", ["apgd-x"]), ("standard", ["apgd-ce"])])
def test_autoattack_rejects_unknown_versions(version, attacks):
    with pytest.raises(ValueError, match="allowed|custom"):
        check_version(version, attacks)
