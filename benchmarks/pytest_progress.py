"""A pytest plugin for gpu_check's pytest part (`-p pytest_progress`): what survives a kill, and a
time limit per test.

- Each test's start and outcome is appended to $GPU_CHECK_PROGRESS as one JSON line, flushed as it
  happens, so a part killed at its limit still has the counts of every test that ended (pytest's
  --junitxml is written when the session ends: a killed run leaves no file at all) and names the
  test that was running.
- $GPU_CHECK_TEST_LIMIT_S (seconds, 0 = none): a test running longer fails with a TimeoutError
  (SIGALRM in the main thread) and the next one starts, so one hung test cannot use up its part.
  Code that blocks signals (a stuck CUDA call) is still cut off by the part's own limit.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

PROGRESS = "GPU_CHECK_PROGRESS"
TEST_LIMIT = "GPU_CHECK_TEST_LIMIT_S"


def _write(record: dict) -> None:
    path = os.environ.get(PROGRESS)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def pytest_runtest_logstart(nodeid, location):
    _write({"test": nodeid, "event": "start", "time": time.time()})


def pytest_runtest_logreport(report):
    """One outcome per phase that decides one: the call's, a skip or failure in setup (error),
    a failure in teardown (error), as pytest's own summary counts them."""
    if report.when == "call":
        outcome = report.outcome
    elif report.skipped:
        outcome = "skipped"
    elif report.failed:
        outcome = "error"
    else:
        return
    _write({"test": report.nodeid, "event": outcome, "seconds": round(report.duration, 2)})


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    limit = float(os.environ.get(TEST_LIMIT) or 0)
    if limit <= 0:
        return (yield)

    def expire(signum, frame):
        raise TimeoutError(f"{item.nodeid} ran past its {limit:.0f} s limit ({TEST_LIMIT})")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        return (yield)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def counts(path: str) -> dict:
    """Outcome counts from a progress file: passed, failed, skipped, errors, the failed tests'
    ids, and `unfinished`: tests that started and never ended (running when the part was
    killed)."""
    started, ended, out = [], set(), {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    failed = []
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut off by the kill
            continue
        if rec["event"] == "start":
            started.append(rec["test"])
            continue
        ended.add(rec["test"])
        key = "errors" if rec["event"] == "error" else rec["event"]  # "error" is the part's
        out[key] = out.get(key, 0) + 1
        if rec["event"] in ("failed", "error"):
            failed.append(rec["test"])
    return {**out, "failed_tests": failed,
            "unfinished": [t for t in started if t not in ended]}
