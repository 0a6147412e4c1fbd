"""The paper's teacher claim as numbers: each method's slope of student robustness on teacher
robustness, with a 95% interval.

The claim (Sec. 3.1, 4.6.1, Figure 1): with KL-based adversarial distillation a more robust teacher
does not give a more robust student; SmaraAD's student improves with its teacher. For every method
the slope b of student test accuracy (PGD-20, AutoAttack) on the teacher's validation PGD accuracy
(`teacher/eval_pgd20_acc`, measured at the students' threat model) is fitted by least squares over
all finished trials' points (every teacher x seed). A slope of 1 means a teacher 10 points more
robust gives a student 10 points more robust; 0 means the teacher's robustness does not pass on.

Interval (decision): t-based on the regression's standard error, b +- t_{0.975, n-2} * s / sqrt(Sxx)
with s^2 = SSR / (n - 2). A bootstrap over seeds was not chosen: with 2-3 seeds per teacher it
can take only a handful of distinct values and understates the uncertainty (the same reason
analysis/stats.py prefers t below ~10 pairs). The t-interval treats trials as independent, which
they are (each has its own seed and run); it does not model a teacher-level random effect, so with
few teachers it is optimistic when the teachers themselves scatter around the line.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from smaraad import metrics

TEACHER_X = "metrics." + metrics.TEACHER["eval_pgd20_acc"].key
STUDENT_Y = (("test/pgd20_acc", "PGD-20"), ("test/aa_acc", "AA"))


def varies(trials: pd.DataFrame) -> bool:
    """Whether the trials span two or more teacher robustness values (else nothing to fit)."""
    return TEACHER_X in trials.columns and trials[TEACHER_X].dropna().nunique() > 1


def slope(x: np.ndarray, y: np.ndarray, *, level: float = 0.95) -> dict:
    """Least-squares slope of y on x, its standard error and t-interval, and Pearson's r.
    Fewer than 3 points (or one x value) leave the interval NaN: n - 2 degrees of freedom."""
    n = len(x)
    out = {"n_points": n, "slope": math.nan, "se": math.nan, "ci_low": math.nan,
           "ci_high": math.nan, "intercept": math.nan, "r": math.nan}
    sxx = float(((x - x.mean()) ** 2).sum()) if n else 0.0
    if n < 2 or sxx == 0:
        return out
    b = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
    a = float(y.mean() - b * x.mean())
    out.update(slope=b, intercept=a)
    if y.std() > 0:
        out["r"] = float(np.corrcoef(x, y)[0, 1])
    if n >= 3:
        ssr = float(((y - (a + b * x)) ** 2).sum())
        se = math.sqrt(ssr / (n - 2) / sxx)
        half = stats.t.ppf((1 + level) / 2, n - 2) * se
        out.update(se=se, ci_low=b - half, ci_high=b + half)
    return out


def slopes(trials: pd.DataFrame, *, by: str = "variant", level: float = 0.95) -> pd.DataFrame:
    """One row per (method, student metric): columns variant, metric, title, n_points,
    n_teachers, slope, se, ci_low, ci_high, intercept, r, verdict."""
    rows = []
    if not varies(trials):
        return pd.DataFrame(rows)
    for metric, title in STUDENT_Y:
        column = f"metrics.{metric}"
        if column not in trials.columns:
            continue
        for v, group in trials.groupby(by, sort=False):
            pts = group[[TEACHER_X, column]].dropna().astype(float)
            if pts.empty:
                continue
            fit = slope(pts[TEACHER_X].to_numpy(), pts[column].to_numpy(), level=level)
            rows.append({by: v, "metric": metric, "title": title,
                         "n_teachers": int(pts[TEACHER_X].nunique()), **fit,
                         "verdict": verdict(fit["ci_low"], fit["ci_high"])})
    return pd.DataFrame(rows)


def verdict(lo: float, hi: float) -> str:
    """What the interval says about 'a more robust teacher gives a more robust student'."""
    if math.isnan(lo):
        return "too few points"
    if lo > 0:
        return "improves"
    if hi < 0:
        return "gets worse"
    return "no clear change"


def to_markdown(table: pd.DataFrame, *, by: str = "variant", level: float = 0.95) -> str:
    """One row per method; per student metric its slope, [interval] and verdict."""
    titles = list(dict.fromkeys(table["title"]))
    head = [by, "teachers x seeds"] + [f"{t} slope [{level:.0%} CI]" for t in titles] + \
           [f"{t} verdict" for t in titles]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v, group in table.groupby(by, sort=False):
        cells = {r.title: r for r in group.itertuples()}
        first = group.iloc[0]
        row = [str(v), f"{first.n_teachers} x {first.n_points / max(1, first.n_teachers):.3g}"]
        for t in titles:
            r = cells.get(t)
            row.append("-" if r is None else f"{r.slope:+.2f}" + (
                "" if math.isnan(r.ci_low) else f" [{r.ci_low:+.2f}, {r.ci_high:+.2f}]"))
        row += ["-" if cells.get(t) is None else cells[t].verdict for t in titles]
        lines.append("| " + " | ".join(row) + " |")
    lines.append(f"\nSlope: student test accuracy per unit of teacher validation PGD accuracy "
                 f"(least squares over every trial; t-interval on its standard error, n - 2 "
                 f"degrees of freedom). The paper's claim: KL-based students ~0, SmaraAD > 0.")
    return "\n".join(lines) + "\n"
