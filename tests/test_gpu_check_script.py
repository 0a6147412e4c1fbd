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


SIMULATED = '''
import signal, time
import pytest

def test_passes():
    pass

def test_fails():
    assert 1 == 2

@pytest.mark.skip(reason="simulated")
def test_skipped():
    pass

def test_{last}():
    if "{last}" == "hangs":  # as a stuck CUDA call would: signals blocked, never returns
        signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGALRM}})
    time.sleep(600)

def test_after():
    pass
'''


def run_pytest_part(tmp_path, monkeypatch, last: str, limit: float) -> dict:
    """gpu_check's pytest part on a simulated suite (no CUDA needed), with a part limit."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check

    tests = tmp_path / "test_simulated.py"
    tests.write_text(SIMULATED.format(last=last))
    monkeypatch.setenv("GPU_CHECK_TESTS", f"-p no:randomly {tests}")
    return gpu_check.run_part("pytest", limit)


def test_a_part_killed_at_its_limit_keeps_the_counts_of_the_tests_that_ended(
        tmp_path, monkeypatch):
    result = run_pytest_part(tmp_path, monkeypatch, "hangs", limit=40)
    assert result["error"] == "timeout after 40 s"
    assert (result["passed"], result["failed"], result["skipped"]) == (1, 1, 1)
    assert [t.split("::")[1] for t in result["failed_tests"]] == ["test_fails"]
    assert [t.split("::")[1] for t in result["unfinished"]] == ["test_hangs"]


def test_a_test_past_its_limit_fails_and_the_part_goes_on(tmp_path, monkeypatch):
    result = run_pytest_part(tmp_path, monkeypatch, "sleeps", limit=45)  # tests get 15 s
    assert "error" not in result and result["rc"] == 1
    assert (result["passed"], result["failed"], result["skipped"]) == (2, 2, 1)
    assert [t.split("::")[1] for t in result["failed_tests"]] == ["test_fails", "test_sleeps"]
    assert "ran past its 15 s limit" in result["tail"]
