"""Paired differences against the reference variant, with 95% confidence intervals.

Seeds fix the initialisation, the data order and the attacks' randomness, so two variants run with
the same seed share every source of noise but the method: differencing them per seed removes that
shared part, and the interval of the mean difference says whether a gap is larger than the seed
noise. With 3 seeds the t-interval is wide (t_0.975,2 = 4.30): that is the honest answer.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from smaraad import metrics

REFERENCES = ("sm_align", "smaraad")  # the ablation's full method; the baseline comparison's


def reference_of(variants) -> str | None:
    """The variant every other one is compared to, or None when the experiment has neither."""
    present = set(variants)
    return next((r for r in REFERENCES if r in present), None)


def interval(d: np.ndarray, *, method: str = "t", level: float = 0.95, n_boot: int = 10_000,
             seed: int = 0) -> tuple[float, float]:
    """A `level` confidence interval of the mean of `d`; (nan, nan) for fewer than 2 values.

    method "t": mean +- t_{(1+level)/2, n-1} * sd / sqrt(n) (assumes roughly normal differences).
    method "bootstrap": percentile interval of `n_boot` resampled means (seeded); with very few
    seeds it can only take a handful of distinct values, so prefer "t" below ~10 pairs.
    """
    n = len(d)
    if n < 2:
        return math.nan, math.nan
    if method == "t":
        half = stats.t.ppf((1 + level) / 2, n - 1) * d.std(ddof=1) / math.sqrt(n)
        return float(d.mean() - half), float(d.mean() + half)
    if method == "bootstrap":
        rng = np.random.default_rng(seed)
        means = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
        lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
        return float(lo), float(hi)
    raise ValueError(f"interval: unknown method {method!r}; allowed: t, bootstrap")


def paired_differences(trials: pd.DataFrame, reference: str, *, by: str = "variant",
                       method: str = "t", level: float = 0.95, n_boot: int = 10_000,
                       seed: int = 0, pair_on: str | list[str] = "seed") -> pd.DataFrame:
    """variant - reference per seed, for every other variant and every attack metric logged.

    Columns: variant, reference, metric, title, n_pairs, mean_diff, ci_low, ci_high, real (the
    interval excludes 0). Runs are paired by their seed (or by the `pair_on` columns, e.g. seed and
    teacher when the teacher varies too); a pair missing on either side is dropped.
    """
    rows = []
    variants = [v for v in dict.fromkeys(trials[by]) if v != reference]
    for m in metrics.summary_metrics():
        metric, title = m.key(), m.title
        column = f"metrics.{metric}"
        if column not in trials.columns:
            continue
        # seed x variant; a repeated (variant, seed) pair is averaged
        wide = trials.pivot_table(index=pair_on, columns=by, values=column, aggfunc="mean")
        if reference not in wide.columns:
            continue
        for v in variants:
            if v not in wide.columns:
                continue
            pair = wide[[v, reference]].dropna()
            if pair.empty:  # e.g. no CAM distance for a method trained without a teacher
                continue
            d = (pair[v] - pair[reference]).to_numpy(dtype=float)
            lo, hi = interval(d, method=method, level=level, n_boot=n_boot, seed=seed)
            rows.append({"variant": v, "reference": reference, "metric": metric, "title": title,
                         "n_pairs": len(d), "mean_diff": float(d.mean()),
                         "ci_low": lo, "ci_high": hi,
                         "real": bool(lo > 0 or hi < 0)})  # False for a NaN interval
    return pd.DataFrame(rows)


def to_markdown(diffs: pd.DataFrame, *, level: float = 0.95, method: str = "t") -> str:
    """Differences in percentage points (accuracies) or raw units (CAM distance)."""
    ci = f"{level:.0%} CI ({'t' if method == 't' else 'bootstrap'})"
    lines = [f"| variant | minus | attack | pairs | mean diff | {ci} | CI excludes 0 |",
             "|---|---|---|---|---|---|---|"]
    for r in diffs.itertuples():
        percent = getattr(metrics.by_key(r.metric), "percent", True)
        scale, unit, digits = (100.0, " pp", 2) if percent else (1.0, "", 4)
        ci_text = ("n < 2" if math.isnan(r.ci_low)
                   else f"[{r.ci_low * scale:+.{digits}f}, {r.ci_high * scale:+.{digits}f}]")
        lines.append(f"| {r.variant} | {r.reference} | {r.title} | {r.n_pairs} | "
                     f"{r.mean_diff * scale:+.{digits}f}{unit} | {ci_text} | "
                     f"{'yes' if r.real else 'no'} |")
    if method == "bootstrap" and len(diffs) and diffs["n_pairs"].min() < 10:
        lines.append(f"\nWith {diffs['n_pairs'].min()} pairs a bootstrap interval understates the "
                     "uncertainty (it cannot reach beyond the observed differences); prefer t.")
    return "\n".join(lines) + "\n"


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Rows of `points` (all objectives maximised) that no other row beats on every objective."""
    return np.array([not any((q >= p).all() and (q > p).any() for q in points) for p in points],
                    dtype=bool)


