"""The campaigns kept as data (docs/results/<dataset>/<campaign>/, written by
`benchmarks/bench_campaigns.py --run --out DIR --results docs/results/<dataset>`) are whole and
consistent: every finished trial has its RobustBench model_info, the experiment its benchmark JSON,
both valid against their schemas; each verdict follows from its own interval; each run of the
campaign names its machine, commit and wall time."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from analysis import formats, verdicts

ROOT = Path(__file__).resolve().parent.parent
CAMPAIGNS = sorted(p.parent for p in (ROOT / "docs" / "results").glob("*/*/campaign.json"))


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_there_are_campaigns_to_check():
    assert CAMPAIGNS, "no docs/results/<dataset>/<campaign>/campaign.json"


@pytest.mark.parametrize("folder", CAMPAIGNS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_trial_has_a_valid_model_info_and_the_experiment_a_benchmark(folder):
    infos = sorted((folder / "model_info").glob("*.json"))
    for path in infos:
        formats.validate(json.loads(path.read_text()), "model_info")
    benchmark = json.loads((folder / "benchmark.json").read_text())
    formats.validate(benchmark, "benchmark")
    clean = [r for r in rows(folder / "table.csv") if r["metric"] == "test/clean_acc"]
    finished = sum(int(r["seeds"]) for r in clean)
    assert finished and len(infos) == finished  # one model_info per finished trial, no more
    datasets = {json.loads(p.read_text())["dataset"] for p in infos}
    assert datasets == {folder.parent.name}


@pytest.mark.parametrize("folder", CAMPAIGNS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_verdict_follows_from_its_interval(folder):
    path = folder / "verdicts.csv"
    if not path.exists():  # a campaign that speaks to none of the claims (e.g. a tune)
        return
    for r in rows(path):
        lo, hi = float(r["ci_low"] or "nan"), float(r["ci_high"] or "nan")
        side, margin = r["expected"].split()  # "> 0", or "< m" for Figure 1's margin
        assert side in (">", "<"), r
        want = verdicts.verdict(lo, hi, positive=side == ">", margin=float(margin))
        assert r["verdict"] == want, r
        if not math.isnan(lo):
            assert lo <= float(r["estimate"]) <= hi, r


@pytest.mark.parametrize("folder", CAMPAIGNS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_kept_comparison_follows_from_its_intervals(folder):
    """compare.json (analysis.compare, e.g. the tuned point against the paper's on test)."""
    path = folder / "compare.json"
    if not path.exists():
        return
    result = json.loads(path.read_text())
    means = result["means"]
    for r in result["differences"]:
        lo, hi = (math.nan if x is None else x for x in (r["ci_low"], r["ci_high"]))
        if "verdict" in r:
            assert r["verdict"] == verdicts.verdict(lo, hi, positive=True), r
        assert r["estimate"] == pytest.approx(means["experiment"][r["metric"]]
                                              - means["against"][r["metric"]], abs=1e-9), r


@pytest.mark.parametrize("folder", CAMPAIGNS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_run_names_its_machine_commit_and_wall_time(folder):
    record = json.loads((folder / "campaign.json").read_text())
    assert record["runs"]
    for run in record["runs"]:
        assert len(run["commit"]) == 40 and run["cpu"] and run["cpus"] >= 1
        assert run["wall_s"] > 0 and run["dataset"] == folder.parent.name
        assert run["campaign"] == folder.name
    assert record["wall_s"] == pytest.approx(sum(r["wall_s"] for r in record["runs"]), abs=0.1)
