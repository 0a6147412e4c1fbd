"""The metric registry is the one vocabulary: an entry added there reaches every layer.

The new entry is a PGD-50 accuracy computed by the existing pgd attack with 50 steps; the test
finds it in the suite's result, its sanity ordering, the check of --attacks, the trials' progress
keys, the orchestrator's summary tables and the analysis report's table (an MLflow store written
in the orchestrator's layout by test_analysis.Store). No Ray, no training.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from test_analysis import Store

from analysis.report import report_experiment
from orchestrator import summary
from smaraad import metrics
from smaraad.attacks import pgd
from smaraad.evaluation import check_attacks, evaluate_suite
from smaraad.models import build_model
from smaraad.sanity import sanity_flags

PGD50 = metrics.Metric("pgd50", "PGD-50", at_most=("pgd20",), headline=True,
                       attack=lambda c: partial(pgd, eps=c.eps, step=c.eps / 4, steps=50))


@pytest.fixture
def with_pgd50(monkeypatch):
    monkeypatch.setitem(metrics.REGISTRY, "pgd50", PGD50)


def test_the_registry_says_what_the_paper_reports():
    assert metrics.attack_names() == ("clean", "fgsm", "pgd20", "cw", "aa")
    assert metrics.default_attacks(costly=False) == ("clean", "fgsm", "pgd20", "cw")
    assert set(metrics.orderings()) == {("clean", "fgsm"), ("fgsm", "pgd20"), ("pgd20", "aa"),
                                        ("clean", "cw"), ("cw", "aa")}
    assert metrics.by_key("test/cam_dist").higher_is_better is False
    columns = [m.column for m in metrics.summary_metrics()]
    assert columns[-5:] == ["CAM dist. (lower is better)", "Transfer PGD-20 (%)",
                            "Transfer CW-inf (%)", "Best-val Clean (%)", "Best-val PGD-20 (%)"]
    # the black-box metrics' transfer forms, then the best-on-validation checkpoint's scores
    assert metrics.by_key("test/best_pgd20_acc").title == "Best-val PGD-20"
    assert metrics.by_key("test/best_epoch").summary is False
    assert metrics.transfer_keys() == {"blackbox/pgd20_acc": "test/transfer_pgd20_acc",
                                       "blackbox/cw_acc": "test/transfer_cw_acc"}


def test_a_new_entry_reaches_suite_flags_summary_and_report(with_pgd50, tmp_path):
    torch.manual_seed(0)
    model = build_model("small_cnn")
    data = (torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (8,)))
    assert check_attacks(["pgd50"]) == ("pgd50",)
    result = evaluate_suite(model, data, attacks=["clean", "pgd20", "pgd50"], check_masking=False)
    assert 0.0 <= result["test/pgd50_acc"] <= result["test/clean_acc"]
    flags = sanity_flags({"n": 200, "test/pgd20_acc": 0.30, "test/pgd50_acc": 0.60})
    assert any(f.startswith("pgd50 accuracy 0.6000 is above pgd20") for f in flags)
    assert "test/pgd50_acc" in metrics.headline_keys()  # the trials' progress line reads these

    rows = [{"config": {"method": "kd", "seed": 0}, "status": "done", "error": "",
             "metrics": {**result, "trial_id": "t0", "val/pgd_acc": 0.2, "epoch": 1}}]
    assert "test/pgd50_acc" in summary.trials_table(rows, ["method"], "val/pgd_acc").splitlines()[0]
    variants = summary.by_variant(rows).splitlines()
    assert "pgd50_acc" in variants[0].split() and f"{result['test/pgd50_acc']:.3f}" in variants[2]

    s = Store(tmp_path)
    s.parent("pgd50-1", "ablate", grid="method", teacher=False)
    s.trial("t0", {"method": "kd", "seed": 0}, tags={"variant": "kd"},
            final={"test/pgd20_acc": 0.40, "test/pgd50_acc": 0.375})
    report_experiment("pgd50-1", tracking_uri=s.uri, out=str(tmp_path / "report"),
                      log=lambda line: None)
    table = (tmp_path / "report" / "table.md").read_text()
    assert "| variant | seeds | PGD-20 (%) | PGD-50 (%) |" in table
    assert "| kd | 1 | **40.00** | **37.50** |" in table  # the only variant: best

