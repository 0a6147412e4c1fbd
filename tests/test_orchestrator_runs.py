"""End to end on the CPU: real Ray Tune, Optuna, ASHA and a SQLite MLflow store in a tmp folder.

Each experiment is a --smoke-test run (2 epochs, 1500 embedded images, 64 test images) so the
whole module stays around a few minutes on 2 cores.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cli
from trainables.services import kill_tree

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def common(tmp: Path, name: str) -> list[str]:
    return ["--smoke-test", "--name", name, "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}",
            "--storage-path", str(tmp / "ray"), "--no-report"]


def runs_of(tmp: Path, name: str):
    c = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    exp = c.get_experiment_by_name(name)
    runs = c.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return c, parents, children


def test_smoke_ablate_leaves_a_parent_with_its_trials(workdir, capsys):
    from orchestrator import ablate

    code, out, err = run_cli(ablate.main, [*common(workdir, "abl"), "--variants", "kd,sm_align",
                                           "--aa-n", "16"], capsys)
    assert code == 0, err
    assert "mean +- std" in out and "sm_align" in out
    progress = [ln for ln in out.splitlines() if ln.startswith("trial ")]
    assert sum(" epoch 2/2 " in ln and "method=sm_align" in ln for ln in progress) == 1
    assert sum(" evaluated " in ln and "test/aa_acc" in ln for ln in progress) == 2
    c, parents, children = runs_of(workdir, "abl")
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.data.tags["smaraad.kind"] == "ablate"
    assert parent.data.tags["git_commit"] and parent.data.tags["versions.torch"]
    assert {r.data.tags["variant"] for r in children} == {"kd", "sm_align"}
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED"
        assert run.data.params["method"] == run.data.tags["variant"]
        assert run.data.params["seed"] == "0" and run.data.params["student"] == "small_cnn"
        for key in ("test/clean_acc", "test/fgsm_acc", "test/pgd20_acc", "test/cw_acc",
                    "test/aa_acc", "test/cam_dist", "teacher/val_pgd_acc",
                    "teacher/eval_pgd20_acc", "aa/pgd20_acc"):
            assert key in run.data.metrics, key
        assert (run.data.metrics["n"], run.data.metrics["aa/n"]) == (64, 16)  # --aa-n of 64
        assert run.data.tags["smaraad.training_precision"] in ("bf16", "fp32")
        history = c.get_metric_history(run.info.run_id, "val/pgd_acc")
        assert [m.step for m in history] == [1, 2]
        terms = [k for k in run.data.metrics if k.startswith("train/loss_")]
        assert "train/loss_const" in terms
        artifacts = {a.path for a in c.list_artifacts(run.info.run_id)}
        assert {"config.json", "student.pt", "best.pt"} <= artifacts
        # the best-on-validation weights are scored too, on the same test images
        assert run.data.metrics["test/best_epoch"] in (1, 2)
        assert 0 <= run.data.metrics["test/best_pgd20_acc"] <= run.data.metrics[
            "test/best_clean_acc"] <= 1
        if run.data.metrics["test/best_epoch"] == 2:  # best = last: the same weights, same scores
            assert run.data.metrics["test/best_pgd20_acc"] == run.data.metrics["test/pgd20_acc"]
        assert run.data.metrics["time/train_s"] > 0 and run.data.metrics["memory/peak_mb"] > 0
        inputs = run.inputs.dataset_inputs  # the UI's Dataset column: one per split
        assert sorted(i.dataset.name for i in inputs) == ["embedded"] * 3


def test_smoke_tune_starts_from_the_papers_values(workdir):
    """As a user runs it (a process of its own, so that Ray's warnings reach its terminal if
    anything lets them): the output is ours, and its last line is the runs table's URL."""
    argv = [sys.executable, "-m", "orchestrator.tune", *common(workdir, "tun"), "--space",
            "gamma_alpha", "--num-samples", "3", "--max-concurrent", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for key in ("RAY_AUTH_MODE", "RAY_AIR_NEW_OUTPUT", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"):
        env.pop(key, None)  # the user's shell sets none of them
    done = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "best:" in out and "trial-epochs" in out
    for banner in ("Token authentication is", "TensorBoard", "View detailed results here",
                   "A new study created", "Creating initial MLflow database tables"):
        assert banner not in out, banner
    assert not list((workdir / "ray").rglob("events.out.tfevents*"))  # no TensorBoard files
    _, parents, children = runs_of(workdir, "tun")
    exp_id = parents[0].info.experiment_id
    assert done.stdout.strip().splitlines()[-1] == (
        f"runs: http://127.0.0.1:5000/#/experiments/{exp_id}/runs?workflowType=machine_learning"
        "&orderByKey=tags.%60mlflow.runName%60&orderByAsc=true")
    assert len(parents) == 1 and len(children) == 3
    assert parents[0].data.tags["smaraad.search_keys"] == "gamma,alpha"
    first = min(children, key=lambda r: r.info.start_time)
    # the paper's point first; searched values are logged even when they equal the default
    assert float(first.data.params["gamma"]) == 1000.0
    assert float(first.data.params["alpha"]) == 1.0
    assert first.data.params["rho_form"] == "pearson"  # the embedded preset's difference
    assert all(r.info.status == "FINISHED" for r in children)


def command(module: str, argv: list[str], workdir: Path) -> subprocess.CompletedProcess:
    """A command as a user runs it: a process of its own, its exit status and its terminal."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)


def failure_lines(out: str) -> list[str]:
    """Our lines for a failed or retried trial, after Ray's words were checked absent."""
    for ray_words in ("Traceback", "Trial task failed", "RayTaskError"):
        assert ray_words not in out, (ray_words, out[-4000:])
    return [ln for ln in out.splitlines() if re.match(r"trial \w+  (failed|FAILED) ", ln)]


def test_a_diverging_trial_fails_alone_and_ablate_exits_1(workdir):
    """lr 1e30 makes the loss non-finite in epoch 1 (trainer.DivergedError): that cell of the
    table is missing, so the command exits 1; its failure and its retry are one line each."""
    space = workdir / "nan.yaml"
    space.write_text("kind: grid\ngrid:\n  method: [kd]\n  lr: [0.05, 1.0e+30]\nseeds: [0]\n")
    done = command("orchestrator.ablate", [*common(workdir, "nan"), "--space", str(space),
                                           "--retries", "1"], workdir)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-4000:]
    assert "incomplete: cells of the table are missing: 1 of 2 trials did not finish " \
           "(1 failed); exit status 1" in done.stderr
    assert "1 trial(s) failed: see the tables above" in done.stdout
    log = workdir / "ray" / "nan" / "ray_errors.log"
    retry, final = failure_lines(out)
    assert re.fullmatch(r"trial \w+  failed on node \S+ \(DivergedError: loss is .*\): retry 1 of "
                        rf"1 from the start \(no checkpoint\), 0 left; Ray's traceback: {log}",
                        retry), retry
    assert re.fullmatch(r"trial \w+  FAILED on node \S+ \(DivergedError: loss is .*\), no "
                        rf"retries left; Ray's traceback: {log}", final), final
    written = log.read_text()
    assert written.count("Trial task failed") == 2 and "Traceback" in written
    # the per-variant table names the failed trial and its reason instead of leaving it out
    per_variant = done.stdout.split("mean +- std over seeds")[1].splitlines()
    assert per_variant[1].split()[-1] == "failed"
    assert "seed 0 failed:" in per_variant[3] and "loss is" in per_variant[3]
    _, _, children = runs_of(workdir, "nan")
    by_lr = {float(r.data.params.get("lr", 0.05)): r for r in children}
    assert by_lr[1e30].info.status == "FAILED"
    assert "loss is" in by_lr[1e30].data.tags["smaraad.error"]
    assert by_lr[0.05].info.status == "FINISHED"


def test_tune_exits_1_when_no_trial_finished(workdir):
    done = command("orchestrator.tune", [*common(workdir, "allnan"), "--num-samples", "1",
                                         "--set", "lr=1e30"], workdir)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-4000:]
    assert "incomplete: no trial finished: 1 of 1 trials did not finish (1 failed); " \
           "exit status 1" in done.stderr
    assert len(failure_lines(out)) == 1


