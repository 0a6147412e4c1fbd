"""Variant x attack tables: mean +- std and n over seeds, best per column marked.

`summarize` turns the trials of a RunsTable into a tidy frame (one row per group and attack);
`to_markdown`, `to_latex` and `to_csv` render it. Accuracies print as percentages (the papers'
unit); the CSV keeps raw fractions so other tools can read it without parsing.
"""

from __future__ import annotations

import math

import pandas as pd

# (metric, column title, higher is better): the paper's attack order, then Eq. 7's distance
ATTACKS = (
    ("test/clean_acc", "Clean", True),
    ("test/fgsm_acc", "FGSM", True),
    ("test/pgd20_acc", "PGD-20", True),
    ("test/cw_acc", "CW-inf", True),
    ("test/aa_acc", "AA", True),
    ("test/cam_dist", "CAM dist.", False),  # attribution distance to the teacher: lower is better
    # black-box transfer from --transfer-from (the paper's Table 5): examples made on the source
    ("test/transfer_pgd20_acc", "Transfer PGD-20", True),
    ("test/transfer_cw_acc", "Transfer CW", True),
)


def summarize(trials: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """One row per (group, attack): the `by` columns, metric, title, mean, std, n, group_n, best.

    Groups keep the order of their first trial (the grid's order). std is the sample standard
    deviation (ddof = 1), NaN for a single run. `best` marks the highest mean accuracy and the
    lowest CAM distance of each column (ties all marked). Attacks no trial logged are left out.
    """
    rows = []
    for key, group in trials.groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        for metric, title, _ in ATTACKS:
            column = f"metrics.{metric}"
            if column not in trials.columns or trials[column].isna().all():
                continue
            values = group[column].dropna().astype(float)
            rows.append({**dict(zip(by, key)), "metric": metric, "title": title,
                         "mean": values.mean() if len(values) else math.nan,
                         "std": values.std(ddof=1) if len(values) > 1 else math.nan,
                         "n": len(values), "group_n": len(group)})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    higher = {m: h for m, _, h in ATTACKS}
    best = table.groupby("metric")["mean"].transform(
        lambda s: s.max() if higher[s.name] else s.min())
    table["best"] = table["mean"].eq(best) & table["mean"].notna()
    return table


def _cell(row, *, percent: bool, pm: str, bold) -> str:
    if row.n == 0:
        return "-"
    scale, digits = (100.0, 2) if percent else (1.0, 4)
    text = f"{row.mean * scale:.{digits}f}"
    if row.n > 1:
        text += f" {pm} {row.std * scale:.{digits}f}"
    if row.n != row.group_n:  # some runs of the group lack this metric: say how many had it
        text += f" (n={row.n})"
    return bold(text) if row.best else text


def _grid(table: pd.DataFrame, by: list[str], *, pm: str, bold, escape=str) -> tuple[list, list]:
    """(headers, rows of strings): one row per group, one column per attack."""
    metrics = list(dict.fromkeys(table["metric"]))
    titles = {m: f"{t} (%)" if h else f"{t} (lower is better)" for m, t, h in ATTACKS}
    headers = [escape(b.removeprefix("params.")) for b in by] + ["n"] + [titles[m] for m in metrics]
    rows = []
    for key, group in table.groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        cells = {r.metric: _cell(r, percent=r.metric != "test/cam_dist", pm=pm, bold=bold)
                 for r in group.itertuples()}
        rows.append([escape(_fmt(k)) for k in key] + [str(group["group_n"].iloc[0])]
                    + [cells.get(m, "-") for m in metrics])
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
    """Raw fractions, one row per (group, attack), with mean, std, n and the best flag."""
    table.drop(columns=["group_n"]).to_csv(path, index=False, float_format="%.6g")
