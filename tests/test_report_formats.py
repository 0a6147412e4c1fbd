"""The report's verdicts on the paper's claims and its community formats, on real SQLite MLflow
stores holding constructed results: each verdict must come out as the construction dictates
(clearly positive, clearly negative, overlapping zero), and every JSON file must pass its schema.
"""

from __future__ import annotations

import json
import math

import jsonschema
import pytest
from test_analysis import Store

from analysis import formats, verdicts
from analysis.report import report_experiment

SEEDS = (0, 1, 2)
JITTER = (0.004, -0.004, 0.0)  # per seed: a small spread, so every interval has a width
# Table 3: test PGD-20 per method and seed; smaraad minus ard is +5 pp every seed, minus rslad
# -5 pp, minus adaad +3, -3, +1 pp (the interval holds 0)
BASE = 0.40
TABLE3 = {"smaraad": [BASE + j for j in JITTER], "smaraad_pp": [BASE + 0.01 + j for j in JITTER],
          "ard": [BASE - 0.05 + j for j in JITTER], "rslad": [BASE + 0.05 + j for j in JITTER],
          "adaad": [BASE + j - d for j, d in zip(JITTER, (0.03, -0.03, 0.01))],
          "pgd_at": [BASE - 0.10 + j for j in JITTER]}
# Figure 4: sm_align minus kd +10 pp, minus kd_align -4 pp, minus sm around 0
FIG4 = {"sm_align": [0.50 + j for j in JITTER], "kd": [0.40 + j for j in JITTER],
        "kd_align": [0.54 + j for j in JITTER],
        "sm": [0.50 + j + d for j, d in zip(JITTER, (0.02, -0.02, 0.005))]}
# Figure 1: student PGD-20 = 0.45 + slope * teacher val PGD + per-trial wobble
TEACHERS = {"natural": 0.45, "eps1": 0.60, "eps2": 0.70, "eps8": 0.82}
SLOPES = {"kd": -0.3, "ard": 0.4, "smaraad": 0.4, "rslad": 0.0}
WOBBLE = {"kd": 0.005, "ard": 0.005, "smaraad": 0.005, "rslad": 0.05}


def _final(pgd20: float, seed: int) -> dict:
    return {"test/pgd20_acc": pgd20, "test/aa_acc": pgd20 - 0.05, "test/clean_acc": 0.80,
            "test/best_pgd20_acc": pgd20 + 0.01, "test/best_clean_acc": 0.79,
            "test/best_epoch": 3, "n": 1000, "aa/n": 500, "time/train_s": 100.0 + seed,
            "memory/peak_mb": 2000.0 + 10 * seed}


def _grid(store: Store, name: str, values: dict) -> None:
    store.parent(name, "ablate", grid="method", teacher=False)
    for method, per_seed in values.items():
        for seed, v in zip(SEEDS, per_seed):
            store.trial(f"{method}_{seed}", {"method": method, "seed": seed},
                        tags={"variant": method, "smaraad.flags": "none"},
                        final=_final(v, seed))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("claims"))
    _grid(s, "methods-v", TABLE3)
    _grid(s, "ablation-v", FIG4)
    s.parent("teachers-v", "ablate", grid="method,teacher", teacher=False)
    for method, slope in SLOPES.items():
        for teacher, robust in TEACHERS.items():
            for seed in (0, 1):
                sign = 1 if (seed + len(teacher)) % 2 else -1  # alternates within each method
                s.trial(f"{method}_{teacher}_{seed}",
                        {"method": method, "seed": seed, "teacher": teacher},
                        tags={"variant": method, "smaraad.flags": "none"}, teacher_pgd=robust,
                        final=_final(0.45 + slope * robust + sign * WOBBLE[method], seed))
    return s


def _report(store: Store, name: str, tmp_path):
    lines = []
    paths = report_experiment(name, tracking_uri=store.uri, out=str(tmp_path), log=lines.append)
    table = json.loads((tmp_path / "verdicts.json").read_text())["verdicts"]
    return paths, {(r["comparison"], r["title"]): r for r in table}, "\n".join(lines)


def test_table3_verdicts_follow_the_constructed_differences(store, tmp_path):
    _, rows, log = _report(store, "methods-v", tmp_path)
    for title in ("PGD-20", "AA"):
        assert rows[("smaraad - ard", title)]["verdict"] == "holds"
        assert rows[("smaraad - rslad", title)]["verdict"] == "reversed"
        assert rows[("smaraad - adaad", title)]["verdict"] == "not resolved at this n"
    ard = rows[("smaraad - ard", "PGD-20")]
    assert ard["estimate"] == pytest.approx(0.05) and ard["n"] == 3
    assert ard["ci_low"] > 0 and ard["expected"] == "> 0"
    adaad = rows[("smaraad - adaad", "PGD-20")]
    assert adaad["ci_low"] < 0 < adaad["ci_high"]
    assert ("smaraad_pp - ard", "PGD-20") in rows  # SmaraAD++ is judged too
    # PGD-AT distils from no teacher, and the two SmaraADs are not each other's rivals
    assert not any("pgd_at" in c or c in ("smaraad - smaraad_pp", "smaraad_pp - smaraad")
                   for c, _ in rows)
    assert "| Table 3 | smaraad - ard | PGD-20 | 3 | +5.00 pp |" in log
    assert "| holds |" in log and "| reversed |" in log


