"""Variant x attack tables: mean +- std over seeds, best per column marked, failures named.

`summarize` turns the trials of a RunsTable into a tidy frame (one row per group and metric);
`to_markdown`, `to_latex` and `to_csv` render it. The metrics, their titles and directions come
from smaraad/metrics.py's registry. Accuracies print as percentages (the papers' unit); the CSV
keeps raw fractions so other tools can read it without parsing. `seeds` counts runs, `n` the test
images each accuracy was measured on.
"""

from __future__ import annotations

import math

import pandas as pd

from smaraad import metrics

REASON_CHARS = 120  # of a failed trial's error in a table cell (its MLflow run keeps it whole)


def failed(trials: pd.DataFrame) -> pd.Series:
    """Trials that failed (MLflow status FAILED, or an error recorded): not merely stopped."""
    return ~trials["completed"] & ((trials["status"] == "FAILED") | (trials["error"] != ""))


def summarize(trials: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """One row per (group, metric): the `by` columns, metric, title, mean, std, seeds,
    group_seeds, n, failed, best.

    Means are over the group's finished trials; `failed` names its failed trials with their reason
    (a group of failed trials only keeps its rows, with no values), and trials that are neither
    (stopped early, still running) are left out. Groups keep the order of their first trial (the
    grid's order). std is the sample standard deviation (ddof = 1), NaN for a single run. `n` is the
    test images of the evaluation (a range "a-b" when the runs differ). `best` marks the best mean
    of each column in the metric's direction (ties all marked). Metrics no trial logged are left
    out.
    """
    rows = []
    bad = failed(trials)
    trials = trials[trials["completed"] | bad]
    registry = [m for m in metrics.summary_metrics()
                if f"metrics.{m.key()}" in trials.columns
                and not trials[f"metrics.{m.key()}"].isna().all()]
    for key, group in trials.groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        done = group[group["completed"]]
        reasons = "; ".join(_reason(r) for r in group[bad.loc[group.index]].itertuples())
        for m in registry or [None]:
            values = (done[f"metrics.{m.key()}"].dropna().astype(float) if m
                      else pd.Series(dtype=float))
            rows.append({**dict(zip(by, key)), "metric": m.key() if m else "",
                         "title": m.title if m else "",
                         "mean": values.mean() if len(values) else math.nan,
                         "std": values.std(ddof=1) if len(values) > 1 else math.nan,
                         "seeds": len(values), "group_seeds": len(done),
                         "n": _images(done), "failed": reasons})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    higher = {m.key(): m.higher_is_better for m in metrics.summary_metrics()}
    best = table.groupby("metric")["mean"].transform(
        lambda s: s.max() if higher.get(s.name, True) else s.min())
    table["best"] = table["mean"].eq(best) & table["mean"].notna()
    return table


def _reason(trial) -> str:
    error = (trial.error or trial.status)[:REASON_CHARS].replace("|", "/")  # a table cell
    return f"{trial.trial_id}" + (f" seed {trial.seed}" if trial.seed is not None else "") \
        + f": {error}"


def _images(done: pd.DataFrame) -> str:
    if "metrics.n" not in done.columns or done["metrics.n"].isna().all():
        return ""
    lo, hi = int(done["metrics.n"].min()), int(done["metrics.n"].max())
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _cell(row, *, percent: bool, pm: str, bold) -> str:
    if row.seeds == 0:
        return "-"
    scale, digits = (100.0, 2) if percent else (1.0, 4)
    text = f"{row.mean * scale:.{digits}f}"
    if row.seeds > 1:
        text += f" {pm} {row.std * scale:.{digits}f}"
    if row.seeds != row.group_seeds:  # some runs of the group lack this metric: say how many had it
        text += f" ({row.seeds} seeds)"
    return bold(text) if row.best else text


def _grid(table: pd.DataFrame, by: list[str], *, pm: str, bold, escape=str) -> tuple[list, list]:
    """(headers, rows of strings): one row per group, one column per metric, then `failed` when
    any trial failed."""
    keys = [k for k in dict.fromkeys(table["metric"]) if k]
    registry = {m.key(): m for m in metrics.summary_metrics()}
    images = int(table["n"].ne("").any())
    failures = int(table["failed"].ne("").any())
    headers = ([escape(b.removeprefix("params.")) for b in by] + ["seeds"] + ["n"] * images
               + [registry[k].column for k in keys] + ["failed"] * failures)
    rows = []
    for key, group in table.groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        first = group.iloc[0]
        cells = {r.metric: _cell(r, percent=registry[r.metric].percent, pm=pm, bold=bold)
                 for r in group.itertuples() if r.metric}
        rows.append([escape(_fmt(k)) for k in key] + [str(first["group_seeds"])]
                    + [first["n"] or "-"] * images + [cells.get(k, "-") for k in keys]
                    + [escape(first["failed"]) or "-"] * failures)
    return headers, rows


def _fmt(value) -> str:
    """Searched values as logged (strings), shortened when they are long floats."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(value) if str(value).lstrip("-").isdigit() else f"{number:.4g}"


def to_markdown(table: pd.DataFrame, by: list[str]) -> str:
    headers, rows = _grid(table, by, pm="±", bold=lambda s: f"**{s}**")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame, by: list[str]) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs}); best cells in bold."""
    escape = lambda s: s.replace("\\", r"\textbackslash{}").replace("_", r"\_")  # noqa: E731
    headers, rows = _grid(table, by, pm=r"$\pm$", bold=lambda s: rf"\textbf{{{s}}}",
                          escape=escape)
    headers = [h.replace("%", r"\%") for h in headers]
    spec = "l" * len(by) + "r" * (len(headers) - len(by))
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(headers) + r" \\",
             r"\midrule", *(" & ".join(r) + r" \\" for r in rows), r"\bottomrule",
             r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_csv(table: pd.DataFrame, path: str) -> None:
    """Raw fractions, one row per (group, metric), with mean, std, seeds, n (images), the failed
    trials and the best flag."""
    table.drop(columns=["group_seeds"]).to_csv(path, index=False, float_format="%.6g")
