"""The real MLflow server over a store the orchestrator's layout and a report wrote.

This is what a user does after an experiment: `mlflow ui` on ./mlflow.db, then browse the parent
run, its trials and the report's files. The test reads all three back through the REST API
(urllib only, as a script would) and in a real browser (headless Chromium, where installed: the
runs-table URL the commands print, and a report figure from the parent's artifacts), then writes
a second report THROUGH the server (tracking URI http://...) and finds its files there too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
from trainables.services import get, mlflow_server
from test_analysis import one_thread, store  # noqa: F401  (store: the module-scoped fixture)

from analysis import load_runs
from analysis.report import report_experiment
from orchestrator.summary import runs_url

START_TIMEOUT_S = 60
CHROMIUM = "/usr/bin/chromium"  # Debian's package (.ci/run installs it where apt works)
PNG = b"\x89PNG\r\n\x1a\n"


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
    with mlflow_server(store.uri) as base:
        yield base


@pytest.fixture(scope="module")
def reported(store, tmp_path_factory):  # noqa: F811
    """The ablation's report, written once and logged under the parent's report/ artifacts."""
    out = tmp_path_factory.mktemp("report")
    with one_thread():
        return out, report_experiment("ablation-1", tracking_uri=store.uri, out=str(out),
                                      log=lambda s: None)


def test_runs_and_report_artifacts_through_the_rest_api(store, server, reported):  # noqa: F811
    tmp_path, written = reported
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
    infos = [p for p in written if "/model_info/" in p]  # a folder of one file per trial
    assert names == sorted([*(f"report/{p.rsplit('/', 1)[1]}" for p in written if p not in infos),
                            "report/model_info"])
    listed = json.loads(_get(server, "/api/2.0/mlflow/artifacts/list",
                             run_id=runs.parent_id, path="report/model_info"))
    assert len(listed["files"]) == len(infos) == 11
    table = _get(server, "/get-artifact", run_id=runs.parent_id, path="report/table.md")
    assert table == (tmp_path / "table.md").read_bytes()
    png = _get(server, "/get-artifact", run_id=runs.parent_id, path="report/fig4_ablation.png")
    assert png[:8] == PNG


def _chromium(url: str, profile, *flags: str) -> str:
    cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={profile}", "--window-size=1400,1000",
           "--virtual-time-budget=15000", *flags, url]  # virtual time: the page's fetches settle
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM}")
def test_a_browser_shows_the_runs_table_and_a_report_figure(store, server, reported,  # noqa: F811
                                                            tmp_path):
    runs = load_runs("ablation-1", store.uri)
    exp_id = str(store.c.get_experiment_by_name("ablation-1").experiment_id)
    url = runs_url(server, exp_id)  # what tune/ablate print last
    dom = _chromium(url, tmp_path / "profile", "--dump-dom")
    linked = set(re.findall(rf"#/experiments/{exp_id}/runs/([0-9a-f]{{32}})", dom))
    assert runs.parent_id in linked  # the parent run's row
    assert set(runs.trials["run_id"]) <= linked  # and every trial's, failed one included
    for name in runs.trials["run_name"]:
        assert f">{name}<" in dom, name
    assert "No data available" not in dom  # not the GenAI overview with its empty trace charts
    _chromium(url, tmp_path / "profile", f"--screenshot={tmp_path / 'runs.png'}")
    assert (tmp_path / "runs.png").read_bytes()[:8] == PNG  # what a person sees (kept in tmp)

    # the parent's artifacts page shows the figure: the UI fetched it from get-artifact and the
    # browser decoded it into an image (get-artifact itself answers as a download: attachment)
    path = "report/fig4_ablation.png"
    page = _chromium(f"{server}/#/experiments/{exp_id}/runs/{runs.parent_id}/artifacts/{path}",
                     tmp_path / "profile", "--dump-dom")
    assert re.search(rf'<img alt="{path}" src="blob:', page), page[-2000:]
    figure = f"{server}/get-artifact?" + urllib.parse.urlencode({"run_id": runs.parent_id,
                                                                 "path": path})
    with urllib.request.urlopen(figure, timeout=10) as r:
        assert r.headers["Content-Type"] == "image/png" and r.read()[:8] == PNG


def test_report_through_the_server(store, server, tmp_path):  # noqa: F811
    torch.set_num_threads(1)
    written = report_experiment("gamma_alpha-1", tracking_uri=server, out=str(tmp_path),
                                log=lambda s: None)
    parent = load_runs("gamma_alpha-1", store.uri).parent_id
    listed = json.loads(_get(server, "/api/2.0/mlflow/artifacts/list", run_id=parent,
                             path="report"))
    # each file, or the model_info/ folder holding it
    assert {f["path"] for f in listed["files"]} >= {
        f"report/{Path(p).relative_to(tmp_path).parts[0]}" for p in written}
