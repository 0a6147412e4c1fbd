"""Two paper-facing decisions as switches: IAD's teacher weight (Table 1 vs the official code) and
where SmaraAD's attack (Eq. 8) starts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from smaraad.losses import kl_div
from smaraad.methods import METHODS, Context
from smaraad.methods.smaraad import inner_max
from smaraad.models import build_model

EPS = 8 / 255


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    student = build_model("small_cnn", num_classes=10).train()
    teacher = build_model("small_resnet", num_classes=10).eval().requires_grad_(False)
    return student, teacher


def batch(n=8):
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


def context(name, pair, steps=2, **params):
    student, teacher = pair
    return Context(student=student, teacher=teacher, params=METHODS[name].make_params(params),
                   eps=EPS, step=2 / 255, steps=steps, epoch=0, epochs=1)


def test_iad_defaults_are_the_official_code():
    p = METHODS["iad"].make_params({})
    assert p.teacher_weight == "none"


def test_iad_table1_form_is_the_official_one_with_each_teacher_kl_weighted_by_trust(pair):
    """Same x' (same seed), same terms, except kl_adv: mean_i KL_i (official) against
    mean_i A_i KL_i (Table 1), with A_i = P_T(x'_i)[y_i]^beta."""
    student, teacher = pair
    x, y = batch()
    out = {}
    for form in ("none", "trust"):
        torch.manual_seed(7)  # the attack's uniform start
        ctx = context("iad", pair, begin=0.0, teacher_weight=form)
        out[form] = METHODS["iad"].loss(ctx, x, y)
    torch.manual_seed(7)
    ctx = context("iad", pair, begin=0.0)
    from smaraad.methods.common import adversarial
    x_adv = adversarial(ctx, x, y, attack="ce", start="uniform", student_mode="train")
    with torch.no_grad():
        per_sample = kl_div(student(x_adv), teacher(x))
        trust = F.softmax(teacher(x_adv), dim=1).gather(1, y[:, None]).squeeze(1).pow(0.1)
    assert trust.min() < 0.99  # the weight is not trivially one on this batch
    torch.testing.assert_close(out["none"]["kl_adv"], per_sample.mean())
    torch.testing.assert_close(out["trust"]["kl_adv"], (trust * per_sample).mean())
    torch.testing.assert_close(out["trust"]["kl_self"], out["none"]["kl_self"])


def test_iad_forms_agree_before_introspection_starts(pair):
    x, y = batch()
    out = []
    for form in ("none", "trust"):
        torch.manual_seed(7)
        out.append(METHODS["iad"].loss(context("iad", pair, begin=1.0, teacher_weight=form), x, y))
    assert set(out[0]) == {"kl_adv"} and torch.equal(out[0]["kl_adv"], out[1]["kl_adv"])


@pytest.mark.parametrize("method", ["smaraad", "smaraad_pp", "kd"])
def test_smaraad_attack_start_switch(method, pair):
    """With no attack step x' is the start: uniform fills the eps-ball, normal stays within a few
    0.001 of x (AdaAD's start); the default is uniform."""
    x, y = batch()
    assert METHODS[method].make_params({}).attack_start == "uniform"
    deltas = {}
    for start in ("uniform", "normal"):
        torch.manual_seed(0)
        deltas[start] = inner_max(context(method, pair, steps=0, attack_start=start), x, y) - x
    inside = (x > EPS) & (x < 1 - EPS)  # away from the [0, 1] clip
    u, n = deltas["uniform"][inside], deltas["normal"][inside]
    assert u.abs().max() <= EPS + 1e-6 and u.abs().mean() == pytest.approx(EPS / 2, rel=0.05)
    assert n.abs().max() < 0.006 and n.std() == pytest.approx(1e-3, rel=0.05)
    # with steps the two starts give different adversarial examples
    xs = []
    for start in ("uniform", "normal"):
        torch.manual_seed(0)
        xs.append(inner_max(context(method, pair, steps=2, attack_start=start), x, y))
    assert not torch.equal(*xs) and (xs[1] - x).abs().max() <= EPS + 1e-6

