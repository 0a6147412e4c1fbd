"""The same training job run directly through the core and through Ray Tune + MLflow.

A: `python -m smaraad.train` (one kd run: training, then the final evaluation);
B: `python -m orchestrator.ablate` with that one variant and seed (Ray start-up, the trial worker,
   the object store hand-over, checkpoints every epoch, MLflow logging, the same evaluation).
Both use the same cached teacher, epochs and test images; B's lone trial gets every core by
default (trainables/resources.py), as A's torch does. A and B alternate so a drift in the machine's
speed hits both. Prints each wall time and the ratio B/A (target <= 1.15 at 12 epochs), and splits
the difference into a per-epoch part (median epoch time: A's progress lines, B's Ray results;
target <= 1.02) and the fixed rest (imports, Ray's start, the worker, shutdown), which a longer run
amortises. The load average is printed before and after: on a shared machine the figures are
upper bounds.

    python benchmarks/bench_overhead.py [--epochs 12] [--pairs 2]   # ~60 s of training each
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EPOCH_LINE = re.compile(r"^epoch\s+\d+/\d+ .* (\d+\.\d+)s$")


def timed(argv: list[str], cwd: str, env: dict) -> tuple[float, str]:
    """(wall seconds, stdout) of one command."""
    t = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
    return time.perf_counter() - t, done.stdout


def direct_epoch_s(stdout: str) -> list[float]:
    return [float(m.group(1)) for m in map(EPOCH_LINE.match, stdout.splitlines()) if m]


def tuned_epoch_s(work: str, name: str) -> list[float]:
    (result,) = Path(work, "ray_results", name).glob("*/result.json")
    rows = [json.loads(line) for line in result.read_text().splitlines()]
    return [r["time/epoch_s"] for r in rows if "time/epoch_s" in r and not r.get("completed")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--pairs", type=int, default=2)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-overhead-")
    env = {**os.environ, "SMARAAD_CACHE": os.environ.get("SMARAAD_CACHE", f"{work}/cache")}
    py = sys.executable
    common = ["--epochs", str(args.epochs), "--attacks", "clean,pgd20", "--eval-n", "0"]
    # The teacher is trained and measured on the validation split once, outside the timed runs:
    # both are cached per teacher (smaraad.teacher_specs.provide), as ablate's driver provides it
    # (--eval-n 0, no teacher AutoAttack); otherwise the first ablate pays ~20 s of measuring.
    subprocess.run([py, "-c", "from smaraad.config import preset_config as p;"
                    "from smaraad.teacher_specs import from_options, provide;"
                    "from smaraad.trainer import load_splits;"
                    "c = p({'method': 'kd'}); provide(from_options(None), c, data=load_splits(c),"
                    " log=None)"], cwd=work, env=env, check=True)
    load_before = os.getloadavg()
    direct, tuned, direct_runs, tuned_runs = [], [], [], []  # wall s; each run's epoch times
    for i in range(args.pairs):
        seconds, out = timed([py, "-m", "smaraad.train", "--method", "kd", "--out",
                              f"{work}/direct{i}", *common], work, env)
        direct.append(seconds)
        direct_runs.append(direct_epoch_s(out))
        seconds, _ = timed([py, "-m", "orchestrator.ablate", "--variants", "kd", "--seeds", "0",
                            "--no-report", "--name", f"bench{i}", *common], work, env)
        tuned.append(seconds)
        tuned_runs.append(tuned_epoch_s(work, f"bench{i}"))
    direct_epochs = [e for run in direct_runs for e in run]
    tuned_epochs = [e for run in tuned_runs for e in run]
    a, b = statistics.median(direct), statistics.median(tuned)
    ea, eb = statistics.median(direct_epochs), statistics.median(tuned_epochs)
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; kd, small_cnn <- small_resnet, "
          f"embedded, {args.epochs} epochs, {args.pairs} pairs (median)")
    print(f"direct (smaraad.train)          {a:7.1f} s   runs: {', '.join(f'{t:.1f}' for t in direct)}")
    print(f"Ray Tune + MLflow (ablate, 1 trial) {b:7.1f} s   runs: {', '.join(f'{t:.1f}' for t in tuned)}")
    print(f"load average (1, 5, 15 min) before {fmt_load(load_before)}, after "
          f"{fmt_load(os.getloadavg())}")
    print(f"overhead ratio {b / a:.3f}  (target <= 1.15 at 12 epochs)")
    print(f"per epoch (median of {len(direct_epochs)} / {len(tuned_epochs)}): direct {ea:.2f} s, "
          f"through Ray Tune {eb:.2f} s (ratio {eb / ea:.3f}, target <= 1.02); fixed rest of the "
          f"difference {(b - a) - args.epochs * (eb - ea):.1f} s per command")
    # The VM's speed drifts between runs (a run's median epoch moves by 10-20 %): each pair's own
    # ratios show whether a gap is the pair's or the drift's.
    da, db = ([statistics.median(r) for r in runs] for runs in (direct_runs, tuned_runs))
    print(f"median epoch by run: direct {', '.join(f'{e:.2f}' for e in da)}; through Ray Tune "
          f"{', '.join(f'{e:.2f}' for e in db)}")
    print(f"by pair: whole ratio {', '.join(f'{y / x:.3f}' for x, y in zip(direct, tuned))}; "
          f"per-epoch ratio {', '.join(f'{y / x:.3f}' for x, y in zip(da, db))}")


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
                platform.machine())


def fmt_load(load: tuple) -> str:
    return ", ".join(f"{x:.2f}" for x in load)


if __name__ == "__main__":
    main()
