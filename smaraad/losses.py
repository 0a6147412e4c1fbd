"""The paper's loss functions, each findable by its equation number.

Slack matching (Eq. 2-5) and attribution-region alignment (Eq. 6-7) are written here as pure,
per-sample functions on tensors. Methods (smaraad/methods/) weight and combine them; nothing in this
file knows about models, attacks or configs.

Two faults of the official code (InsLin/SmaraAD, one file) are avoided on purpose:
- its soft ranks go through ``torch.tensor(list)``, which cuts the graph: L_sm gave no gradient.
  Ours is one vectorised autograd function over the class dimension, per sample;
- its CAMs come from pytorch-grad-cam (numpy, not differentiable). Ours are computed in torch from
  each model's last feature map and classifier weights, so L_align carries gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def at_least_fp32(t: Tensor) -> Tensor:
    """`t` in fp32 for the loss arithmetic, or float64 where it is float64.

    Lifts autocast's bf16 (or fp16) outputs to fp32 without lowering a float64 computation: the
    golden-value tests run whole losses, PGD included, in float64, where no CPU's last-bit rounding
    can flip a signed step (in fp32, AVX2 and AVX-512 kernels give different x').
    """
    return t if t.dtype == torch.float64 else t.float()


# ---------------------------------------------------------------------------------------------
# Slack matching: soft ranks (Eq. 4) and the soft Spearman coefficient (Eq. 2-3)
# ---------------------------------------------------------------------------------------------


class _SoftRank(torch.autograd.Function):
    """soft_rank(u)_i = sum_j sigmoid(gamma * (u_j - u_i))  (Eq. 4), for a (B, C) batch.

    The sum over j includes j = i (sigmoid(0) = 1/2), so for well-separated scores the soft rank of
    the largest entry is 1/2 and of the smallest C - 1/2: a descending rank shifted by 1/2. Both
    arguments of rho are ranked the same way, so the direction does not matter.

    Written by hand because the autograd graph of the naive form keeps several (B, C, C) buffers and
    runs about ten passes over them. The sigmoid is evaluated as (1 + tanh(z / 2)) / 2: the same
    function, but at gamma = 1000 most arguments saturate and torch's CPU sigmoid takes a slow path
    there (measured 4-7x slower than tanh on the same (256, 100, 100) buffer). The forward keeps one
    (B, C, C) buffer t = tanh(gamma (u_j - u_i) / 2); since sigmoid' = (1 - t^2) / 4 is symmetric in
    (i, j), the backward is two batched mat-vec products:
    dL/du = gamma / 4 * (Q g - g * Q 1), with Q = 1 - t^2 and g = dL/dr.
    """

    @staticmethod
    def forward(ctx, u: Tensor, gamma: float) -> Tensor:
        hu = u * (0.5 * gamma)
        t = (hu.unsqueeze(1) - hu.unsqueeze(2)).tanh_()  # t[b, i, j] = tanh(g(u_j - u_i) / 2)
        ctx.save_for_backward(t)
        ctx.gamma = gamma
        return t.sum(dim=2).mul_(0.5).add_(0.5 * u.shape[1])

    @staticmethod
    def backward(ctx, grad_r: Tensor):
        (t,) = ctx.saved_tensors
        with torch.autocast(device_type=t.device.type, enabled=False):  # bmm stays in t's dtype
            return _SoftRank.grad(t, grad_r.to(t.dtype), ctx.gamma)

    @staticmethod
    def grad(t: Tensor, grad_r: Tensor, gamma: float):
        q = torch.addcmul(torch.ones((), dtype=t.dtype, device=t.device), t, t, value=-1.0)
        rhs = torch.stack((grad_r, torch.ones_like(grad_r)), dim=2)  # (B, C, 2)
        qg, q1 = torch.bmm(q, rhs).unbind(dim=2)
        return (0.25 * gamma) * (qg - grad_r * q1), None


def soft_rank(u: Tensor, gamma: float) -> Tensor:
    """Soft ranks over the last dimension of a (B, C) tensor (Eq. 4), in fp32 (or float64)."""
    if u.dim() != 2:
        raise ValueError(f"soft_rank expects a (B, C) tensor, got shape {tuple(u.shape)}")
    return _SoftRank.apply(at_least_fp32(u), float(gamma))


def soft_spearman(u: Tensor, v: Tensor, gamma: float, *, form: str = "eq2") -> Tensor:
    """Per-sample soft Spearman rho between two (B, C) tensors over the class dimension: (B,).

    form="eq2" (default, the paper): rho = 1 - 6 sum_i d_i^2 / (n (n^2 - 1)) with d = soft_rank(u)
    - soft_rank(v) (Eq. 2-3), n = C. Exact for hard ranks; with soft ranks it stays in a slightly
    narrower range than [-1, 1] and reaches +-1 only as gamma grows.
    form="pearson": the Pearson correlation of the two soft-rank vectors (the torchsort recipe);
    equals +-1 exactly for u = +-v at any gamma. A switch, not the default.

    Always computed in fp32, also under autocast: at gamma = 1000 the sigmoids saturate and half
    precision would zero almost every gradient entry.
    """
    if u.shape != v.shape:
        raise ValueError(f"soft_spearman: shapes differ, {tuple(u.shape)} vs {tuple(v.shape)}")
    with torch.autocast(device_type=u.device.type, enabled=False):
        ru, rv = soft_rank(u, gamma), soft_rank(v, gamma)
        n = u.shape[1]
        if form == "eq2":
            d2 = (ru - rv).square().sum(dim=1)
            return 1.0 - 6.0 * d2 / (n * (n * n - 1))
        if form == "pearson":
            ru = ru - ru.mean(dim=1, keepdim=True)
            rv = rv - rv.mean(dim=1, keepdim=True)
            return F.cosine_similarity(ru, rv, dim=1, eps=1e-12)
    raise ValueError(f"soft_spearman: unknown form {form!r}; allowed: 'eq2', 'pearson'")


def slack_matching(student_logits: Tensor, teacher_logits: Tensor, gamma: float, *,
                   form: str = "eq2") -> Tensor:
    """L_sm(x) = -rho(S(x), T(x)) on predicted probabilities (Eq. 5), per sample: (B,).

    The paper ranks probabilities; the official code ranks raw logits. We follow the paper.
    """
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        ps = at_least_fp32(student_logits).softmax(dim=1)
        pt = at_least_fp32(teacher_logits).softmax(dim=1)
        return -soft_spearman(ps, pt, gamma, form=form)


# ---------------------------------------------------------------------------------------------
# Attribution-region alignment: CAMs (Eq. 6) and their MSE after resizing (Eq. 7)
# ---------------------------------------------------------------------------------------------

CAM_NORMS = ("none", "minmax", "l2")
CAM_MIN_SCALE = 1e-4  # floor of a map's range (minmax) or norm (l2) before dividing by it


CAM_CLASSES = ("label", "teacher", "own")


def cam_classes(cam_class: str, y: Tensor, zs: Tensor, zt: Tensor) -> tuple[Tensor, Tensor]:
    """The classes whose classifier weights form the student's and the teacher's CAM (Eq. 6):
    "label" the true class for both, "teacher" the teacher's prediction for both, "own" each
    model's own prediction (zs, zt: the student's and the teacher's logits)."""
    if cam_class == "label":
        return y, y
    if cam_class == "teacher":
        c = zt.argmax(dim=1)
        return c, c
    if cam_class == "own":
        return zs.argmax(dim=1), zt.argmax(dim=1)
    raise ValueError(f"unknown cam_class {cam_class!r}; allowed: {', '.join(CAM_CLASSES)}")


def cam(fmap: Tensor, fc_weight: Tensor, classes: Tensor, *, relu: bool = True,
        norm: str = "minmax") -> Tensor:
    """CAM(x) = sum_k w^k A^k(x) for one class per image (Eq. 6): (B, h, w), differentiable.

    fmap: (B, K, h, w) last feature map; fc_weight: (num_classes, K); classes: (B,) the class whose
    weights form the map (which class is the caller's choice: Eq. 6 leaves it open).
    The paper does not say whether maps are rectified or normalised before Eq. 7. Teacher and
    student maps live on unrelated scales (640 vs 512 channels, different weight norms), so a raw
    MSE mostly compares magnitudes. Default: ReLU then per-image min-max to [0, 1], the
    Grad-CAM convention of the pytorch-grad-cam package that the official README names.
    norm="l2" divides by each map's L2 norm; norm="none" keeps raw values.
    The range or norm is floored at CAM_MIN_SCALE: a nearly flat map (one faintly positive pixel
    after the ReLU, early in training) would otherwise be stretched to [0, 1] and send a gradient
    scaled by up to 1e8 into the features and classifier weights.
    Computed in fp32 (float64 stays float64) also under autocast: a bf16 map keeps 8 bits of
    mantissa, coarser than the min-max scaling and the MSE of Eq. 7 need.
    """
    with torch.autocast(device_type=fmap.device.type, enabled=False):  # fp32 also under autocast
        return _cam(at_least_fp32(fmap), fc_weight, classes, relu, norm)


def _cam(fmap: Tensor, fc_weight: Tensor, classes: Tensor, relu: bool, norm: str) -> Tensor:
    w = fc_weight.index_select(0, classes).to(fmap.dtype)  # (B, K)
    m = torch.einsum("bk,bkhw->bhw", w, fmap)
    if relu:
        m = m.relu()
    if norm == "none":
        return m
    flat = m.flatten(1)
    if norm == "minmax":
        lo = flat.amin(dim=1, keepdim=True)
        hi = flat.amax(dim=1, keepdim=True)
        flat = (flat - lo) / (hi - lo).clamp_min(CAM_MIN_SCALE)
    elif norm == "l2":
        flat = flat / flat.norm(dim=1, keepdim=True).clamp_min(CAM_MIN_SCALE)
    else:
        raise ValueError(f"cam: unknown norm {norm!r}; allowed: {', '.join(CAM_NORMS)}")
    return flat.view_as(m)


def align_maps(cam_s: Tensor, cam_t: Tensor, size: int = 0) -> Tensor:
    """L_align (Eq. 7) per sample: mean over pixels of (G(CAM_T) - G(CAM_S))^2, (B,).

    G is bilinear interpolation to a common size: `size`, or the larger of the two maps when
    size = 0 (WRN's 8x8 against ResNet-18's 4x4 upsamples the student's map), as two matrix
    products (`linear_resize`). Maps already of the target size are left alone.
    """
    if size <= 0:
        size = max(cam_s.shape[-1], cam_t.shape[-1], cam_s.shape[-2], cam_t.shape[-2])

    def g(m: Tensor) -> Tensor:
        if m.shape[-2:] == (size, size):
            return m
        return linear_resize(m.shape[-2], size, m) @ m @ linear_resize(m.shape[-1], size, m).T

    return (g(cam_t) - g(cam_s)).square().flatten(1).mean(dim=1)


def linear_resize(n: int, size: int, like: Tensor) -> Tensor:
    """The (size, n) matrix of 1-D linear interpolation from n to `size` points (align_corners
    False, torch's weights: it is F.interpolate applied to the identity). Bilinear resizing of an
    (h, w) map is R_h @ map @ R_w^T: the same weights as F.interpolate(mode="bilinear"), summed in
    another order, with a backward made of matrix products, deterministic on a GPU (interpolate's
    CUDA backward adds atomically: no `deterministic` run could use it)."""
    eye = torch.eye(n, dtype=like.dtype, device=like.device).unsqueeze(1)  # (n, 1, n)
    return F.interpolate(eye, size=size, mode="linear", align_corners=False).squeeze(1).T


# ---------------------------------------------------------------------------------------------
# Distribution losses shared by the methods
# ---------------------------------------------------------------------------------------------


def kl_div(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Per-sample KL(P_T || P_S) summed over classes, (B,): the `KL(S(x), T(x))` of the AD papers,
    i.e. torch's kl_div(log_softmax(S), softmax(T)). Reduction (batch mean, element mean, tau^2)
    is the caller's, so each method can name its own."""
    log_ps = F.log_softmax(at_least_fp32(student_logits) / temperature, dim=1)
    log_pt = F.log_softmax(at_least_fp32(teacher_logits) / temperature, dim=1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)


def entropy_weight(logits: Tensor) -> Tensor:
    """w = clamp(1 - H(P) / log C, 0, 1) per sample (Eq. 10's entropy weight), (B,)."""
    logp = F.log_softmax(at_least_fp32(logits), dim=1)
    h = -(logp.exp() * logp).sum(dim=1)
    return (1.0 - h / math.log(logits.shape[1])).clamp(0.0, 1.0)
