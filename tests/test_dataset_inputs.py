"""A trial's data set as MLflow dataset inputs, on a real SQLite store: one per split, named
after the data set, each with its own digest, its context and its size."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from smaraad.config import TrainConfig
from smaraad.data import load_data
from smaraad.data import split_digest
from trainables.tracking import TrialRun, start_parent
from trainables.trial import log_dataset


def test_a_trial_run_holds_its_splits_as_dataset_inputs(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = start_parent(uri, "inputs-1", run_name="p", tags={"smaraad.kind": "ablate"},
                            params={})
    run = TrialRun(tracking, "t0", run_name="t0", params={"seed": 0}, tags={})
    data = load_data("embedded", n_train=60, val_size=20)
    cfg = TrainConfig.from_flat({"method": "kd", "dataset": "embedded"})
    log_dataset(run, cfg, data)
    log_dataset(run, cfg, data)  # a restarted trial logs again: nothing is added twice

    inputs = MlflowClient(uri).get_run(run.run_id).inputs.dataset_inputs
    by_context = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i
                  for i in inputs}
    assert len(inputs) == 3 and set(by_context) == {"training", "validation", "testing"}
    sizes = {"training": 40, "validation": 20, "testing": 1000}
    for context, split in (("training", data.train), ("validation", data.val),
                           ("testing", data.test)):
        d = by_context[context].dataset
        assert d.name == "embedded" and d.digest == split_digest(*split)
        assert json.loads(d.profile)["features_shape"][0] == sizes[context]
        assert {t.key: t.value for t in by_context[context].tags}["smaraad.split_size"] == \
            str(sizes[context])
        assert json.loads(d.source)["tags"]["dataset"] == "embedded"
    assert len({i.dataset.digest for i in inputs}) == 3


def test_the_digest_changes_with_one_pixel_or_one_label():
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    labels = torch.arange(4)
    base = split_digest(images, labels)
    moved = images.clone()
    moved[3, 2, 7, 7] = 1  # the last pixel: MLflow's own digest would not see it on a big split
    assert split_digest(moved, labels) != base
    assert split_digest(images, labels.flip(0)) != base
    assert split_digest(images, labels) == base and len(base) == 16


def _log_one_trial(uri: str, parent: dict, trial_id: str, start) -> None:
    """One trial process: its own run, then the shared data set logged when every trial is ready."""
    from trainables.tracking import Tracking
    run = TrialRun(Tracking(**parent), trial_id, run_name=trial_id, params={}, tags={})
    data = load_data("embedded", n_train=60, val_size=20)
    start.wait()
    log_dataset(run, TrainConfig.from_flat({"method": "kd", "dataset": "embedded"}), data)


def test_trials_that_log_one_data_set_at_once_all_hold_it(tmp_path):
    """MLflow's store looks a data set up and inserts it when absent: trials starting together
    race on that insert, and the loser's unique-key error must not fail its trial."""
    import multiprocessing as mp

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = start_parent(uri, "inputs-race", run_name="p", tags={"smaraad.kind": "ablate"},
                          params={})
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(4)
    procs = [ctx.Process(target=_log_one_trial, args=(uri, parent.__dict__, f"t{i}", start))
             for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 4
    c = MlflowClient(uri)
    runs = [r for r in c.search_runs([c.get_experiment_by_name("inputs-race").experiment_id])
            if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 4
    for r in runs:
        assert len(r.inputs.dataset_inputs) == 3
    assert len({i.dataset.digest for r in runs for i in r.inputs.dataset_inputs}) == 3


def test_a_lost_insert_race_is_tried_again_and_other_errors_are_not():
    from mlflow.exceptions import MlflowException
    from trainables.tracking import DATASET_RACE, _retry

    calls = []

    def insert_once_lost():
        calls.append(1)
        if len(calls) == 1:
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: "
                                  "datasets.experiment_id, datasets.name, datasets.digest")
        return "linked"

    assert _retry(insert_once_lost, transient=DATASET_RACE) == "linked" and len(calls) == 2
    calls.clear()
    with pytest.raises(MlflowException, match="UNIQUE"):
        _retry(insert_once_lost)  # by default only a locked database is tried again
    assert len(calls) == 1