def finished_trials(db: Path) -> int:
    """Read the store with sqlite3 directly: an MlflowClient here would race the experiment's own
    first-time creation of the tables."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("SELECT COUNT(*) FROM tags WHERE key = 'smaraad.completed' "
                               "AND value = 'true'").fetchone()[0]
    except sqlite3.Error:  # tables not created yet, or a writer holds the lock
        return 0


def test_killed_experiment_resumes_without_duplicates(workdir, capsys):
    """SIGKILL the driver (and its Ray processes) after the first finished trial, then resume."""
    name = "killed"
    argv = [sys.executable, "-m", "orchestrator.ablate", *common(workdir, name),
            "--variants", "kd,sm", "--seeds", "0,1", "--max-concurrent", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, cwd=workdir, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = workdir / "mlflow.db"
    try:
        deadline = time.time() + 400
        while time.time() < deadline:
            time.sleep(2)
            if proc.poll() is not None:
                pytest.fail("the experiment ended before it could be killed")
            if finished_trials(db):
                break
        else:
            pytest.fail("no trial finished in time")
    finally:
        kill_tree(proc)  # the driver, its local Ray instance and the trials' workers

    from orchestrator import ablate
    code, out, err = run_cli(ablate.main, [*common(workdir, name), "--resume", "--variants",
                                           "kd,sm", "--seeds", "0,1", "--max-concurrent", "1"],
                             capsys)
    assert code == 0, err
    _, parents, children = runs_of(workdir, name)
    assert len(parents) == 1
    trial_ids = [r.data.tags["smaraad.trial_id"] for r in children]
    assert len(trial_ids) == 4 and len(set(trial_ids)) == 4  # no duplicate child runs
    assert all(r.info.status == "FINISHED" for r in children)
    assert all(r.data.tags.get("smaraad.completed") == "true" for r in children)


def test_methods_space_smoke_run_reports_every_method(workdir, capsys):
    """Table 3 in one harness: every registered baseline and SmaraAD, one seed, with the report."""
    from orchestrator import ablate
    from orchestrator.spaces import load_space

    argv = [a for a in common(workdir, "methods") if a != "--no-report"]
    code, out, err = run_cli(ablate.main, [*argv, "--space", "methods", "--seeds", "0"], capsys)
    assert code == 0, err
    methods = [v["method"] for v in load_space("methods").variants]
    table = (workdir / "reports" / "methods" / "table.md").read_text()
    for method in methods:
        assert f"| {method} |" in table, method
    _, parents, children = runs_of(workdir, "methods")
    assert len(children) == len(methods)
    assert all(r.info.status == "FINISHED" for r in children)
    c = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    report = {a.path for a in c.list_artifacts(parents[0].info.run_id, "report")}
    assert "report/table.md" in report


def test_an_experiment_stops_only_the_ray_instance_it_started(workdir, capsys):
    """The command's local instance ends with its experiment (its report and summary need no
    Ray); an instance the caller started stays the caller's."""
    import ray
    from orchestrator import ablate

    argv = ["--variants", "kd", "--attacks", "clean"]
    code, _, err = run_cli(ablate.main, [*common(workdir, "own"), *argv], capsys)
    assert code == 0, err
    assert not ray.is_initialized()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    code, _, err = run_cli(ablate.main, [*common(workdir, "theirs"), *argv], capsys)
    assert code == 0, err
    assert ray.is_initialized()


def test_the_last_trial_takes_the_cores_the_others_freed(workdir, capsys):
    """Three trials, two at once with half the cores each: the third starts when the first
    ends, and once the second has ended too nothing waits, so it trains on every core (each
    epoch's report names the torch threads it trained with)."""
    import json

    from orchestrator import ablate
    from trainables.driver import cpu_count

    cores = cpu_count()
    if cores < 2:
        pytest.skip("one core: nothing to share")
    code, _, err = run_cli(ablate.main, [*common(workdir, "spare"), "--variants", "kd",
                                         "--seeds", "0,1,2", "--epochs", "5",
                                         "--max-concurrent", "2", "--attacks", "clean"], capsys)
    assert code == 0, err
    threads = []  # (when its first epoch ended, the threads of each epoch), per trial
    for result in (workdir / "ray" / "spare").glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines()]
        epochs = [r for r in rows if "epoch" in r and not r.get("completed")]
        threads.append((epochs[0]["timestamp"], [r["system/torch_threads"] for r in epochs]))
    first, second, last = (t for _, t in sorted(threads))
    assert first[0] == second[0] == last[0] == cores // 2  # their reservation meanwhile
    assert last[-1] == cores, threads
