"""analysis.compare: one experiment's variant against another's, paired by seed, on stores with
KNOWN values written in the orchestrator's layout (test_analysis.Store). No Ray, no training."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import run_cli
from test_analysis import T_975_2, Store

from analysis.compare import compare, main

# test PGD-20 and clean per seed: the tuned point (gamma 10) and the paper's (gamma default)
TUNED = {0: (0.40, 0.70), 1: (0.44, 0.72), 2: (0.41, 0.71), 5: (0.50, 0.75)}  # seed 5: unpaired
PAPER = {2: (0.38, 0.73), 0: (0.35, 0.72), 1: (0.40, 0.74)}                   # out of order


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("mlflow"))
    s.parent("methods-1", "ablate", grid="method", teacher=False)
    for seed, (pgd, clean) in PAPER.items():
        for v, shift in (("smaraad_pp", 0.0), ("kd", -0.1)):
            s.trial(f"m_{v}_{seed}", {"method": v, "seed": seed, "epochs": 6},
                    tags={"variant": v}, final={"test/pgd20_acc": pgd + shift,
                                                "test/clean_acc": clean, "n": 10000})
    s.parent("confirm-1", "ablate", grid="method", teacher=False)
    for seed, (pgd, clean) in TUNED.items():
        s.trial(f"c_{seed}", {"method": "smaraad_pp", "seed": seed, "epochs": 6, "gamma": 10.0},
                tags={"variant": "smaraad_pp"},
                final={"test/pgd20_acc": pgd, "test/clean_acc": clean, "n": 10000})
    s.parent("fewer-images-1", "ablate", grid="method", teacher=False)
    s.trial("f_0", {"method": "smaraad_pp", "seed": 0, "epochs": 6}, tags={"variant": "smaraad_pp"},
            final={"test/pgd20_acc": 0.3, "n": 1000})
    return s


def _expected(metric: int) -> tuple[float, float, float]:
    d = np.array([TUNED[s][metric] - PAPER[s][metric] for s in (0, 1, 2)])
    half = T_975_2 * d.std(ddof=1) / math.sqrt(3)
    return d.mean(), d.mean() - half, d.mean() + half


def test_paired_by_seed_with_known_intervals_and_verdicts(store):
    result = compare("confirm-1", "methods-1", "smaraad_pp", tracking_uri=store.uri)
    rows = {r["metric"]: r for r in result["differences"]}
    for key, i in (("test/pgd20_acc", 0), ("test/clean_acc", 1)):
        mean, lo, hi = _expected(i)
        assert rows[key]["n"] == 3  # seed 5 has no partner
        assert rows[key]["estimate"] == pytest.approx(mean)
        assert (rows[key]["ci_low"], rows[key]["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    # PGD-20 +4.00 pp [+1.52, +6.48] > 0: holds; clean is no claim, so it has no verdict
    assert rows["test/pgd20_acc"]["verdict"] == "holds" and "verdict" not in rows["test/clean_acc"]
    assert result["seeds"] == {"experiment": [0, 1, 2, 5], "against": [0, 1, 2]}
    assert result["differs"] == {"gamma": {"experiment": ["10.0"], "against": ["1000.0"]}}
    # the other way round the same interval is reversed
    back = {r["metric"]: r for r in compare("methods-1", "confirm-1", "smaraad_pp",
                                            tracking_uri=store.uri)["differences"]}
    assert back["test/pgd20_acc"]["verdict"] == "reversed"


def test_command_writes_markdown_and_json(store, tmp_path, capsys):
    code, out, _ = run_cli(main, ["--experiment", "confirm-1", "--against", "methods-1",
                                  "--variant", "smaraad_pp", "--tracking-uri", store.uri,
                                  "--out", str(tmp_path)], capsys)
    mean, lo, hi = _expected(0)
    assert code == 0
    row = next(line for line in (tmp_path / "compare.md").read_text().splitlines()
               if line.startswith("| PGD-20"))
    assert f"{mean * 100:+.2f} pp | [{lo * 100:+.2f}, {hi * 100:+.2f}] | holds" in row
    assert "| 41.67 | 37.67 |" in row and row in out  # each side's mean over the paired seeds
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["comparison"] == "confirm-1:smaraad_pp - methods-1:smaraad_pp"


@pytest.mark.parametrize("argv, says", [
    (["--experiment", "fewer-images-1", "--against", "methods-1", "--variant", "smaraad_pp"],
     "n (test images evaluated): fewer-images-1:smaraad_pp has [1000.0]"),
    (["--experiment", "confirm-1", "--against", "methods-1", "--variant", "sm"],
     "--variant 'sm': no finished trial of it in 'confirm-1'; it has: smaraad_pp"),
    (["--experiment", "confirm-1", "--against", "nope", "--variant", "smaraad_pp"],
     "--against 'nope': unknown"),
])
def test_bad_input_is_one_line_and_exit_2(store, tmp_path, capsys, argv, says):
    code, _, err = run_cli(main, [*argv, "--tracking-uri", store.uri,
                                  "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err.count("\n") == 1 and says in err, err
    assert not (tmp_path / "out").exists()