def test_figure4_verdicts_follow_the_constructed_differences(store, tmp_path):
    paths, rows, _ = _report(store, "ablation-v", tmp_path)
    assert rows[("sm_align - kd", "PGD-20")]["verdict"] == "holds"
    assert rows[("sm_align - kd_align", "PGD-20")]["verdict"] == "reversed"
    assert rows[("sm_align - sm", "PGD-20")]["verdict"] == "not resolved at this n"
    assert {c for c, _ in rows} == {"sm_align - kd", "sm_align - kd_align", "sm_align - sm"}
    csv = (tmp_path / "verdicts.csv").read_text().splitlines()
    assert csv[0] == ",".join(verdicts.COLUMNS) and len(csv) == 1 + 3 * 2  # 3 pairs x PGD-20, AA


def test_figure1_verdicts_follow_the_constructed_slopes(store, tmp_path):
    _, rows, _ = _report(store, "teachers-v", tmp_path)
    kd = rows[("slope of kd", "PGD-20")]
    assert kd["estimate"] == pytest.approx(-0.3, abs=0.05) and kd["n"] == 8
    assert kd["verdict"] == "holds" and kd["expected"] == "< 0"     # KL: clearly no gain
    assert rows[("slope of ard", "PGD-20")]["verdict"] == "reversed"  # KL, yet it gains
    assert rows[("slope of smaraad", "PGD-20")]["verdict"] == "holds"  # slack matching gains
    assert rows[("slope of smaraad", "PGD-20")]["expected"] == "> 0"
    assert rows[("slope of rslad", "PGD-20")]["verdict"] == "not resolved at this n"
    # Table 3 in the same experiment pairs by seed and teacher: 2 seeds x 4 teachers
    assert rows[("smaraad - kd", "PGD-20")]["n"] == 8


def test_a_flat_margin_turns_a_flat_kl_slope_into_holds(store, tmp_path):
    report_experiment("teachers-v", tracking_uri=store.uri, out=str(tmp_path),
                      log=lambda s: None, flat_margin=0.5)
    doc = json.loads((tmp_path / "verdicts.json").read_text())
    rslad = next(r for r in doc["verdicts"]
                 if r["comparison"] == "slope of rslad" and r["title"] == "PGD-20")
    assert rslad["ci_high"] < 0.5 and rslad["verdict"] == "holds" and doc["flat_margin"] == 0.5


def test_verdict_rule():
    assert verdicts.verdict(0.01, 0.02, positive=True) == "holds"
    assert verdicts.verdict(-0.02, -0.01, positive=True) == "reversed"
    assert verdicts.verdict(-0.01, 0.02, positive=True) == "not resolved at this n"
    assert verdicts.verdict(-0.02, -0.01, positive=False) == "holds"
    assert verdicts.verdict(math.nan, math.nan, positive=True) == "not resolved at this n"


def test_every_report_json_passes_its_schema_with_the_logged_values(store, tmp_path):
    paths, _, _ = _report(store, "methods-v", tmp_path)
    infos = [p for p in paths if "/model_info/" in p]
    assert len(infos) == 3 * len(TABLE3)
    for p in infos:
        jsonschema.validate(json.loads(open(p).read()), formats.schema("model_info"))
    info = json.loads((tmp_path / "model_info" / "ard_2.json").read_text())
    assert (info["name"], info["threat_model"], info["eps"]) == ("methods-v/ard_2", "Linf",
                                                                "8/255")
    assert (info["clean_acc"], info["autoattack_acc"]) == ("80.00", "30.00")  # 0.35 - 0.05 = AA
    assert (info["method"], info["seed"], info["n"], info["aa_n"]) == ("ard", 2, 1000, 500)
    assert info["unreliable"] is False and info["autoattack_version"] == "standard"

    bench = json.loads((tmp_path / "benchmark.json").read_text())
    jsonschema.validate(bench, formats.schema("benchmark"))
    ard = bench["cifar10"]["ard"]  # the trials logged no data set: the config's default
    assert sorted(ard["seeds"]) == ["0", "1", "2"]
    assert ard["pgd20"]["mean"] == pytest.approx(35.0)
    assert ard["pgd20"]["std"] == pytest.approx(0.4)  # per seed 35.4, 34.6, 35.0
    assert ard["seeds"]["2"]["train_time_s"] == 102.0
    assert ard["peak_memory_mb"]["mean"] == pytest.approx(2010.0)
    assert ard["best_pgd20"]["mean"] == pytest.approx(36.0)
    assert ard["protocol"] == {"threat_model": "Linf", "eps": "8/255", "n": 1000, "aa_n": 500,
                               "teacher": "wrn34_10", "student": "resnet18"}  # the defaults
    assert bench["cifar10"]["pgd_at"]["protocol"]["teacher"] == "none"  # it distils from none


@pytest.mark.parametrize("field, bad", [("clean_acc", 47.12), ("clean_acc", "47.1"),
                                        ("eps", "8 / 255"), ("threat_model", "L2"),
                                        ("seed", "0")])
def test_the_model_info_schema_rejects_what_robustbench_would_not_read(field, bad):
    good = {"link": "", "name": "x/t", "authors": "", "additional_data": False,
            "number_forward_passes": 1, "dataset": "cifar10", "venue": "",
            "architecture": "resnet18", "threat_model": "Linf", "eps": "8/255",
            "clean_acc": "82.00", "reported": "47.12", "autoattack_acc": "47.12",
            "footnote": "", "unreliable": False, "method": "kd", "teacher": "t", "seed": 0,
            "n": 1000, "aa_n": 500, "autoattack_version": "standard",
            "pyautoattack_version": "0.2.0"}
    formats.validate(good, "model_info")
    with pytest.raises(jsonschema.ValidationError):
        formats.validate({**good, field: bad}, "model_info")


def test_eps_strings():
    assert formats.eps_string(8.0) == "8/255" and formats.eps_string(16) == "16/255"
    assert formats.eps_string(25.5) == "0.1"  # Fashion-MNIST's 0.1 on [0, 1] pixels
    assert formats.eps_string(76.5) == "0.3"
