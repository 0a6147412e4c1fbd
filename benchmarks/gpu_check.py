"""The GPU measurement in one go (behind benchmarks/gpu_check.sh): one JSON, parts isolated.

    python benchmarks/gpu_check.py OUT.json          # every part, about 8 minutes at most
    python benchmarks/gpu_check.py --part step       # one part, its JSON on the last line

Parts (benchmarks/gpu_parts.py), each in its own process with its own timeout, so a crash, a
hang or a CUDA error in one is recorded (error, output tail) and the others still run; the JSON
is rewritten after each part:
- step: a SmaraAD++ training step at the paper's scale (ResNet-18 <- WRN-34-10, 32x32, batch 256,
  10 attack steps), fp32 (PyTorch's defaults: TF32 convolutions) and bf16 autocast: images/s,
  achieved TFLOP/s from smaraad.cost's count, the fraction of the device's dense peak, and the
  ratio to the bare model passes of the same step (benchmarks/bench_step.py's reference).
- autoattack: standard AutoAttack seconds per 1000 CIFAR-sized images on a ResNet-18 with random
  weights whose labels are its own predictions (clean accuracy 100%). Such a model is not robust,
  so APGD-CE fools nearly every image and the later attacks run on few: this is the floor; a
  robust model costs more, roughly in proportion to its robust fraction (reported).
- pytest: `pytest -m gpu` (tests/test_gpu.py): counts of passed, failed, skipped, written test
  by test (benchmarks/pytest_progress.py), so a part killed at its limit keeps the counts of the
  tests that ended and names the one that was running; each test has a limit below its part's.
- tune: a 4-trial tune at --gpus-per-trial 0.25 on the embedded data, 1 epoch each: wall
  seconds and whether the four trials ran at the same time (their MLflow runs' spans).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(ROOT))  # orchestrator.plan's peak table, also without PYTHONPATH
BUDGET_S = 470  # all parts together, under the 8 minutes promised
# Each part's own limit, in the order run: the figures first (about a minute each on an H200),
# then the suite, then the tune (the suite's quarter-GPU test also covers it if time runs out).
PARTS = {"step": 150, "autoattack": 120, "pytest": 300, "tune": 150}


def run_part(name: str, limit: float) -> dict:
    """`--part name` in a fresh process group, killed whole at `limit` seconds. What the part
    wrote to its progress file as it went (the pytest part: each test's outcome) is in the result
    either way."""
    from pytest_progress import PROGRESS, counts  # beside this file

    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name]
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        progress = str(Path(d) / "progress.jsonl")
        env = {**os.environ, PROGRESS: progress, "GPU_CHECK_LIMIT_S": str(limit),
               "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=limit)
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            try:
                result = json.loads(lines[-1])
            except (IndexError, json.JSONDecodeError):
                result = {"error": f"exit {proc.returncode} without a result", "tail": out[-2000:]}
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            result = {"error": f"timeout after {limit:.0f} s", "tail": out[-2000:]}
        if Path(progress).exists():
            result.update(counts(progress))
    result["seconds"] = round(time.perf_counter() - t, 1)
    return result


def device_info() -> dict:
    import torch
    from orchestrator.plan import gpu_model
    if not torch.cuda.is_available():
        return {"cuda": False}
    p = torch.cuda.get_device_properties(0)
    return {"cuda": True, "name": p.name, "part": gpu_model(p.name) or "unknown",
            "memory_gib": round(p.total_memory / 2**30, 1),
            "capability": f"{p.major}.{p.minor}", "torch": torch.__version__,
            "cuda_runtime": torch.version.cuda, "host": platform.node()}


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "--part":
        import gpu_parts  # beside this file (the script's folder is on sys.path)
        print(json.dumps(getattr(gpu_parts, argv[1])()))
        return 0
    out = Path(argv[0]) if argv else Path(os.environ.get("OUT", ".")) / "gpu_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"device": device_info(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                time.gmtime()), "parts": {}}
    deadline = time.perf_counter() + BUDGET_S
    for name, limit in PARTS.items():
        left = deadline - time.perf_counter()
        if left < 20:
            report["parts"][name] = {"error": "skipped: the 8-minute budget is spent"}
        else:
            report["parts"][name] = run_part(name, min(limit, left))
        out.write_text(json.dumps(report, indent=2))
        print(f"{name}: {json.dumps(report['parts'][name])[:300]}", flush=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
