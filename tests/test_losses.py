"""Slack matching (Eq. 2-5) and attribution alignment (Eq. 6-7)."""

import math

import pytest
import torch

from smaraad.losses import (align_maps, cam, entropy_weight, kl_div, slack_matching, soft_rank,
                            soft_spearman)


def hard_spearman(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Spearman's rho from integer ranks (Eq. 2-3), computed independently of soft ranks."""
    ranks = lambda t: t.argsort(dim=1).argsort(dim=1).double()  # noqa: E731
    d = ranks(u) - ranks(v)
    n = u.shape[1]
    return 1 - 6 * d.square().sum(1) / (n * (n * n - 1))


def separated(b, c, seed):
    """Scores with gaps of at least 0.01 between classes, so that hard ranks are well defined."""
    g = torch.Generator().manual_seed(seed)
    base = torch.stack([torch.randperm(c, generator=g) for _ in range(b)]).float()
    return base * 0.01 + 0.002 * torch.rand(b, c, generator=g)


@pytest.mark.parametrize("form", ["eq2", "pearson"])
def test_soft_spearman_approaches_hard_rank_correlation(form):
    u, v = separated(16, 10, 0), separated(16, 10, 1)
    exact = hard_spearman(u, v)
    errors = [(soft_spearman(u, v, g, form=form).double() - exact).abs().max().item()
              for g in (10.0, 100.0, 1e4)]
    assert errors[1] > errors[2] and errors[2] < 1e-3
    if form == "eq2":  # soft ranks shrink towards the middle, so Eq. 2 converges from one side
        assert errors[0] > errors[1]


def test_soft_ranks_order_like_hard_ranks():
    u = separated(4, 7, 3)
    r = soft_rank(u, 1e4)
    # descending rank + 1/2: the largest entry gets 0.5, the smallest C - 0.5
    expected = (7 - 1 - u.argsort(1).argsort(1)).float() + 0.5
    torch.testing.assert_close(r, expected, atol=1e-3, rtol=0)


@pytest.mark.parametrize("gamma", [1.0, 1000.0])
def test_rho_of_a_vector_with_itself_is_one(gamma):
    u = torch.randn(8, 10).softmax(1)
    torch.testing.assert_close(soft_spearman(u, u, gamma), torch.ones(8))


def test_rho_with_the_reversed_order_is_minus_one():
    u = separated(8, 10, 4)
    torch.testing.assert_close(soft_spearman(u, -u, 1e4), -torch.ones(8), atol=1e-4, rtol=0)
    # Pearson on soft ranks is exactly -1 at any gamma
    torch.testing.assert_close(soft_spearman(u, -u, 1.0, form="pearson"), -torch.ones(8))


def naive_soft_spearman(u, v, gamma):
    ranks = lambda t: torch.sigmoid(gamma * (t.unsqueeze(1) - t.unsqueeze(2))).sum(2)  # noqa
    n = u.shape[1]
    return 1 - 6 * (ranks(u) - ranks(v)).square().sum(1) / (n * (n * n - 1))


@pytest.mark.parametrize("gamma", [1.0, 50.0])
def test_hand_written_gradient_matches_autograd_of_the_naive_form(gamma):
    u = torch.randn(6, 12).softmax(1).requires_grad_()
    v = torch.randn(6, 12).softmax(1).requires_grad_()
    w = torch.randn(6)
    (g_fast_u, g_fast_v) = torch.autograd.grad((soft_spearman(u, v, gamma) * w).sum(), (u, v))
    (g_ref_u, g_ref_v) = torch.autograd.grad((naive_soft_spearman(u, v, gamma) * w).sum(), (u, v))
    torch.testing.assert_close(g_fast_u, g_ref_u, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g_fast_v, g_ref_v, atol=1e-5, rtol=1e-4)


def test_slack_matching_gives_a_finite_nonzero_gradient_to_the_student():
    student = torch.randn(32, 10, requires_grad=True)
    teacher = torch.randn(32, 10)
    loss = slack_matching(student, teacher, gamma=1000.0).mean()
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_soft_spearman_stays_fp32_under_autocast():
    u = torch.randn(4, 10).softmax(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rho = slack_matching(u.bfloat16(), u.bfloat16(), 1000.0)
    assert rho.dtype == torch.float32


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="shapes differ"):
        soft_spearman(torch.randn(2, 3), torch.randn(2, 4), 1.0)
    with pytest.raises(ValueError, match="form"):
        soft_spearman(torch.randn(2, 3), torch.randn(2, 3), 1.0, form="kendall")


# ---- CAMs and alignment ------------------------------------------------------------------------


def test_cam_is_the_class_weighted_sum_of_feature_maps():
    fmap = torch.randn(2, 5, 4, 4)
    weight = torch.randn(3, 5)
    classes = torch.tensor([2, 0])
    raw = cam(fmap, weight, classes, relu=False, norm="none")
    expected = torch.stack([(weight[c][:, None, None] * fmap[i]).sum(0)
                            for i, c in enumerate(classes.tolist())])
    torch.testing.assert_close(raw, expected)
    m = cam(fmap, weight, classes)  # default: ReLU + per-image min-max
    assert m.min() >= 0 and m.max() <= 1
    assert torch.allclose(m.flatten(1).amax(1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("norm", ["minmax", "l2"])
def test_a_nearly_flat_map_does_not_blow_up_the_gradient(norm):
    """One faintly positive pixel after the ReLU: the normalised map must not amplify it 1e8x."""
    fmap = torch.full((1, 1, 4, 4), -1.0)
    fmap[0, 0, 1, 2] = 1e-7
    fmap.requires_grad_(True)
    m = cam(fmap, torch.ones(1, 1), torch.tensor([0]), norm=norm)
    (grad,) = torch.autograd.grad(m.sum(), fmap)
    assert torch.isfinite(grad).all() and grad.abs().max() <= 1e4


def test_alignment_resizes_to_the_larger_map_and_carries_gradient():
    fs = torch.randn(3, 8, 4, 4, requires_grad=True)
    ft = torch.randn(3, 16, 8, 8)
    y = torch.tensor([0, 1, 2])
    ws, wt = torch.randn(3, 8), torch.randn(3, 16)
    loss = align_maps(cam(fs, ws, y), cam(ft, wt, y))
    assert loss.shape == (3,)
    (grad,) = torch.autograd.grad(loss.sum(), fs)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    same = cam(ft, wt, y)
    assert align_maps(same, same).abs().max() == 0


def test_kl_and_entropy_weight():
    z = torch.randn(5, 10)
    assert kl_div(z, z).abs().max() < 1e-6
    assert (kl_div(torch.randn(5, 10), z) > 0).all()
    uniform, certain = torch.zeros(1, 10), torch.tensor([[100.0] + [0.0] * 9])
    assert entropy_weight(uniform).item() == pytest.approx(0.0, abs=1e-6)
    assert entropy_weight(certain).item() == pytest.approx(1.0, abs=1e-6)
    half = torch.tensor([[math.log(1.0)] * 2 + [-1e4] * 8])
    assert entropy_weight(half).item() == pytest.approx(1 - math.log(2) / math.log(10), abs=1e-5)
