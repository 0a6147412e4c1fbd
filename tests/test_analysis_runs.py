"""analysis/runs.py and stats.py on a real MLflow SQLite store: a trial logged with a method this
checkout does not know, and the search space the parent run's tag holds."""

from __future__ import annotations

import json
import warnings

import optuna
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis import load_runs
from analysis.runs import _defaults
from analysis.stats import distributions, param_importance
from smaraad.methods import METHODS

SPACE = {"gamma": {"distribution": "loguniform", "low": 0.1, "high": 3000.0, "values": []},
         "alpha": {"distribution": "uniform", "low": 0.0, "high": 1.0, "values": []}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One tune experiment: a parent run with its space tag, trials of a known and a gone method."""
    tmp_path = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("gamma_alpha-1", artifact_location=str(tmp_path / "artifacts"))
    parent = c.create_run(exp, tags={"smaraad.kind": "tune", "smaraad.search_keys": "gamma",
                                     "smaraad.search_space": json.dumps(SPACE)}).info.run_id
    for trial, method, gamma in (("t0", "smaraad", 1.0), ("t1", "gone_method", 30.0)):
        run = c.create_run(exp, tags={"mlflow.parentRunId": parent, "smaraad.trial_id": trial,
                                      "smaraad.completed": "true"}).info.run_id
        c.log_batch(run, metrics=[Metric("val/pgd_acc", gamma / 100, 0, 1)],
                    params=[Param("method", method), Param("gamma", str(gamma))])
        c.set_terminated(run)
    return uri


def test_a_trial_of_a_method_this_checkout_does_not_know_is_loaded_with_a_warning(store):
    _defaults.cache_clear()  # the warning comes once per method and process
    with pytest.warns(UserWarning, match="'gone_method' of a logged trial is unknown"):
        runs = load_runs("gamma_alpha-1", store)
    rows = runs.trials.set_index("trial_id")
    assert list(rows.index) == ["t0", "t1"]
    assert rows.loc["t1", "params.gamma"] == "30.0" and rows.loc["t1", "variant"] == "gone_method"
    # the known method's row is completed with its defaults; the unknown one keeps what it logged
    assert rows.loc["t0", "params.alpha"] == json.dumps(METHODS["smaraad"].make_params({}).alpha)
    assert rows["params.alpha"].isna()["t1"]


def test_the_search_space_tag_is_read_and_gives_the_declared_distributions(store):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the gone method, tested above
        runs = load_runs("gamma_alpha-1", store)
    assert runs.search_space() == SPACE
    values = {"gamma": [1.0, 30.0], "alpha": [0.2, 0.5]}
    declared = distributions(values, runs.search_space())
    assert declared["gamma"] == optuna.distributions.FloatDistribution(0.1, 3000.0, log=True)
    assert declared["alpha"] == optuna.distributions.FloatDistribution(0.0, 1.0)
    # without the tag: the observed range, log only across two decades (1 to 30 is not)
    assert distributions(values, {})["gamma"] == optuna.distributions.FloatDistribution(1.0, 30.0)
    # a value outside the declared range (the paper's point) widens it rather than failing
    assert distributions({"alpha": [0.5, 1.5]}, SPACE)["alpha"].high == 1.5
    assert param_importance(runs.trials, ["gamma"], "val/pgd_acc", "max",
                            runs.search_space()) is not None
