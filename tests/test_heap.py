"""A trial's allocator keeps what it frees (trainables/heap.py): a step's activations reuse the
previous step's pages instead of faulting fresh ones in. Each case runs in a new interpreter,
since malloc's thresholds are per process and cannot be set back."""

import json
import platform
import subprocess
import sys

import pytest

from trainables.heap import keep_freed_heap

PROBE = """
import json, resource, sys, threading
import torch
from trainables.heap import keep_freed_heap
torch.set_num_threads(1)
kept = keep_freed_heap() if sys.argv[1] == "keep" else None
def faults():
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
def steps(out):
    torch.empty(1 << 20).fill_(1.0)   # 4 MiB, mmap-served and freed: glibc's trim -> 8 MiB
    for _ in range(8):                # a step: 12 MiB of activations from the heap, freed
        before = faults()
        xs = [torch.empty(1 << 19).fill_(1.0) for _ in range(6)]
        del xs
        out.append(faults() - before)
out = []
t = threading.Thread(target=steps, args=(out,))   # Ray Tune runs a trial in a thread
t.start(); t.join()
print(json.dumps({"kept": kept, "faults": out}))
"""


def probe(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], check=True, text=True,
                          capture_output=True)
    return json.loads(done.stdout)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc's malloc thresholds")
def test_a_trial_thread_reuses_freed_activations_instead_of_faulting_them_in():
    default, kept = probe("default"), probe("keep")
    assert kept["kept"] is True
    steady = slice(4, None)  # after the first steps have grown the heap
    # glibc by default trims the 12 MiB back to the kernel after every step...
    assert min(default["faults"][steady]) > 1000, default
    # ...and with the thresholds fixed, later steps touch no new page
    assert sum(kept["faults"][steady]) < 100, kept


def test_elsewhere_than_glibc_it_does_nothing(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert keep_freed_heap() is False
