"""benchmarks/gpu_check.sh without CUDA: one clear line, exit 2, nothing written."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the script would run")
def test_gpu_check_refuses_without_cuda(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); "
        "run it on a GPU machine"]
    assert not out.exists()


def test_gpu_check_names_a_python_without_torch(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHON": "/bin/false"})
    assert done.returncode == 2 and "cannot import torch" in done.stderr
    assert list(tmp_path.iterdir()) == []
