"""Baselines: golden loss values for every registered method, IAD's schedule, MTARD's adaptive
weights, and that every quirk switch changes the loss (or, for a detach switch, its gradient).

The fixture is written by tests/make_golden.py (by hand) and only read here. The golden values
hold on any CPU because the whole loss, PGD included, runs in float64 from weights drawn by
`torch.rand` (make_golden.portable). What is exact and what carries a tolerance:
- exact: the set of term names per method, and x' (every sign step): the smallest nonzero
  input-gradient entry of any attack step is about 1e-6 of the largest, float64 rounding noise
  about 1e-13, so no CPU flips a step (in fp32, with torch's init, AVX2 and AVX-512 did);
- rtol 1e-9 (atol 1e-15): each value, for float64 summation-order noise, measured at most 3e-12
  (ARD's T = 30 KL) across ATEN_CPU_CAPABILITY default, avx2, avx512. A changed coefficient,
  temperature, reduction or argument, or one flipped sign step (about 1e-7), is far outside it.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from make_golden import ATOL, FIXTURE, RTOL, SECOND_STEP, VARIANTS, as_floats, run
from smaraad.methods import METHODS, Context
from smaraad.methods.common import kl
from smaraad.methods.iad import introspection_on
from smaraad.methods.mtard import current_rate, update_weights

BASELINES = ("trades", "ard", "iad", "rslad", "adaad", "mtard", "natural")


@pytest.fixture(scope="module")
def golden():
    assert FIXTURE.exists(), f"{FIXTURE} is missing: run `PYTHONPATH=. python tests/make_golden.py`"
    return json.loads(FIXTURE.read_text())["terms"]


def check_golden(golden, key, terms):
    assert key in golden, (f"no golden value for {key!r} in {FIXTURE.name}; if the method is new, "
                           "run tests/make_golden.py and commit the fixture")
    got, want = as_floats(terms), golden[key]
    assert set(got) == set(want), f"{key}: terms {sorted(got)} != golden {sorted(want)}"
    for term, value in want.items():
        assert got[term] == pytest.approx(value, rel=RTOL, abs=ATOL), f"{key}: {term}"


# ---------------------------------------------------------------------------------------------
# Golden values: every method in the registry
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METHODS))
def test_golden_loss(name, golden):
    terms = run(name)[0]
    lowered = sorted(k for k, v in terms.items() if v.dtype != torch.float64)
    assert not lowered, (f"{name}: terms {lowered} are not float64: cast with "
                         "smaraad.losses.at_least_fp32, not .float(), or the value is CPU-dependent")
    check_golden(golden, name, terms)


@pytest.mark.parametrize("name", sorted(SECOND_STEP))
def test_golden_loss_second_step(name, golden):
    check_golden(golden, SECOND_STEP[name], run(name, calls=2)[0])


@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_golden_loss_variant(key, golden):
    name, params = VARIANTS[key]
    check_golden(golden, key, run(name, **params)[0])


def test_a_missing_golden_key_or_term_fails():
    terms = {"kl_adv": torch.tensor(1.0)}
    with pytest.raises(AssertionError, match="no golden value"):
        check_golden({}, "ard", terms)
    with pytest.raises(AssertionError, match="terms"):
        check_golden({"ard": {"kl_adv": 1.0, "ce_clean": 2.0}}, "ard", terms)


def test_the_tolerance_catches_a_coefficient_changed_by_one_part_in_a_million(golden):
    check_golden(golden, "trades", run("trades", beta=6.0)[0])
    with pytest.raises(AssertionError, match="trades: kl_adv"):
        check_golden(golden, "trades", run("trades", beta=6.0 * (1 + 1e-6))[0])


def test_every_registered_baseline_is_here():
    assert set(BASELINES) <= set(METHODS)
    assert METHODS["mtard"].needs_natural_teacher
    assert not METHODS["natural"].needs_teacher and not METHODS["trades"].needs_teacher


# ---------------------------------------------------------------------------------------------
# MTARD: the generic test (test_methods.py) has no natural teacher; check gradients here
# ---------------------------------------------------------------------------------------------


def test_mtard_moves_the_student_and_no_teacher():
    terms, student, ctx = run("mtard")
    for key, value in terms.items():
        assert value.dim() == 0 and torch.isfinite(value), key
    torch.stack(list(terms.values())).sum().backward()
    assert sum(p.grad.abs().sum() for p in student.parameters() if p.grad is not None) > 0
    for teacher in (ctx.teacher, ctx.natural_teacher):
        assert all(p.grad is None for p in teacher.parameters())
    assert student.training


def test_mtard_without_a_natural_teacher_is_an_error():
    _, student, ctx = run("natural")
    ctx = Context(student=student, teacher=student, params=METHODS["mtard"].make_params({}),
                  eps=8 / 255, step=2 / 255, steps=1)
    with pytest.raises(ValueError, match="natural_teacher"):
        METHODS["mtard"].loss(ctx, torch.rand(2, 3, 16, 16), torch.tensor([0, 1]))


def weight_ctx(epoch=0, epochs=10, **params):
    return Context(student=None, teacher=None, params=METHODS["mtard"].make_params(params),
                   eps=0, step=0, steps=0, epoch=epoch, epochs=epochs)


def reference_weights(losses, rate=0.025, bert=1.0):
    """The update loop of MTARD's mtard_resnet18_cifar10.py, transcribed: w_nat after each step."""
    weight, init, out = {"adv_loss": 0.5, "nat_loss": 0.5}, None, []
    for adv, nat in losses:
        init = init or (adv, nat)
        inv_adv, inv_nat = (adv / init[0]) ** bert, (nat / init[1]) ** bert
        weight["nat_loss"] -= rate * (weight["nat_loss"] - inv_nat / (inv_adv + inv_nat))
        weight["adv_loss"] = 1 - weight["nat_loss"]
        out.append(weight["nat_loss"])
    return out


