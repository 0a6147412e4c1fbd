"""The paper's three claims, each judged from 95% intervals: "holds", "reversed" or "not resolved
at this n".

    Table 3   SmaraAD and SmaraAD++ are more robust than every other distillation method: per
              pair, the seed-paired difference (ours - theirs) of test PGD-20 and AA accuracy.
    Figure 4  each component helps: the full method (sm_align = L_sm + L_align) minus each
              ablation variant (kd, kd_align, sm), paired by seed, on the same metrics.
    Figure 1  a more robust teacher gives no more robust student under KL matching, and a more
              robust one under slack matching: each method's slope of student test accuracy on
              teacher validation PGD accuracy (analysis/teachers.py), with its t-interval.

A claim expects its quantity to be positive or negative. The verdict is "holds" when the whole
interval lies on the expected side of 0, "reversed" when it lies wholly on the other side, and
"not resolved at this n" when it holds 0 (or could not be computed: fewer than 2 pairs or 3
points). Pairs: the stats module's paired differences (t-interval by default); when the teacher
also varies, runs are paired by (seed, teacher), so each difference compares one teacher's
students.

Decisions:
  - "Distillation method": a registered method that needs a teacher (smaraad/methods). Slack
    matching (SLACK_MATCHING: the SmaraAD family) against KL matching: every other one, KD+L_align
    included (its outer term is KL).
  - Figure 1 for KL methods: "no more robust student" is judged as "the slope is below
    `flat_margin`" (default 0: the interval must lie below 0, i.e. the student gets clearly worse,
    the paper's "may even decline"). A flat slope with an interval around 0 is then "not
    resolved": an interval cannot prove a zero. A positive margin (e.g. 0.1: a teacher 10 points
    more robust buys at most 1 point) turns it into an equivalence-style test; it is a switch.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis import stats, teachers
from smaraad import metrics
from smaraad.methods import ABLATION_VARIANTS, METHODS

HOLDS, REVERSED, UNRESOLVED = "holds", "reversed", "not resolved at this n"
SLACK_MATCHING = ("smaraad", "smaraad_pp", "sm", "sm_align")
OURS = ("smaraad", "smaraad_pp")           # Table 3's claimants
FULL = "sm_align"                          # Figure 4's full method (= SmaraAD)
CLAIM_METRICS = ("pgd20", "aa")            # the robust accuracies the claims are about
COLUMNS = ["claim", "comparison", "metric", "title", "n", "estimate", "ci_low", "ci_high",
           "expected", "verdict"]


def verdict(lo: float, hi: float, *, positive: bool, margin: float = 0.0) -> str:
    """The claim "the quantity is > margin" (`positive`) or "< margin" against [lo, hi]."""
    if math.isnan(lo) or math.isnan(hi):
        return UNRESOLVED
    if positive:
        return HOLDS if lo > margin else REVERSED if hi < margin else UNRESOLVED
    return HOLDS if hi < margin else REVERSED if lo > margin else UNRESOLVED


def distillers(variants) -> list[str]:
    """The KL-matching distillation methods among `variants` (see the module docstring)."""
    return [v for v in variants
            if v in METHODS and METHODS[v].needs_teacher and v not in SLACK_MATCHING]


def _pair_columns(done: pd.DataFrame) -> list[str]:
    varied = "params.teacher" in done.columns and done["params.teacher"].nunique() > 1
    return ["seed", "params.teacher"] if varied else ["seed"]


def _differences(done, claim: str, ours: str, other: str, method: str) -> list[dict]:
    """ours - other, paired, on each claim metric both logged."""
    pair = done[done["variant"].isin([ours, other])]
    diffs = stats.paired_differences(pair, other, method=method, pair_on=_pair_columns(done))
    keys = {metrics.REGISTRY[m].key() for m in CLAIM_METRICS}
    rows = []
    for r in diffs[diffs["metric"].isin(keys) & (diffs["variant"] == ours)].itertuples():
        rows.append({"claim": claim, "comparison": f"{ours} - {other}", "metric": r.metric,
                     "title": r.title, "n": r.n_pairs, "estimate": r.mean_diff,
                     "ci_low": r.ci_low, "ci_high": r.ci_high, "expected": "> 0",
                     "verdict": verdict(r.ci_low, r.ci_high, positive=True)})
    return rows


def table3(done: pd.DataFrame, *, method: str = "t") -> list[dict]:
    present = list(dict.fromkeys(done["variant"]))
    return [row for ours in OURS if ours in present for other in distillers(present)
            for row in _differences(done, "Table 3", ours, other, method)]


def figure4(done: pd.DataFrame, *, method: str = "t") -> list[dict]:
    present = set(done["variant"])
    if FULL not in present:
        return []
    return [row for v in ABLATION_VARIANTS if v != FULL and v in present
            for row in _differences(done, "Figure 4", FULL, v, method)]


def figure1(done: pd.DataFrame, *, flat_margin: float = 0.0) -> list[dict]:
    rows = []
    table = teachers.slopes(done)
    for r in table.itertuples():
        slack = r.variant in SLACK_MATCHING
        if not slack and r.variant not in distillers([r.variant]):
            continue  # not a distillation method: the claim says nothing about it
        expected = "> 0" if slack else f"< {flat_margin:g}"
        rows.append({"claim": "Figure 1", "comparison": f"slope of {r.variant}",
                     "metric": r.metric, "title": r.title, "n": r.n_points,
                     "estimate": r.slope, "ci_low": r.ci_low, "ci_high": r.ci_high,
                     "expected": expected,
                     "verdict": verdict(r.ci_low, r.ci_high, positive=slack,
                                        margin=0.0 if slack else flat_margin)})
    return rows


def verdicts(done: pd.DataFrame, *, method: str = "t", flat_margin: float = 0.0) -> pd.DataFrame:
    """Every claim the experiment's finished trials can speak to, one row per comparison and
    metric (columns COLUMNS); empty when it holds none of them."""
    rows = table3(done, method=method) + figure4(done, method=method) + \
        figure1(done, flat_margin=flat_margin)
    return pd.DataFrame(rows, columns=COLUMNS)


def to_markdown(table: pd.DataFrame) -> str:
    """Differences in percentage points, slopes as they are (pp per pp)."""
    lines = ["| claim | comparison | attack | n | estimate | 95% CI | expected | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        scale, unit = (1.0, "") if r.claim == "Figure 1" else (100.0, " pp")
        ci = "-" if math.isnan(r.ci_low) else \
            f"[{r.ci_low * scale:+.2f}, {r.ci_high * scale:+.2f}]"
        lines.append(f"| {r.claim} | {r.comparison} | {r.title} | {r.n} | "
                     f"{r.estimate * scale:+.2f}{unit} | {ci} | {r.expected} | {r.verdict} |")
    return "\n".join(lines) + "\n"
