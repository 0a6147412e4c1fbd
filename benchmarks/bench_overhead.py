"""The same training job run directly through the core and through Ray Tune + MLflow.

A: `python -m smaraad.train` (one kd run: training, then the final evaluation);
B: `python -m orchestrator.ablate` with that one variant and seed (Ray start-up, the trial worker,
   the object store hand-over, checkpoints every epoch, MLflow logging, the same evaluation).
Both use the same cached teacher, epochs, threads and test images; A and B alternate so a drift in
the machine's speed hits both. Prints each wall time and the ratio B/A (target <= 1.05).

    python benchmarks/bench_overhead.py [--epochs 6] [--pairs 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time


def timed(argv: list[str], cwd: str, env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--pairs", type=int, default=2)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-overhead-")
    env = {**os.environ, "SMARAAD_CACHE": os.environ.get("SMARAAD_CACHE", f"{work}/cache")}
    py = sys.executable
    common = ["--epochs", str(args.epochs), "--attacks", "clean,pgd20", "--eval-n", "0"]
    # the teacher is trained (or found in the cache) once, outside the timed runs
    subprocess.run([py, "-c", "from smaraad.config import preset_config as p;"
                    "from smaraad.teachers import provide_teacher as t;"
                    "t(p({'method': 'kd'}), log=None)"], cwd=work, env=env, check=True)
    direct, tuned = [], []
    for i in range(args.pairs):
        direct.append(timed([py, "-m", "smaraad.train", "--method", "kd", "--out",
                             f"{work}/direct{i}", *common], work, env))
        tuned.append(timed([py, "-m", "orchestrator.ablate", "--variants", "kd", "--seeds", "0",
                            "--cpus-per-trial", str(os.cpu_count()), "--no-report",
                            "--name", f"bench{i}", *common], work, env))
    a, b = statistics.median(direct), statistics.median(tuned)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; kd, small_cnn <- small_resnet, "
          f"embedded, {args.epochs} epochs, {args.pairs} pairs (median)")
    print(f"direct (smaraad.train)          {a:7.1f} s   runs: {', '.join(f'{t:.1f}' for t in direct)}")
    print(f"Ray Tune + MLflow (ablate, 1 trial) {b:7.1f} s   runs: {', '.join(f'{t:.1f}' for t in tuned)}")
    print(f"overhead ratio {b / a:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