def test_mtard_weights_follow_the_reference_and_stay_normalised():
    g = torch.Generator().manual_seed(0)
    losses = [(1.0, 2.0)] + (torch.rand(50, 2, generator=g) * 3 + 0.01).tolist()
    ctx = weight_ctx()
    ours = []
    for adv, nat in losses:
        w_adv, w_nat = update_weights(ctx, adv, nat)
        assert w_adv + w_nat == pytest.approx(1.0) and 0 <= w_nat <= 1
        ours.append(w_nat)
    assert ours == pytest.approx(reference_weights(losses), rel=1e-12)
    assert ours[0] == 0.5  # the first step defines the initial losses: the ratios are equal
    assert all(isinstance(v, float) for v in ctx.state.values())  # checkpoint-safe


def test_mtard_weights_move_after_a_step():
    _, _, ctx = run("mtard", calls=2)
    assert ctx.state["mtard/w_nat"] != 0.5
    assert 0 < ctx.state["mtard/w_nat"] < 1
    _, _, frozen = run("mtard", calls=2, rate=0.0)
    assert frozen.state["mtard/w_nat"] == 0.5


def test_mtard_rate_decays_with_the_learning_rate():
    # default lr milestones 115, 160, 185 of 200
    assert current_rate(weight_ctx(114, 200)) == pytest.approx(0.025)
    assert current_rate(weight_ctx(115, 200)) == pytest.approx(0.0025)
    assert current_rate(weight_ctx(199, 200)) == pytest.approx(0.000025)
    assert current_rate(weight_ctx(199, 200, rate_decay_at=[])) == pytest.approx(0.025)


# ---------------------------------------------------------------------------------------------
# IAD: the introspection term starts at a fraction of the run
# ---------------------------------------------------------------------------------------------


def test_iad_introspection_term_starts_at_its_epoch():
    before, _, _ = run("iad", epoch=2, epochs=10)   # begin 0.3 of 10 epochs: from epoch 3
    after, _, _ = run("iad", epoch=3, epochs=10)
    assert "kl_self" not in before and "kl_self" in after
    assert set(before) == {"kl_adv"}
    torch.testing.assert_close(before["kl_adv"], after["kl_adv"])


