"""The paper's recipe end to end on the CPU: `ablate --space methods` and `tune --space full` on
CIFAR files in the real format (random images, written here), with the paper's architectures,
ResNet-18 <- WRN-34-10 and MobileNetV2 <- WRN-28-10, through real Ray Tune and MLflow.

WRN-34-10 costs 13 GFLOP per image forward, so everything is tiny: 12 training images of which 4
are held out, batches of 4, one attack step, one epoch, 4 test images, clean accuracy only (cam_dist
still runs PGD-20 with the teacher). Every method of Table 3 trains, checkpoints (Ray's per-epoch
checkpoint), is evaluated and logged once across the two architecture pairs. The ResNet-18 run
trains its WRN-34-10 teacher (PGD-AT, one epoch) as a user's first run would, is interrupted after
its first finished trial and resumed with --resume; the other runs distil from a WRN checkpoint
with random weights (`--teacher PATH`: no teacher training). CIFAR-100 goes through the same path
and gets its reference defaults (RSLAD scale 10, AdaAD batchmean).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cli
from test_data import _dump
from test_orchestrator_runs import finished_trials

pytestmark = pytest.mark.slow

TINY = ["--epochs", "1", "--teacher-epochs", "1", "--eval-n", "4", "--attacks", "clean",
        "--no-report", "--max-concurrent", "2",
        *[a for kv in ("train_size=12", "val_size=4", "batch_size=4", "attack_steps=1",
                       "val_pgd_steps=1") for a in ("--set", kv)]]
PAIRS = {"resnet18": "wrn34_10", "mobilenetv2": "wrn28_10"}
# Table 3's methods, each once across the two architecture pairs (all of them on both would
# take twice the time)
SPLIT = {"resnet18": ["pgd_at", "trades", "ard", "iad", "rslad"],
         "mobilenetv2": ["adaad", "mtard", "smaraad", "smaraad_pp"]}


def write_cifar(root: Path, dataset: str, n_train: int = 12, n_test: int = 4, seed: int = 0):
    """CIFAR-10 or CIFAR-100 in torchvision's layout: Python-2 pickles of uint8 rows, random
    images, random labels."""
    rng = np.random.default_rng(seed)
    k = 10 if dataset == "cifar10" else 100
    label = "labels" if k == 10 else "fine_labels"

    def part(n):
        return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                label.encode(): [int(v) for v in rng.integers(0, k, n)]}

    if k == 10:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for b in range(5):
            _dump(folder / f"data_batch_{b + 1}", part(n_train // 5 + (b < n_train % 5)))
        _dump(folder / "test_batch", part(n_test))
        _dump(folder / "batches.meta", {b"label_names": [b"c%d" % i for i in range(10)]})
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        _dump(folder / "train", part(n_train))
        _dump(folder / "test", part(n_test))
        _dump(folder / "meta", {b"fine_label_names": [b"f%d" % i for i in range(100)]})


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Both data sets, with torchvision's md5 check relaxed for test-written files (the trials get
    the data from the driver, so relaxing it in this process is enough)."""
    import torchvision.datasets.cifar as tv_cifar

    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root, "cifar10")
    write_cifar(root, "cifar100", seed=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tv_cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
        yield root


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def teacher_file(tmp: Path, arch: str, num_classes: int) -> list[str]:
    """--teacher PATH: a checkpoint of `arch` with random weights, in the project's format."""
    from smaraad.models import build_model, save_checkpoint

    path = tmp / f"{arch}-{num_classes}.pt"
    save_checkpoint(str(path), build_model(arch, num_classes=num_classes))
    return ["--teacher", str(path)]


def argv(tmp: Path, root: Path, name: str, dataset: str, student: str) -> list[str]:
    return ["--dataset", dataset, "--data-root", str(root), "--student", student,
            "--teacher-arch", PAIRS[student], "--name", name, "--storage-path", str(tmp / "ray"),
            "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", *TINY]


def children(tmp: Path, name: str):
    c = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    exp = c.get_experiment_by_name(name)
    return [r for r in c.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]


def check_trained_and_evaluated(c_runs, methods, student):
    assert sorted(r.data.params["method"] for r in c_runs) == sorted(methods)
    for run in c_runs:
        m = run.data.metrics
        assert run.info.status == "FINISHED" and run.data.tags["smaraad.completed"] == "true"
        assert run.data.params["student"] == student and m["n"] == 4
        for key in ("train/loss", "val/clean_acc", "val/pgd_acc", "test/clean_acc"):
            assert key in m and np.isfinite(m[key]), (run.data.params["method"], key)
        if run.data.params["method"] not in ("pgd_at", "trades"):
            assert "test/cam_dist" in m  # the teacher's CAMs: Eq. 6 on the real teacher


class Interrupt:
    """Sends SIGUSR1 (Ray Tune's own stop signal, like Ctrl-C) once the first trial finished."""

    def __init__(self, db: Path):
        self.db, self.done, self.sent = db, threading.Event(), False
        self.previous = signal.signal(signal.SIGUSR1, lambda *a: None)  # never the default: exit
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self):
        while not self.done.wait(0.5):
            if finished_trials(self.db):
                os.kill(os.getpid(), signal.SIGUSR1)
                self.sent = True
                return

    def stop(self):
        self.done.set()
        self.thread.join()
        signal.signal(signal.SIGUSR1, self.previous)