def param_importance(trials: pd.DataFrame, keys: list[str], metric: str, mode: str,
                     space: dict | None = None) -> dict[str, float] | None:
    """fANOVA importance of the searched hyperparameters for `metric`, or None when there is
    nothing to attribute (fewer than 2 trials with the metric, no parameter that varied, or a
    metric that did not vary: fANOVA divides by its variance).

    The trials are rebuilt as an in-memory Optuna study. Every trial that reported the metric
    counts, ASHA-stopped ones with their truncated value: that is what the sampler saw too.
    `space` is the search space as the parent run's `smaraad.search_space` tag holds it
    (RunsTable.search_space); see `distributions` for how it is used.
    """
    import optuna

    column = f"metrics.{metric}"
    if column not in trials.columns:
        return None
    done = trials[trials[column].notna()]
    values = {k: [_number(v) for v in done[f"params.{k}"]] for k in keys
              if f"params.{k}" in done.columns and done[f"params.{k}"].nunique() > 1}
    if done[column].nunique() < 2 or not values or any(None in v for v in values.values()):
        return None
    dists = distributions(values, space or {})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for i, value in enumerate(done[column]):
        params = {k: v[i] if isinstance(dists[k], optuna.distributions.FloatDistribution)
                  else str(v[i]) for k, v in values.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                  value=float(value)))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return {k: float(v) for k, v in found.items()}


def distributions(values: dict[str, list], space: dict) -> dict:
    """Optuna distributions of the observed parameter `values` (key -> one value per trial).

    A numeric key the search space declares (uniform, loguniform, int) gets its declared range
    and scale, widened to hold every observed value (the paper's point, evaluated first, may lie
    outside); fANOVA integrates over that range, so it matters. Without the declaration (a run
    logged before the tag existed) a positive range spanning two decades or more is taken as
    log-uniform. Anything non-numeric is categorical over the observed values.
    """
    import optuna

    out = {}
    for k, v in values.items():
        if not all(isinstance(x, float) for x in v):
            out[k] = optuna.distributions.CategoricalDistribution(sorted({str(x) for x in v}))
            continue
        declared = space.get(k) or {}
        if declared.get("distribution") in ("uniform", "loguniform", "int"):
            lo, hi = min(declared["low"], *v), max(declared["high"], *v)
            log = declared["distribution"] == "loguniform"
        else:
            lo, hi = min(v), max(v)
            log = lo > 0 and hi >= 100 * lo
        out[k] = optuna.distributions.FloatDistribution(float(lo), float(hi), log=log)
    return out


def _number(text):
    """A logged param back to a float, or the string itself (categorical), None if missing."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None
    try:
        return float(text)
    except ValueError:
        return text
