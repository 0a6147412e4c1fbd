"""The README stays true: its first two commands are the ones CI and pyproject support, every number
in its result tables (and in docs/embedded_results.md, where the embedded data's went) is the one in
docs/results/, every time it quotes is in docs/measurements.md, and it stays short enough to read
(under 8 KB)."""

from __future__ import annotations

import csv
import json
import re
import tomllib
from pathlib import Path

import pytest

from orchestrator.spaces import load_space

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
EMBEDDED = (ROOT / "docs" / "embedded_results.md").read_text(encoding="utf-8")
RESULTS = ROOT / "docs" / "results"
PINS = re.compile(r"torch==(\S+) torchvision==(\S+)")


def tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Every Markdown table, keyed by its header row, as a list of {column: cell} rows."""
    out, block = {}, []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif block:
            head, rows = block[0], block[2:]  # block[1] is the |---| line
            out[" | ".join(head)] = [dict(zip(head, r)) for r in rows]
            block = []
    return out


def table(*head: str, text: str = README) -> list[dict[str, str]]:
    key = " | ".join(head)
    assert key in tables(text), f"lost the table {key!r}"
    return tables(text)[key]


def version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def test_the_readme_is_under_8_kb():
    assert len(README.encode("utf-8")) < 8 * 1024


def test_the_first_two_commands_are_the_ones_ci_and_pyproject_support():
    first = re.search(r"```bash\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert len(first) == 2
    tune_line, test_line = first
    assert tune_line.endswith("pip install -e . && python -m orchestrator.tune --space gamma_alpha")
    assert test_line.endswith('pip install -e ".[test]" && python -m pytest -q')
    assert load_space("gamma_alpha").kind == "tune"

    ci = (ROOT / ".ci" / "run").read_text()
    ci_steps = [line for line in ci.splitlines() if line and not line.startswith("#")]
    assert ci_steps[-1] == "python -m pytest -q"
    assert 'pip install -q -e ".[test]"' in ci
    assert PINS.search(tune_line).groups() == PINS.search(test_line).groups() \
        == PINS.search(ci).groups()

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "test" in project["optional-dependencies"]
    for name, pinned in zip(("torch", "torchvision"), PINS.search(ci).groups()):
        spec = next(d for d in project["dependencies"] if re.match(rf"{name}\b[<>=]", d))
        low, high = re.search(r">=([\d.]+),<=([\d.]+)", spec).groups()
        assert version(low) <= version(pinned) <= version(high), (spec, pinned)


ABLATION_COLUMNS = {"clean": "clean", "FGSM": "fgsm", "PGD-20": "pgd20", "CW_inf": "cw",
                    "AA": "aa", "CAM distance": "cam_dist"}


def test_the_ablation_table_is_the_data():
    with open(RESULTS / "ablation.csv", newline="") as fh:
        data = {(r["variant"], r["metric"]): (float(r["mean"]), float(r["std"]))
                for r in csv.DictReader(fh)}
    shown = {}
    for row in table("variant", *ABLATION_COLUMNS, text=EMBEDDED):
        for column, metric in ABLATION_COLUMNS.items():
            mean, std = row[column].split("+-")
            shown[(row["variant"], metric)] = (float(mean), float(std))
    assert shown == data


TUNE_COLUMNS = {"gamma": "gamma", "alpha": "alpha", "val clean": "val/clean_acc",
                "val PGD-10": "val/pgd_acc", "test clean": "test/clean_acc",
                "FGSM": "test/fgsm_acc", "PGD-20": "test/pgd20_acc", "CW_inf": "test/cw_acc",
                "AA": "test/aa_acc"}


def test_the_tune_table_and_its_budget_are_the_data():
    data = json.loads((RESULTS / "tune.json").read_text())
    rows = table("trial", *TUNE_COLUMNS, text=EMBEDDED)
    assert [r["trial"] for r in rows] == list(data["rows"])
    for row in rows:
        want = data["rows"][row["trial"]]
        shown = {key: float(row[column]) for column, key in TUNE_COLUMNS.items() if row[column]}
        assert shown == want, row["trial"]
    budget = re.search(r"(\d+) trials, ASHA ran (\d+) of (\d+)\s+trial-epochs", EMBEDDED)
    assert budget and tuple(map(int, budget.groups())) == (
        data["trials"], data["trial_epochs_run"], data["trial_epochs_full"])


FASHION = RESULTS / "fashion_mnist"


def report_rows(path: Path) -> list[dict[str, str]]:
    """A report's Markdown table (table.md, verdicts.md) as rows of {column: cell}, bold marks
    (the best of a column) removed."""
    (rows,) = tables(path.read_text().replace("**", "")).values()
    return rows


def test_the_fashion_mnist_ablation_table_is_the_data():
    data = {r["variant"]: r for r in report_rows(FASHION / "ablation" / "table.md")}
    columns = ("variant", "Clean (%)", "PGD-20 (%)", "CW-inf (%)", "AA (%)")
    rows = table(*columns)
    assert [r["variant"] for r in rows] == list(data)
    for row in rows:
        assert row == {c: data[row["variant"]][c] for c in columns}


def test_every_verdict_the_readme_quotes_is_a_campaigns():
    kept = [r for f in sorted(FASHION.glob("*/verdicts.md")) for r in report_rows(f)]
    columns = ("claim", "comparison", "attack", "n", "estimate", "95% CI", "verdict")
    rows = table(*columns)
    assert rows
    for row in rows:
        assert any(all(k[c] == row[c] for c in columns) for k in kept), row


MEASURED = [r for r in table("command", "time", "output") if r["time"] != "not measured"]


@pytest.mark.parametrize("row", MEASURED, ids=lambda r: r["command"])
def test_every_time_the_readme_quotes_is_in_the_measurements(row):
    measurements = (ROOT / "docs" / "measurements.md").read_text()
    command = row["command"].strip("`")
    quoted = [line for line in measurements.splitlines()
              if f"`{command}`" in line or f"`{command} " in line]
    assert any(f"| {row['time']}," in line or f"| {row['time']} |" in line
               for line in quoted), f"{command}: {row['time']} is not in docs/measurements.md"


def test_the_fashion_mnist_methods_table_is_the_data():
    data = {r["variant"]: r for r in report_rows(FASHION / "methods" / "table.md")}
    columns = ("variant", "Clean (%)", "PGD-20 (%)", "AA (%)")
    rows = table(*columns)
    assert [r["variant"] for r in rows] == list(data)
    for row in rows:
        assert row == {c: data[row["variant"]][c] for c in columns}


def test_the_tuned_point_the_readme_quotes_is_the_kept_comparison():
    found = re.search(r"best on validation gamma (\d+), alpha ([\d.]+); over seeds [\d-]+ against\s+"
                      r"the paper's point on test: PGD-20 ([+-]\d+\.\d\d) pp \[([+-]\d+\.\d\d), "
                      r"([+-]\d+\.\d\d)\], (holds|reversed|not resolved at this n)\.", README)
    assert found, "lost the tuned point's line"
    kept = json.loads((FASHION / "gamma_alpha" / "compare.json").read_text())
    row = next(r for r in kept["differences"] if r["metric"] == "test/pgd20_acc")
    gamma, alpha = (float(kept["differs"][k]["experiment"][0]) for k in ("gamma", "alpha"))
    assert found.group(1) == f"{gamma:.0f}" and found.group(2) == f"{alpha:.3f}"
    assert found.groups()[2:] == (f"{row['estimate'] * 100:+.2f}", f"{row['ci_low'] * 100:+.2f}",
                                  f"{row['ci_high'] * 100:+.2f}", row["verdict"])