def test_resnet18_wrn34_methods_interrupted_resumed_and_tuned(workdir, data_root, capsys):
    """ResNet-18 <- WRN-34-10 (the teacher trained here for one epoch, cached): half of Table 3's
    methods, stopped after the first finished trial and resumed; then `tune --space full`."""
    from orchestrator import ablate, tune

    methods = SPLIT["resnet18"]
    args = [*argv(workdir, data_root, "r18", "cifar10", "resnet18"), "--space", "methods",
            "--seeds", "0", "--variants", ",".join(methods), "--max-concurrent", "1"]
    interrupt = Interrupt(workdir / "mlflow.db")
    try:
        code, out, err = run_cli(ablate.main, args, capsys)
    finally:
        interrupt.stop()
    assert interrupt.sent and code == 1 and "--resume --name r18" in err, (code, err[-2000:])
    assert 0 < len([r for r in children(workdir, "r18")
                    if r.data.tags.get("smaraad.completed") == "true"]) < len(methods)
    code, out, err = run_cli(ablate.main, [*args, "--resume"], capsys)
    assert code == 0, err[-2000:]
    runs = children(workdir, "r18")
    assert len({r.data.tags["smaraad.trial_id"] for r in runs}) == len(runs)  # no duplicates
    check_trained_and_evaluated([r for r in runs if r.info.status == "FINISHED"], methods,
                                "resnet18")

    code, out, err = run_cli(tune.main, [*argv(workdir, data_root, "full", "cifar10", "resnet18"),
                                         "--space", "full", "--num-samples", "1"], capsys)
    assert code == 0, err[-2000:]
    assert "teacher: cached wrn34_10" in out  # the ablation's teacher, reused
    runs = children(workdir, "full")
    assert len(runs) == 1 and all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.params["method"] for r in runs} == {"smaraad_pp"}


def test_mobilenetv2_wrn28_other_methods(workdir, data_root, capsys):
    """MobileNetV2 <- WRN-28-10: the other half of Table 3, MTARD with its natural teacher."""
    from orchestrator import ablate

    methods = SPLIT["mobilenetv2"]
    code, out, err = run_cli(ablate.main, [*argv(workdir, data_root, "mnv2", "cifar10",
                                                 "mobilenetv2"), "--space", "methods",
                                           *teacher_file(workdir, "wrn28_10", 10),
                                           "--seeds", "0", "--variants", ",".join(methods)], capsys)
    assert code == 0, err[-2000:]
    check_trained_and_evaluated(children(workdir, "mnv2"), methods, "mobilenetv2")


def test_cifar100_through_the_same_path_with_its_defaults(workdir, data_root, capsys):
    """CIFAR-100: 100-class models, and RSLAD's scale 10 / AdaAD's batchmean by default, with
    --set reaching only the methods that have the key."""
    from orchestrator import ablate

    methods = ["rslad", "adaad"]
    code, out, err = run_cli(ablate.main, [*argv(workdir, data_root, "c100", "cifar100",
                                                 "resnet18"), "--space", "methods",
                                           *teacher_file(workdir, "wrn34_10", 100),
                                           "--seeds", "0", "--variants", ",".join(methods),
                                           "--set", "log_eps=0"], capsys)
    assert code == 0, err[-2000:]
    runs = {r.data.params["method"]: r for r in children(workdir, "c100")}
    check_trained_and_evaluated(list(runs.values()), methods, "resnet18")
    assert float(runs["rslad"].data.params["scale"]) == 10.0
    assert float(runs["rslad"].data.params["log_eps"]) == 0.0
    assert runs["adaad"].data.params["kl_reduction"] == "batchmean"
    assert "log_eps" not in runs["adaad"].data.params


def test_trials_tune_never_began_count_as_interrupted():
    """An experiment stopped before Tune created some trials must not look complete."""
    from trainables.driver import not_started

    done = {"config": {"method": "ard", "seed": 0}, "metrics": {"completed": 1}, "status": "done"}
    missing = not_started([done], [{"method": "ard"}, {"method": "iad"}], (0, 1), 1)
    assert [(m["config"], m["status"]) for m in missing] == [
        ({"method": "ard", "seed": 1}, "interrupted"), ({"method": "iad", "seed": 0}, "interrupted"),
        ({"method": "iad", "seed": 1}, "interrupted")]
    assert len(not_started([done], [], (0,), 3)) == 2 and not not_started([done], [], (0,), 1)
