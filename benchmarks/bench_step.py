"""One SmaraAD(++) training step against the bare model passes it is made of.

The bare reference runs the same forward and backward passes of the student and the teacher (the
attack's steps through both models to the input, then the outer forward/backward of the student and
the teacher's forward) with trivial losses; the ratio isolates what the losses themselves cost
(soft ranks, CAMs, KL, weights). Target: <= 1.10. Also times soft_spearman at 100 classes, batch
256, forward + backward, against the naive pairwise autograd form (target <= 8 ms).

    python benchmarks/bench_step.py [--threads 2] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from smaraad.losses import soft_spearman
from smaraad.methods import METHODS, Context
from smaraad.models import build_model


def timed(fn, repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bare_step(student, teacher, opt, x, steps, clean):
    """The model passes of a SmaraAD step with trivial losses."""
    xa = x.clone()
    student.eval()
    for _ in range(steps):
        xa.requires_grad_(True)
        zs, fs = student.forward_features(xa)
        zt, ft = teacher.forward_features(xa)
        (g,) = torch.autograd.grad(zs.sum() + fs.sum() + zt.sum() + ft.sum(), xa)
        xa = (xa + 1e-3 * g.sign()).detach()
    student.train()
    zs, fs = student.forward_features(xa)
    loss = zs.sum() + fs.sum()
    if clean:
        loss = loss + student(x).sum()
    with torch.no_grad():
        teacher.forward_features(xa)
    opt.zero_grad(set_to_none=True)
    (loss * 0).backward()
    opt.step()


def real_step(method, ctx, opt, x, y):
    ctx.student.train()
    terms = METHODS[method].loss(ctx, x, y)
    loss = torch.stack(list(terms.values())).sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def naive_spearman(u, v, gamma):
    ranks = lambda t: torch.sigmoid(gamma * (t.unsqueeze(1) - t.unsqueeze(2))).sum(2)  # noqa
    n = u.shape[1]
    return 1 - 6 * (ranks(u) - ranks(v)).square().sum(1) / (n * (n * n - 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} threads; small_cnn <- small_resnet, 16x16, batch {args.batch}, "
          f"{args.steps} PGD steps; median of {args.repeats}")
    torch.manual_seed(0)
    student = build_model("small_cnn", center=True)
    teacher = build_model("small_resnet", center=True).eval().requires_grad_(False)
    x = torch.rand(args.batch, 3, 16, 16)
    y = torch.randint(0, 10, (args.batch,))
    opt = torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9)
    for method in ("smaraad", "smaraad_pp"):
        spec = METHODS[method]
        ctx = Context(student=student, teacher=teacher, params=spec.make_params({}),
                      eps=8 / 255, step=2 / 255, steps=args.steps)
        real = statistics.median(timed(lambda: real_step(method, ctx, opt, x, y), args.repeats))
        bare = statistics.median(timed(lambda: bare_step(student, teacher, opt, x, args.steps,
                                                         method == "smaraad_pp"), args.repeats))
        print(f"{method:<11} step {real * 1e3:7.1f} ms   bare passes {bare * 1e3:7.1f} ms   "
              f"ratio {real / bare:.3f}  (target <= 1.10)")

    u = torch.randn(256, 100).softmax(1).requires_grad_()
    v = torch.randn(256, 100).softmax(1)
    for name, fn in (("soft_spearman", soft_spearman), ("naive pairwise", naive_spearman)):
        t = statistics.median(timed(lambda: fn(u, v, 1000.0).mean().backward(), 30, warmup=5))
        print(f"{name:<15} 100 classes, batch 256, fwd+bwd: {t * 1e3:6.2f} ms"
              + ("  (target <= 8 ms)" if fn is soft_spearman else ""))


if __name__ == "__main__":
    main()
