"""The real MLflow server over a store the orchestrator's layout and a report wrote.

This is what a user does after an experiment: `mlflow ui` on ./mlflow.db, then browse the parent
run, its trials and the report's files. The test reads all three back through the REST API
(urllib only, as a browser or a script would), then writes a second report THROUGH the server
(tracking URI http://...) and finds its files there too.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest
import torch
from services import get, mlflow_server
from test_analysis import store  # noqa: F401  (the module-scoped store fixture)

from analysis import load_runs
from analysis.report import report_experiment


def _get(base: str, endpoint: str, **query) -> bytes:
    return get(base, f"{endpoint}?{urllib.parse.urlencode(query)}")


def _search(base: str, experiment_id: str, filter_string: str) -> list[dict]:
    body = json.dumps({"experiment_ids": [experiment_id], "filter": filter_string,
                       "max_results": 100}).encode()
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read()).get("runs", [])


@pytest.fixture(scope="module")
def server(store):  # noqa: F811
    """`mlflow server` on the store, the low-memory way (one worker, no job runner)."""
    try:
        with mlflow_server(store.uri) as base:
            yield base
    except RuntimeError as exc:
        pytest.skip(str(exc))


def test_runs_and_report_artifacts_through_the_rest_api(store, server, tmp_path):  # noqa: F811
    torch.set_num_threads(1)
    written = report_experiment("ablation-1", tracking_uri=store.uri, out=str(tmp_path),
                                log=lambda s: None)
    runs = load_runs("ablation-1", store.uri)
    exp_id = str(store.c.get_experiment_by_name("ablation-1").experiment_id)

    parents = _search(server, exp_id, "tags.`smaraad.kind` = 'ablate'")
    assert [p["info"]["run_id"] for p in parents] == [runs.parent_id]
    tags = {t["key"]: t["value"] for t in parents[0]["data"]["tags"]}
    assert tags["smaraad.grid_keys"] == "method"
    children = _search(server, exp_id, f"tags.`mlflow.parentRunId` = '{runs.parent_id}'")
    assert len(children) == 12  # 11 finished trials and the failed one
    params = [{p["key"]: p["value"] for p in c["data"].get("params", [])} for c in children]
    kd0 = children[params.index({"method": "kd", "seed": "0"})]
    metrics = {m["key"]: m["value"] for m in kd0["data"]["metrics"]}
    assert metrics["test/pgd20_acc"] == pytest.approx(0.40)  # PGD20["kd"][0]

    listed = json.loads(_get(server, "/api/2.0/mlflow/artifacts/list",
                             run_id=runs.parent_id, path="report"))
    names = sorted(f["path"] for f in listed["files"])
    assert names == sorted(f"report/{p.rsplit('/', 1)[1]}" for p in written)
    table = _get(server, "/get-artifact", run_id=runs.parent_id, path="report/table.md")
    assert table == (tmp_path / "table.md").read_bytes()
    png = _get(server, "/get-artifact", run_id=runs.parent_id, path="report/fig4_ablation.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_through_the_server(store, server, tmp_path):  # noqa: F811
    torch.set_num_threads(1)
    written = report_experiment("gamma_alpha-1", tracking_uri=server, out=str(tmp_path),
                                log=lambda s: None)
    parent = load_runs("gamma_alpha-1", store.uri).parent_id
    listed = json.loads(_get(server, "/api/2.0/mlflow/artifacts/list", run_id=parent,
                             path="report"))
    assert {f["path"] for f in listed["files"]} >= {f"report/{p.rsplit('/', 1)[1]}"
                                                   for p in written}
