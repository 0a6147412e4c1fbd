"""MLflow bookkeeping: one parent run per experiment, one nested child run per trial.

Child runs are found again by their `smaraad.trial_id` tag, so a trial that restarts (after a
crash, or when the whole experiment resumes) keeps logging into the same run instead of opening a
second one. Metrics go in one batched call per epoch (one call per metric costs ~75 ms on SQLite).
This package writes the runs; analysis/ reads them, and its report adds its files to the parent
run as artifacts (analysis/report.py).
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

TRIAL_TAG = "smaraad.trial_id"
PACKAGES = ("torch", "torchvision", "ray", "optuna", "mlflow", "pyautoattack")


def client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


LOCKED = ("locked",)  # SQLite refuses concurrent writers now and then ("database is locked")
# Two trials logging the same data set at once: MLflow's store looks the (experiment, name,
# digest) row up, finds none and inserts it in both, and the slower insert breaks the unique key
# (SQLite's "UNIQUE constraint failed", PostgreSQL's "duplicate key value"). Tried again, the
# store finds the row the other trial wrote and only links its run to it.
DATASET_RACE = (*LOCKED, "UNIQUE constraint failed", "duplicate key value")


def _retry(fn, *args, attempts: int = 8, transient: tuple = LOCKED, **kwargs):
    """Call fn; on an error whose message holds one of `transient`, back off and call it again."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # mlflow wraps sqlalchemy's errors in MlflowException
            if not any(t in str(exc) for t in transient) or i == attempts - 1:
                raise
            time.sleep(0.2 * 2 ** i)


def experiment_id(c: MlflowClient, name: str) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return _retry(c.create_experiment, name)


def provenance_tags() -> dict[str, str]:
    """The git commit and the package versions the experiment ran with."""
    tags = {f"versions.{p}": _version(p) for p in PACKAGES}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    tags["git_commit"] = commit or "unknown"
    return tags


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


@dataclass(frozen=True)
class Tracking:
    """Where a trial logs: picklable, handed to every trial through Ray's object store."""
    uri: str
    experiment_id: str
    parent_run_id: str


def start_parent(uri: str, experiment: str, *, run_name: str, tags: dict[str, str],
                 params: dict[str, Any]) -> Tracking:
    c = client(uri)
    exp_id = experiment_id(c, experiment)
    run = _retry(c.create_run, exp_id, run_name=run_name,
                 tags={**provenance_tags(), **tags})
    _retry(c.log_batch, run.info.run_id, params=[Param(k, _short(v)) for k, v in params.items()])
    return Tracking(uri, exp_id, run.info.run_id)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]


def find_trial_run(c: MlflowClient, tracking: Tracking, trial_id: str) -> list:
    return _retry(c.search_runs, [tracking.experiment_id],
                  filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and "
                                f"tags.`mlflow.parentRunId` = '{tracking.parent_run_id}'",
                  max_results=1)


class TrialRun:
    """The child run of one trial: created once, found again on restart."""

    def __init__(self, tracking: Tracking, trial_id: str, *, run_name: str, params: dict,
                 tags: dict[str, str]):
        self.c = client(tracking.uri)
        found = find_trial_run(self.c, tracking, trial_id)
        if found:
            self.run_id = found[0].info.run_id
            _retry(self.c.update_run, self.run_id, status="RUNNING")
            return
        run = _retry(self.c.create_run, tracking.experiment_id, run_name=run_name,
                     tags={"mlflow.parentRunId": tracking.parent_run_id, TRIAL_TAG: trial_id,
                           **tags})
        self.run_id = run.info.run_id
        _retry(self.c.log_batch, self.run_id,
               params=[Param(k, _short(v)) for k, v in params.items()])

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        _retry(self.c.log_batch, self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, Any]) -> None:
        _retry(self.c.log_batch, self.run_id,
               tags=[RunTag(k, _short(v)) for k, v in tags.items()])

    def log_dict(self, obj: dict, name: str) -> None:
        _retry(self.c.log_dict, self.run_id, obj, name)

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        _retry(self.c.log_artifact, self.run_id, path, artifact_path)

    def log_inputs(self, datasets: list) -> None:
        """Dataset inputs (MLflow DatasetInput); the store skips a (name, digest) the run holds,
        so a restarted trial can log them again; trials that log one data set at once are
        retried past the store's race (DATASET_RACE)."""
        _retry(self.c.log_inputs, self.run_id, datasets=datasets, transient=DATASET_RACE)

    def finish(self, status: str = "FINISHED") -> None:
        _retry(self.c.set_terminated, self.run_id, status=status)


def close_trial_run(tracking: Tracking, trial_id: str, *, status: str,
                    tags: dict[str, str] | None = None) -> None:
    """From the driver: end a trial's run that the trial itself could not end (a trial stopped by
    ASHA, or one that errored), unless it already ended."""
    c = client(tracking.uri)
    found = find_trial_run(c, tracking, trial_id)
    if not found:
        return
    run = found[0]
    if tags:
        _retry(c.log_batch, run.info.run_id, tags=[RunTag(k, _short(v)) for k, v in tags.items()])
    if run.info.status == "RUNNING":
        _retry(c.set_terminated, run.info.run_id, status=status)