def test_iad_start_epoch_matches_the_reference_at_200_epochs():
    def ctx(epoch):
        return Context(student=None, teacher=None, params=METHODS["iad"].make_params({}),
                       eps=0, step=0, steps=0, epoch=epoch, epochs=200)
    assert not introspection_on(ctx(59)) and introspection_on(ctx(60))


# ---------------------------------------------------------------------------------------------
# Shared KL: the reductions are the reference spellings
# ---------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides:UserWarning")  # the spelling we mean
def test_kl_reductions_are_the_reference_spellings():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    log_ps, pt = F.log_softmax(zs / 4, dim=1), F.softmax(zt / 4, dim=1)
    torch.testing.assert_close(kl(zs, zt, "mean", temperature=4), nn.KLDivLoss()(log_ps, pt))
    torch.testing.assert_close(kl(zs, zt, "batchmean", temperature=4),
                               nn.KLDivLoss(reduction="sum")(log_ps, pt) / 6)
    # RSLAD's and MTARD's kl_loss(a, b) = -a*b + log(b + 1e-5)*b, then torch.mean
    reference = (-log_ps * pt + torch.log(pt + 1e-5) * pt).mean()
    torch.testing.assert_close(kl(zs, zt, "mean", temperature=4, log_eps=1e-5), reference)


# ---------------------------------------------------------------------------------------------
# Every quirk switch changes the loss
# ---------------------------------------------------------------------------------------------

# (method, field, other value); choice fields are expanded over all their options below
NUMERIC_SWITCHES = [
    ("ard", "temperature", 4.0), ("iad", "temperature", 4.0), ("rslad", "temperature", 4.0),
    ("adaad", "temperature", 4.0), ("mtard", "temperature", 4.0),
    ("rslad", "scale", 10.0), ("mtard", "scale", 10.0),
    ("rslad", "log_eps", 0.0), ("mtard", "log_eps", 0.0),
    ("iad", "begin", 0.9),
    ("mtard", "rate_decay_at", []), ("mtard", "power", 2.0), ("mtard", "rate", 0.5),
]
DETACH_SWITCHES = [("trades", "detach_clean"), ("iad", "detach_self")]
CHOICES = ("attack", "start", "student_mode", "kl_reduction")


def choice_switches():
    out = []
    for name in BASELINES:
        params = METHODS[name].make_params({})
        for field in METHODS[name].params.__dataclass_fields__.values():
            if field.name in CHOICES:
                out += [(name, field.name, v) for v in field.metadata["options"]
                        if v != getattr(params, field.name)]
    return out


def evaluate(name, *, grad=False, **params):
    calls = 2 if name == "mtard" else 1  # MTARD's weights move from the second step on
    terms, student, _ = run(name, calls=calls, **params)
    if not grad:
        return as_floats(terms)
    student.zero_grad(set_to_none=True)
    torch.stack(list(terms.values())).sum().backward()
    return as_floats(terms), torch.cat([p.grad.flatten() for p in student.parameters()
                                        if p.grad is not None])


@pytest.fixture(scope="module")
def defaults():
    return {name: evaluate(name) for name in BASELINES if name != "natural"}


@pytest.mark.parametrize("name,field,value", choice_switches() + NUMERIC_SWITCHES)
def test_each_quirk_switch_changes_the_loss(name, field, value, defaults):
    terms = evaluate(name, **{field: value})
    assert terms != pytest.approx(defaults[name], rel=1e-6), f"{name}.{field}={value!r}: no change"


@pytest.mark.parametrize("name,field", DETACH_SWITCHES)
def test_each_detach_switch_changes_the_gradient_not_the_value(name, field):
    base_terms, base_grad = evaluate(name, grad=True)
    terms, grad = evaluate(name, grad=True, **{field: True})
    assert terms == pytest.approx(base_terms, rel=1e-6)
    assert not torch.allclose(grad, base_grad)
