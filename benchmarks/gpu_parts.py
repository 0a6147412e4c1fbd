"""The parts of benchmarks/gpu_check.py; each returns a JSON-ready dict (see its docstring)."""

from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
BATCH = 256
REPEATS = 5
TEST_MARGIN_S = 30  # a test's limit is its part's less this: the part still reports


def _timed(fn, repeats: int = REPEATS, warmup: int = 2) -> float:
    """Median seconds of fn() with the GPU synchronised around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peaks(name: str) -> tuple[str | None, dict | None]:
    """(the part, its dense peaks in TFLOP/s) of a CUDA device name, (None, None) for a part the
    plan's table does not hold (orchestrator.plan.gpu_model)."""
    from orchestrator.plan import GPU_PEAKS, gpu_model
    model = gpu_model(name)
    return model, GPU_PEAKS.get(model)


def step() -> dict:
    """SmaraAD++ at the paper's scale, fp32 and bf16: rate, TFLOP/s, fraction of peak, ratio to
    the bare passes."""
    from bench_step import bare_step
    from smaraad.cost import make_context, step_flops
    from smaraad.methods import METHODS
    from smaraad.trainer import prepare_teacher

    dev = torch.device("cuda")
    flops = step_flops("smaraad_pp", "resnet18", "wrn34_10", num_classes=10, steps=10)
    ctx = make_context("smaraad_pp", "resnet18", "wrn34_10", num_classes=10, steps=10)
    ctx.student.to(dev)
    ctx.teacher = prepare_teacher(ctx.teacher, dev, 10)
    opt = torch.optim.SGD(ctx.student.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(BATCH, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (BATCH,), device=dev)
    device = torch.cuda.get_device_name(0)
    part, peak = peaks(device)
    out = {"model": "resnet18 <- wrn34_10, 32x32, 10 attack steps", "batch": BATCH,
           "flop_per_image": flops, "device": device,
           "peaks_of": part or f"unknown part ({device}): no fraction of peak",
           "peaks_tflops": peak, "repeats": REPEATS}
    for precision in ("fp32", "bf16"):
        amp = dict(device_type="cuda", dtype=torch.bfloat16, enabled=precision == "bf16")

        def real():  # as the trainer steps: the loss under autocast, the backward outside
            ctx.student.train()
            with torch.autocast(**amp):
                terms = METHODS["smaraad_pp"].loss(ctx, x, y)
            opt.zero_grad(set_to_none=True)
            torch.stack(list(terms.values())).sum().backward()
            opt.step()

        def bare():
            with torch.autocast(**amp):
                bare_step(ctx.student, ctx.teacher, opt, x, 10, True)

        t_real, t_bare = _timed(real), _timed(bare)
        tflops = flops * BATCH / t_real / 1e12
        row = {"step_s": round(t_real, 4), "images_per_s": round(BATCH / t_real, 1),
               "tflops": round(tflops, 1), "ratio_to_bare_passes": round(t_real / t_bare, 3),
               "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}
        if peak:
            ref = ("fp32", "tf32") if precision == "fp32" else ("bf16",)
            row.update({f"fraction_of_{p}_peak": round(tflops / peak[p], 3) for p in ref})
        out[precision] = row
        torch.cuda.reset_peak_memory_stats()
    return out


def autoattack() -> dict:
    """Standard AutoAttack on 1000 random 32x32 images labelled by a random ResNet-18 itself."""
    from smaraad.autoattack import autoattack as aa
    from smaraad.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet18").cuda().eval()
    x = torch.rand(1000, 3, 32, 32, device="cuda")
    with torch.no_grad():
        y = model(x).argmax(1)
    torch.cuda.synchronize()
    t = time.perf_counter()
    x_adv = aa(model, x, y, seed=0)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == y).float().mean().item()
    return {"model": "resnet18, random weights, labels = its predictions (clean acc 1.0)",
            "images": 1000, "version": "standard", "seconds_per_1000": round(seconds, 2),
            "robust_fraction": robust}


def tune() -> dict:
    """4 trials at 0.25 GPU, 1 epoch each, on the embedded data: wall time and overlap."""
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "mlflow.db"
        cmd = [sys.executable, "-m", "orchestrator.tune", "--space", "gamma_alpha",
               "--smoke-test", "--num-samples", "4", "--epochs", "1", "--gpus-per-trial", "0.25",
               "--cpus-per-trial", "1", "--max-concurrent", "4", "--name", "quarter",
               "--tracking-uri", f"sqlite:///{db}", "--storage-path", str(Path(d) / "ray"),
               "--no-report", "--aa-n", "16"]
        t = time.perf_counter()
        done = subprocess.run(cmd, cwd=d, capture_output=True, text=True,
                              env={**os.environ, "SMARAAD_CACHE": str(Path(d) / "cache")})
        wall = time.perf_counter() - t
        out = {"command": " ".join(cmd[1:]), "rc": done.returncode, "wall_s": round(wall, 1)}
        if done.returncode:
            return {**out, "error": "tune failed", "tail": (done.stdout + done.stderr)[-2000:]}
        c = MlflowClient(tracking_uri=f"sqlite:///{db}")
        runs = c.search_runs([c.get_experiment_by_name("quarter").experiment_id])
        trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        spans = [(r.info.start_time, r.info.end_time) for r in trials]
        out.update({"trials": len(trials),
                    "finished": sum(r.info.status == "FINISHED" for r in trials),
                    "trial_s": [round((e - s) / 1000, 1) for s, e in spans],
                    "all_four_overlap": max(s for s, _ in spans) < min(e for _, e in spans)})
    return out


def pytest() -> dict:
    """`pytest -m gpu tests/test_gpu.py` ($GPU_CHECK_TESTS: other pytest arguments): the outcome
    counts and the failures' names, from the progress file of benchmarks/pytest_progress.py
    (gpu_check.run_part reads the same file when it kills the part), each test limited to the
    part's limit less TEST_MARGIN_S."""
    from benchmarks.pytest_progress import TEST_LIMIT
    part_limit = float(os.environ.get("GPU_CHECK_LIMIT_S") or 0)
    env = {**os.environ, TEST_LIMIT: str(max(10.0, part_limit - TEST_MARGIN_S))
           if part_limit else "0"}
    args = shlex.split(os.environ.get("GPU_CHECK_TESTS") or "-m gpu tests/test_gpu.py")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
                           "-p", "benchmarks.pytest_progress", *args],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    return {"rc": done.returncode, "tail": (done.stdout + done.stderr)[-3000:]}
