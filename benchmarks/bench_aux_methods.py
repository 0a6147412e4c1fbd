"""Cost of one training step of LAS-AT, PeerAiD and IGDM against PGD-AT (and AdaAD, IGDM's base).

A step is what the trainer does per batch: the method's loss (its attacks, and for LAS-AT its
policy update every `interval` steps, amortised by timing whole intervals), one backward of all
terms, the student's and the trainer-stepped auxiliary optimisers' steps. PGD-AT and the
distillation methods use the run's attack (--steps PGD steps); LAS-AT's attack is its own (3-13
steps per image, a batch costs its largest), and its reward adds PGD-10 x 2 restarts on a
one-step copy of the student every 20 steps.

    python benchmarks/bench_aux_methods.py [--threads 2] [--repeats 3] [--arch small_cnn]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from types import SimpleNamespace

import torch

from smaraad.config import TrainConfig
from smaraad.methods import METHODS, Context
from smaraad.models import build_model

METHOD_NAMES = ("pgd_at", "las_at", "peeraid", "adaad", "igdm")


def make_ctx(name: str, arch: str, teacher, steps: int, size: int):
    spec = METHODS[name]
    cfg = TrainConfig.from_flat({"method": name, "student": arch})
    data = SimpleNamespace(num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3, center=False)
    torch.manual_seed(0)
    student = build_model(arch, num_classes=10, mean=data.mean, std=data.std)
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    aux = spec.aux(cfg, data) if spec.aux else {}
    ctx = Context(student=student, teacher=teacher if spec.needs_teacher else None,
                  params=cfg.params, eps=8 / 255, step=2 / 255, steps=steps, aux=aux,
                  student_optimizer=opt, epochs=10)
    stepped = [opt, *(a.optimizer for a in aux.values() if a.trainer_steps)]
    return ctx, stepped


def step(name, ctx, stepped, x, y):
    for m in (ctx.student, *(a.module for a in ctx.aux.values())):
        m.train()
    terms = METHODS[name].loss(ctx, x, y)
    total = torch.stack(list(terms.values())).sum()
    for o in stepped:
        o.zero_grad(set_to_none=True)
    total.backward()
    for o in stepped:
        o.step()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed blocks per method")
    ap.add_argument("--block", type=int, default=20, help="steps per timed block (LAS-AT's "
                    "policy interval, so each block holds one policy update)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="PGD steps of the run's attack")
    ap.add_argument("--arch", default="small_cnn", help="student (and peer/strategy) model")
    ap.add_argument("--teacher", default="small_resnet")
    ap.add_argument("--size", type=int, default=16, help="image side")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", default=",".join(METHOD_NAMES), help="comma-separated; the "
                    "first is the baseline of the ratios")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} threads, {dev}; {args.arch} <- {args.teacher}, {args.size}x"
          f"{args.size}, batch {args.batch}, {args.steps} PGD steps; median of {args.repeats} "
          f"blocks of {args.block} steps, fp32", flush=True)
    torch.manual_seed(0)
    teacher = build_model(args.teacher, num_classes=10).to(dev).eval().requires_grad_(False)
    x = torch.rand(args.batch, 3, args.size, args.size, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    base = None
    for name in args.methods.split(","):
        ctx, stepped = make_ctx(name, args.arch, teacher, args.steps, args.size)
        for m in (ctx.student, *(a.module for a in ctx.aux.values())):
            m.to(dev)
        step(name, ctx, stepped, x, y)  # warm-up
        times = []
        for _ in range(args.repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(args.block):
                step(name, ctx, stepped, x, y)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t) / args.block)
        ms = statistics.median(times) * 1e3
        base = base or ms
        print(f"{name:<8} {ms:8.1f} ms/step   x{ms / base:.2f} of {args.methods.split(',')[0]}",
              flush=True)


if __name__ == "__main__":
    main()
