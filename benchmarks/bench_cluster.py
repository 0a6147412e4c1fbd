"""What it costs to be distributed: one 8-trial tune on a two-node Ray cluster against the same
tune on a one-node cluster with the same CPUs in total.

A: `ray start --head --num-cpus N` alone; B: a head and a worker of N/2 CPUs each, both on this
machine, joined the way tests/test_cluster.py joins them (token authentication on, a shared storage
folder). The same `python -m orchestrator.tune --address ...` runs on each: TRADES's beta, 8
trials, no early stopping (so both do the same trial-epochs), the small embedded data of the
cluster tests. A and B alternate (A B, B A, ...) so a drift in the machine's speed hits both.
Prints the wall time of each tune command (the cluster's own start is timed apart), the
trial-epochs, and the ratio B/A, expected near 1: on one machine a second node adds only the
object transfers between two object stores and the trials' placement.

    python benchmarks/bench_cluster.py [--trials 8] [--epochs 3] [--cpus 2] [--pairs 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trainables.services import CLUSTER_SPACE, SMALL_RUN, RayCluster



def tune_once(cluster: RayCluster, work: Path, name: str, args) -> tuple[float, str]:
    argv = [sys.executable, "-m", "orchestrator.tune", "--space", str(work / "space.yaml"),
            "--smoke-test", "--num-samples", str(args.trials), "--epochs", str(args.epochs),
            *SMALL_RUN, "--address", cluster.address,
            "--storage-path", str(work / "shared" / "ray"),
            "--tracking-uri", f"sqlite:///{work / 'shared' / 'mlflow.db'}",
            "--name", name, "--no-report"]
    t = time.perf_counter()
    done = subprocess.run(argv, cwd=work, env={**cluster.env, "OMP_NUM_THREADS": "1"},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - t
    if done.returncode:
        sys.exit(f"{name}: tune failed\n{done.stdout[-3000:]}")
    spent = next((ln for ln in done.stdout.splitlines() if ln.startswith("ASHA ran")), "")
    return seconds, spent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs in total, split evenly over B")
    ap.add_argument("--pairs", type=int, default=1)
    args = ap.parse_args()
    if args.cpus < 2 or args.cpus % 2:
        sys.exit("--cpus: an even number >= 2 (B splits it over two nodes)")
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    (work / "space.yaml").write_text(CLUSTER_SPACE)
    (work / "shared").mkdir()
    layouts = {"one node": dict(head_cpus=args.cpus, worker_cpus=()),
               "two nodes": dict(head_cpus=args.cpus // 2, worker_cpus=(args.cpus // 2,))}
    walls: dict[str, list[float]] = {k: [] for k in layouts}
    try:
        for i in range(args.pairs):
            order = list(layouts.items())
            for label, layout in order if i % 2 == 0 else order[::-1]:  # ABBA: drift hits both
                t = time.perf_counter()
                cluster = RayCluster(**layout)
                started = time.perf_counter() - t
                try:
                    seconds, spent = tune_once(cluster, work, f"{label[:3]}-{i}", args)
                finally:
                    cluster.stop()
                walls[label].append(seconds)
                print(f"{label:9}  pair {i}: tune {seconds:6.1f} s  (cluster start "
                      f"{started:4.1f} s)  {spent}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    a, b = statistics.median(walls["one node"]), statistics.median(walls["two nodes"])
    load = os.getloadavg()[0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {load:.1f}; "
          f"{args.trials} trials x {args.epochs} epochs, {args.cpus} CPUs, {args.pairs} pair(s)")
    print(f"one node  {a:6.1f} s   two nodes  {b:6.1f} s   ratio two/one {b / a:.3f}")


if __name__ == "__main__":
    main()
