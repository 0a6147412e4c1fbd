"""An orchestrator experiment read back from MLflow as a tidy table: one row per trial.

The layout is the one trainables/tracking.py writes: an MLflow experiment holding one parent run
(tags `smaraad.kind`, `smaraad.metric`, ...; the teacher as artifact `teacher/<file>.pt`) and one
nested child run per trial (tags `smaraad.trial_id`, `variant`, `smaraad.completed`; per-epoch
metrics with step = epoch; final test metrics; `student.pt`). This module is the only place in
analysis/ that talks to MLflow; everything downstream works on the pandas frame it returns.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from smaraad.errors import UserError
from smaraad.paths import default_tracking_uri, fail_fast_tracking

PARENT_TAG = "mlflow.parentRunId"
KIND_TAG = "smaraad.kind"


class TrackingError(UserError):
    """The tracking URI names no store that can be read."""


class ExperimentError(UserError):
    """The experiment is unknown, is not an orchestrator experiment, or has nothing to report."""


SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "file", "databricks")


def connect(uri: str) -> MlflowClient:
    """A client for `uri`, or one clear error; never creates a store that was not there."""
    parsed = urlparse(uri)
    if parsed.scheme not in SCHEMES:
        raise TrackingError(f"--tracking-uri {uri}: unsupported scheme {parsed.scheme!r}; "
                            "allowed: sqlite:///PATH, http(s)://HOST:PORT, postgresql://, mysql://")
    if parsed.scheme == "sqlite":
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():  # MLflow would silently create an empty database here
            raise TrackingError(f"--tracking-uri {uri}: no MLflow database at {path}")
    elif parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout=3).close()
        except OSError:
            raise TrackingError(f"--tracking-uri {uri}: no MLflow server answers at "
                                f"{parsed.hostname}:{port}") from None
        fail_fast_tracking(uri)
    try:  # a missing database driver, a refused login, a file store MLflow refuses
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - any failure here is the URI's, said in one line
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise TrackingError(f"--tracking-uri {uri}: cannot read the store ({reason})") from None
    return client


@dataclass
class RunsTable:
    """Every trial of one experiment (`trials`, one row each) and its parent run's tags/params.

    `trials` columns: run_id, run_name, status (MLflow's), trial_id, variant, seed, completed
    (the final evaluation ran), stopped_early, flags, error, start_time (ms), then `params.<k>`
    (strings as MLflow holds them; the full flat config, see `_row`), `metrics.<k>` (each
    metric's last value: the final evaluation for `test/*`, the last epoch for `val/*`) and
    `tags.<k>`.
    """
    experiment: str
    tracking_uri: str
    parent_id: str
    parent_tags: dict
    parent_params: dict
    trials: pd.DataFrame
    client: MlflowClient = field(repr=False)

    @property
    def kind(self) -> str:
        return self.parent_tags.get(KIND_TAG, "")

    @property
    def metric(self) -> str:
        return self.parent_tags.get("smaraad.metric", "val/pgd_acc")

    @property
    def mode(self) -> str:
        return self.parent_tags.get("smaraad.mode", "max")

    def search_space(self) -> dict:
        """The tune space's distributions, {key: {distribution, low, high, values}}, from the
        parent's `smaraad.search_space` tag ({} for a grid, or a run logged before the tag)."""
        try:
            space = json.loads(self.parent_tags.get("smaraad.search_space") or "{}")
        except json.JSONDecodeError:
            return {}
        return space if isinstance(space, dict) else {}

    def keys(self, tag: str) -> list[str]:
        """A comma-list tag of the parent (search_keys, grid_keys, objectives) as a list."""
        return [k for k in self.parent_tags.get(f"smaraad.{tag}", "").split(",") if k]

    @property
    def finished(self) -> pd.DataFrame:
        """Trials whose final test evaluation ran (ASHA-stopped and failed ones did not)."""
        return self.trials[self.trials["completed"]]

    def histories(self, metric: str) -> pd.DataFrame:
        """Per-epoch values of `metric` for every trial: columns run_id, trial_id, step, value."""
        rows = [(r.run_id, r.trial_id, m.step, m.value)
                for r in self.trials.itertuples()
                for m in self.client.get_metric_history(r.run_id, metric)]
        frame = pd.DataFrame(rows, columns=["run_id", "trial_id", "step", "value"])
        return frame.sort_values(["trial_id", "step"], ignore_index=True)

    def download(self, run_id: str, path: str, dst: str | os.PathLike) -> str | None:
        """A run's artifact file copied to `dst`, or None when the run has none at `path`."""
        try:
            return self.client.download_artifacts(run_id, path, str(dst))
        except (MlflowException, OSError):
            return None

    def teacher_artifact(self) -> str | None:
        """The parent's `teacher/<file>` artifact path, if the teacher was small enough to log."""
        files = [f.path for f in self.client.list_artifacts(self.parent_id, "teacher")
                 if not f.is_dir]
        return files[0] if files else None


def load_runs(experiment: str, tracking_uri: str | None = None) -> RunsTable:
    """Read `experiment` (its MLflow experiment name) into a RunsTable; UserError if impossible."""
    uri = tracking_uri or default_tracking_uri()
    c = connect(uri)
    try:
        exp = c.get_experiment_by_name(experiment)
        if exp is None:
            known = sorted(e.name for e in c.search_experiments() if e.name != "Default")
            raise ExperimentError(f"--experiment {experiment!r}: unknown in {uri}; known: "
                                  f"{', '.join(known) or '(none)'}")
        runs = _all_runs(c, exp.experiment_id)
    except MlflowException as exc:
        raise TrackingError(f"--tracking-uri {uri}: {str(exc).splitlines()[0]}") from None
    parents = [r for r in runs if KIND_TAG in r.data.tags and PARENT_TAG not in r.data.tags]
    if not parents:
        raise ExperimentError(f"--experiment {experiment!r}: no orchestrator parent run (tag "
                              f"{KIND_TAG}); it was not written by orchestrator.tune/ablate")
    parent = max(parents, key=lambda r: r.info.start_time)  # a reused name: the latest one
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    if not any(r.data.tags.get("smaraad.completed") == "true" for r in children):
        raise ExperimentError(f"--experiment {experiment!r}: no finished trials yet "
                              f"({len(children)} trial run(s), none with a final evaluation)")
    trials = pd.DataFrame([_row(r) for r in children]).sort_values("trial_id", ignore_index=True)
    return RunsTable(experiment, uri, parent.info.run_id, dict(parent.data.tags),
                     dict(parent.data.params), trials, c)


def _all_runs(c: MlflowClient, experiment_id: str) -> list:
    runs, token = [], None
    while True:
        page = c.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


@lru_cache(maxsize=None)
def _defaults(method: str) -> dict[str, str]:
    """The method's default config, serialised the way trainables/tracking.py logs params."""
    from smaraad.config import TrainConfig
    try:
        flat = TrainConfig.from_flat({"method": method}).to_flat()
    except UserError:  # a method this checkout no longer knows: keep what was logged
        warnings.warn(f"method {method!r} of a logged trial is unknown to this checkout: its "
                      "row holds only the params it logged, not its defaults", stacklevel=2)
        return {}
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in flat.items()}


def _row(run) -> dict:
    tags = run.data.tags
    # A trial logs only the values that differ from its method's defaults (the paper's point of
    # a sweep logs no gamma at all): lay them over the defaults to get every trial's full config.
    params = {**_defaults(run.data.params.get("method", "")), **run.data.params}
    seed = params.get("seed")
    return {
        "run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
        "trial_id": tags.get("smaraad.trial_id", run.info.run_id),
        # ablations tag the grid value; otherwise the method names the trial's kind
        "variant": tags.get("variant", params.get("method", "")),
        "seed": int(seed) if seed is not None and seed.lstrip("-").isdigit() else None,
        "completed": tags.get("smaraad.completed") == "true",
        "stopped_early": tags.get("smaraad.stopped_early", ""),
        "flags": tags.get("smaraad.flags", ""), "error": tags.get("smaraad.error", ""),
        "start_time": run.info.start_time,
        **{f"params.{k}": v for k, v in params.items()},
        **{f"metrics.{k}": v for k, v in run.data.metrics.items()},
        **{f"tags.{k}": v for k, v in tags.items()},
    }
