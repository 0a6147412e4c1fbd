"""Registry-driven: every method gives a finite loss and a gradient on the student (and on each
auxiliary network the trainer steps)."""

from types import SimpleNamespace

import pytest
import torch

from smaraad.config import TrainConfig
from smaraad.methods import METHODS, Context
from smaraad.models import build_model


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    student = build_model("small_cnn", num_classes=10)
    teacher = build_model("small_resnet", num_classes=10).eval().requires_grad_(False)
    return student, teacher


DATA = SimpleNamespace(num_classes=10, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), center=False)


def context(name, student, teacher, **params):
    spec = METHODS[name]
    cfg = TrainConfig.from_flat({"method": name, "student": "small_cnn", **params})
    return Context(student=student, teacher=teacher if spec.needs_teacher else None,
                   params=cfg.params, eps=8 / 255, step=2 / 255, steps=2,
                   natural_teacher=teacher if spec.needs_natural_teacher else None,
                   aux=spec.aux(cfg, DATA) if spec.aux else {},
                   student_optimizer=torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9))


def batch(seed=0, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_gives_finite_terms_and_a_student_gradient(name, pair):
    student, teacher = pair
    student.train()
    x, y = batch()
    ctx = context(name, student, teacher)
    terms = METHODS[name].loss(ctx, x, y)
    assert terms, "a method must return at least one named term"
    for key, value in terms.items():
        assert value.dim() == 0 and torch.isfinite(value), key
    student.zero_grad(set_to_none=True)
    torch.stack(list(terms.values())).sum().backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert student.training, "the method must leave the student in the caller's mode"
    for aux_name, net in ctx.aux.items():  # the method steps the others itself (test_aux_methods)
        if net.trainer_steps:
            assert sum(p.grad.abs().sum() for p in net.module.parameters()
                       if p.grad is not None) > 0, aux_name


@pytest.mark.parametrize("name", ["sm", "sm_align", "smaraad_pp"])
def test_slack_matching_alone_moves_the_student(name, pair):
    """The official code's soft Spearman passed no gradient; ours must, with align switched off."""
    student, teacher = pair
    x, y = batch(1)
    terms = METHODS[name].loss(context(name, student, teacher, align=False, gamma=1.0), x, y)
    sm = [v for k, v in terms.items() if "sm_" in k]
    assert sm
    student.zero_grad(set_to_none=True)
    sum(sm).backward()
    assert sum(p.grad.abs().sum() for p in student.parameters() if p.grad is not None) > 0


def test_ablation_variants_report_their_own_terms(pair):
    student, teacher = pair
    x, y = batch(2)
    keys = {n: set(METHODS[n].loss(context(n, student, teacher), x, y))
            for n in ("kd", "kd_align", "sm", "sm_align")}
    assert keys["kd"] == {"const", "kl_adv"}
    assert keys["kd_align"] == {"const", "kl_adv", "align_adv"}
    assert keys["sm"] == {"const", "sm_adv"}
    assert keys["sm_align"] == {"const", "sm_adv", "align_adv"}


def test_alpha_below_one_adds_the_clean_terms(pair):
    student, teacher = pair
    x, y = batch(3)
    terms = METHODS["smaraad"].loss(context("smaraad", student, teacher, alpha=0.5), x, y)
    assert {"sm_clean", "align_clean", "sm_adv", "align_adv", "const"} == set(terms)
    assert terms["const"].item() == pytest.approx(2.0)


def test_smaraad_pp_splits_guidance_and_self_learning(pair):
    student, teacher = pair
    x, y = batch(4)
    terms = METHODS["smaraad_pp"].loss(context("smaraad_pp", student, teacher), x, y)
    assert {"guide_const", "guide_sm_adv", "guide_align_adv", "self_rho", "self_ce"} == set(terms)
    # guidance weight P^lambda * w is in [0, 1], so the weighted constant is within [0, c]
    assert 0 <= terms["guide_const"].item() <= 2.0


def test_the_constant_c_changes_no_gradient(pair):
    _, teacher = pair
    x, y = batch(5)
    grads = []
    for c in (1.0, 5.0):
        torch.manual_seed(0)  # same student and attack start (BN statistics move in train mode)
        student = build_model("small_cnn", num_classes=10)
        terms = METHODS["smaraad"].loss(context("smaraad", student, teacher, c=c), x, y)
        student.zero_grad(set_to_none=True)
        torch.stack(list(terms.values())).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in student.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_loads_from_a_flat_config(name):
    cfg = TrainConfig.from_flat({"method": name})
    assert cfg.params == METHODS[name].make_params({})
    assert TrainConfig.from_flat(cfg.to_flat()) == cfg
