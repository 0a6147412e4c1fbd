"""Throughput of the evaluation attacks on CPU: images/second for each attack of the suite on the
small models (small_cnn student, small_resnet teacher), and AutoAttack's cost relative to PGD-20.

    python benchmarks/bench_eval.py [--n 64] [--aa-n 8] [--threads T]

AutoAttack's cost depends on how many images survive each sub-attack: an image that APGD-CE
fools costs nothing more, one that survives goes through APGD-T (9 targets x 100 iterations),
FAB-T and Square (5000 queries). This benchmark measures that worst case on purpose: the models
keep their random initial weights and the labels are their own predictions, so no attack flips
them at 8/255 (the robust accuracy printed beside each rate shows it) and every sub-attack runs
on every image -- the cost a robust model pays on its robust fraction.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from smaraad.data.registry import EMBEDDED  # noqa: E402
from smaraad.evaluation import ATTACKS, accuracy, attack_table  # noqa: E402
from smaraad.models import build_model, count_parameters  # noqa: E402

EPS = 8 / 255
SIZE = EMBEDDED.image_size


def rate(model, data, attack, batch_size: int) -> tuple[float, float, float]:
    """(images per second, seconds, accuracy) of one pass of `attack` over `data`."""
    torch.manual_seed(0)
    start = time.perf_counter()
    acc = accuracy(model, data, attack=attack, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return len(data[1]) / seconds, seconds, acc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=64, help="images for every attack but AutoAttack")
    p.add_argument("--aa-n", type=int, default=8, help="images for AutoAttack (slow on CPU)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the table (default 1:"
                   " on a shared 2-core machine 2 threads ran these small batches 10-17x slower)")
    args = p.parse_args()
    default_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, Python {platform.python_version()}")
    print(f"images {SIZE}x{SIZE}, eps 8/255, n={args.n} (AutoAttack standard: n={args.aa_n}), "
          "one timed pass each\n")
    table = attack_table(eps=EPS, seed=0)
    for arch in ("small_cnn", "small_resnet"):
        torch.manual_seed(0)
        model = build_model(arch, num_classes=10).eval()
        x = torch.rand(args.n, 3, SIZE, SIZE)
        with torch.no_grad():
            y = model(x).argmax(dim=1)  # clean accuracy 1 by construction
        print(f"{arch} ({count_parameters(model):,} parameters)")
        print(f"  {'attack':<8}{'images/s':>10}{'seconds':>9}{'accuracy':>10}")
        seconds = {}
        for name in ATTACKS:
            n = args.aa_n if name == "aa" else args.n
            per_s, seconds[name], acc = rate(model, (x[:n], y[:n]), table[name], batch_size=n)
            seconds[name] /= n
            print(f"  {name:<8}{per_s:>10.1f}{seconds[name] * n:>9.2f}{acc:>10.3f}")
        print(f"  AutoAttack costs {seconds['aa'] / seconds['pgd20']:.0f}x PGD-20 per image "
              f"when every image survives every sub-attack\n")
    # The thread count matters more than the model on this scale: show it for one attack.
    model = build_model("small_cnn", num_classes=10).eval()
    data = (x, model(x).argmax(dim=1).detach())
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        print(f"small_cnn PGD-20 with {threads} thread(s): "
              f"{rate(model, data, table['pgd20'], batch_size=args.n)[0]:.1f} images/s")


if __name__ == "__main__":
    main()
