"""`tune --address` on a real two-node Ray cluster, run as a user runs it: a subprocess that joins
a `ray start` cluster (token authentication on) and writes to a shared storage folder.

- both nodes run trials at once, logging to one MLflow server on PostgreSQL; every per-epoch
  metric of every trial is counted in the database afterwards;
- the worker node is killed in the middle of a trial: with --retries the trial continues from its
  last checkpoint on the surviving head node, in the same MLflow run, with no epoch missing;
- the driver is killed: `--resume` on the same cluster and storage completes every trial.

The space searches TRADES's beta (no teacher to train) with ASHA's grace period past the last
epoch, so no trial is stopped early and every trial must run all its epochs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from trainables.services import CLUSTER_SPACE, SMALL_RUN, stop_group

pytestmark = pytest.mark.slow
# The kill must land between a trial's 2nd epoch and its end (~1 s each on an idle CPU): the
# trial runs only between two looks at it, POLL_S apart, a fraction of an epoch however slow.
EPOCHS = 6
RUN_TIMEOUT_S = 400
POLL_S = 0.25


def start_tune(cluster, workdir: Path, storage: Path, name: str, tracking: str, *extra: str,
               epochs: int = EPOCHS):
    space = workdir / "cluster_space.yaml"
    space.write_text(CLUSTER_SPACE)
    argv = [sys.executable, "-m", "orchestrator.tune", "--space", str(space), "--smoke-test",
            "--num-samples", "2", "--epochs", str(epochs), *SMALL_RUN,
            "--address", cluster.address, "--storage-path", str(storage),
            "--tracking-uri", tracking, "--name", name, "--no-report", *extra]
    log = open(workdir / f"{name}-{int(time.time() * 1000)}.log", "wb")
    proc = subprocess.Popen(argv, cwd=workdir, env={**cluster.env, "OMP_NUM_THREADS": "1"},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = Path(log.name)
    log.close()
    return proc


def finish(proc, timeout: float = RUN_TIMEOUT_S) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(proc, signal.SIGKILL)
    out = proc.log_path.read_text()
    assert proc.returncode == 0, out[-4000:]
    return out


def trial_runs(c: MlflowClient, name: str) -> list:
    exp = c.get_experiment_by_name(name)
    if exp is None:
        return []
    return [r for r in c.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]


def epochs_logged(c: MlflowClient, run) -> list[int]:
    return sorted(m.step for m in c.get_metric_history(run.info.run_id, "val/pgd_acc"))


def wait_for(condition, proc, what: str, timeout: float = RUN_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"the tune command ended before {what}:\n"
                        + proc.log_path.read_text()[-4000:])
        time.sleep(POLL_S)
    stop_group(proc, signal.SIGKILL)
    pytest.fail(f"timed out waiting for {what}")


def test_a_driver_with_a_wrong_token_is_refused_in_one_line(ray_cluster, tmp_path):
    env = {k: v for k, v in ray_cluster.env.items() if not k.startswith("RAY_AUTH")}
    # a token of the wrong cluster, and Ray's GCS connection retries cut from ~20 s to 2
    env.update(RAY_AUTH_TOKEN="0" * 64, RAY_gcs_server_port_wait_time_s="2")
    argv = [sys.executable, "-m", "orchestrator.tune", "--smoke-test", "--address",
            ray_cluster.address, "--storage-path", str(tmp_path / "ray"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr
    assert f"--address {ray_cluster.address}" in errors[0] and "RAY_AUTH_TOKEN" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def test_killed_driver_resumes_on_the_same_cluster(ray_cluster, shared_storage, tmp_path):
    tracking = f"sqlite:///{shared_storage / 'driver-kill.db'}"
    c = MlflowClient(tracking_uri=tracking)
    name = "driver-kill"
    args = (ray_cluster, tmp_path, shared_storage / "ray", name, tracking)
    proc = start_tune(*args, epochs=3)
    wait_for(lambda: any(epochs_logged(c, r) for r in trial_runs(c, name)), proc,
             "a trial logged its first epoch")
    stop_group(proc, signal.SIGKILL)  # the driver only: the cluster lives on

    out = finish(start_tune(*args, "--resume", epochs=3))
    assert "interrupted" not in out
    runs = trial_runs(c, name)
    trial_ids = [r.data.tags["smaraad.trial_id"] for r in runs]
    assert len(trial_ids) == 2 and len(set(trial_ids)) == 2  # no second run per trial
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["smaraad.completed"] == "true"
        assert set(epochs_logged(c, run)) == {1, 2, 3}


def test_both_nodes_log_to_postgres_and_a_lost_node_loses_no_epoch(
        ray_cluster, postgres, postgres_tracking, shared_storage, tmp_path):
    if "worker0" not in ray_cluster.procs:  # a test before this one lost it
        ray_cluster.add_worker("worker0", 1)
    c = MlflowClient(tracking_uri=postgres_tracking)
    head, worker = ray_cluster.node_ids["head"], ray_cluster.node_ids["worker0"]
    name = "lost-node"
    proc = start_tune(ray_cluster, tmp_path, shared_storage / "ray", name, postgres_tracking,
                      "--retries", "1")
    seen_nodes: set[str] = set()

    def victim_mid_trial():
        """Looked for with the worker node's trials paused, so none can pass the window while
        the database is read; once found, the node stays frozen."""
        with ray_cluster.workers_paused("worker0"):
            runs = trial_runs(c, name)
            seen_nodes.update(r.data.tags.get("smaraad.node_id") for r in runs)
            victim = next((r for r in runs if r.data.tags.get("smaraad.node_id") == worker
                           and "smaraad.completed" not in r.data.tags
                           and 2 <= len(epochs_logged(c, r)) < EPOCHS), None)
            if victim:
                ray_cluster.freeze("worker0")  # from here on the victim writes nothing
        return victim

    try:
        victim = wait_for(victim_mid_trial, proc, "a trial on the worker node logged its 2nd epoch")
        # the driver hears of the loss once Ray has marked the node dead, so that Ray's message
        # reaches it before the run can end
        os.killpg(proc.pid, signal.SIGSTOP)
        try:
            ray_cluster.kill("worker0")  # its checkpoint of epoch 1 at least is in the storage
            ray_cluster.wait_for_nodes()
        finally:
            os.killpg(proc.pid, signal.SIGCONT)
        out = finish(proc)
    finally:
        if proc.poll() is None:
            stop_group(proc, signal.SIGKILL)
    assert seen_nodes - {None} == {head, worker}  # both nodes ran a trial at the same time

    # one line each, in our words, for the lost node and the retry; Ray's words in the log file
    log = shared_storage / "ray" / name / "ray_errors.log"
    for ray_words in ("Traceback", "Trial task failed", "ActorUnavailableError", "(raylet)",
                      "marked dead because"):
        assert ray_words not in out, (ray_words, out[-4000:])
    lost = [ln for ln in out.splitlines() if ln.startswith("node ")]
    assert len(lost) == 1 and lost[0].startswith(f"node {worker[:8]} ") and " lost: " in lost[0]
    assert lost[0].endswith(f"Ray's message: {log}")
    trial_id = victim.data.tags["smaraad.trial_id"]
    retried = [ln for ln in out.splitlines() if ln.startswith(f"trial {trial_id}  failed")]
    assert len(retried) == 1, out[-4000:]
    assert re.fullmatch(rf"trial {trial_id}  failed on node {worker[:8]} \S+ after epoch \d "
                        r"\(its node or its worker process was lost\): retry 1 of 1 from epoch "
                        rf"\d's checkpoint, 0 left; Ray's traceback: {re.escape(str(log))}",
                        retried[0]), retried[0]
    written = log.read_text()
    assert "Trial task failed" in written and "Traceback" in written and worker in written

    runs = trial_runs(c, name)
    trial_ids = sorted(r.data.tags["smaraad.trial_id"] for r in runs)
    assert len(trial_ids) == 2 and len(set(trial_ids)) == 2  # one MLflow run per trial
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["smaraad.completed"] == "true"
        steps = epochs_logged(c, run)
        assert set(steps) == set(range(1, EPOCHS + 1)), steps  # no epoch lost
        assert steps.count(1) == 1  # continued from a checkpoint, not started over
        assert len(c.get_metric_history(run.info.run_id, "test/pgd20_acc")) == 1  # finished once
    again = next(r for r in runs if r.info.run_id == victim.info.run_id)
    assert again.data.tags["smaraad.node_id"] == head  # its last epochs ran on the survivor

    # the database itself holds every per-epoch metric of every trial: trials x epochs each
    import psycopg
    with psycopg.connect(postgres.uri) as db:
        rows = db.execute("SELECT key, COUNT(DISTINCT (run_uuid, step)) FROM metrics "
                          "WHERE run_uuid = ANY(%s) AND step >= 1 GROUP BY key",
                          ([r.info.run_id for r in runs],)).fetchall()
    counts = dict(rows)
    for key in ("val/pgd_acc", "val/clean_acc", "train/loss", "lr"):
        assert counts[key] == 2 * EPOCHS, (key, counts)
    # checkpoints and artifacts from both nodes lie on the shared storage
    for trial_id in trial_ids:
        assert list((shared_storage / "ray" / name).glob(f"*{trial_id}*/checkpoint_*"))
    assert len(list((shared_storage / "mlflow-artifacts").rglob("student.pt"))) == 2
