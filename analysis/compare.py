"""`python -m analysis.compare`: one variant of an experiment against one of another, paired by seed.

The question a tune leaves open: does the configuration chosen on validation beat the paper's on
the test split? Rerun the chosen point over seeds (`python -m orchestrator.ablate --space methods
--variants smaraad_pp --set gamma=G --set alpha=A --name NAME`), then

    python -m analysis.compare --experiment NAME --against bench-methods --variant smaraad_pp

Each side is its experiment's finished trials of the variant (--variant, --against-variant when it
is named differently there). Trials are paired by seed; a seed on one side only is dropped. For every
attack metric both sides logged: the mean difference (experiment - against) with its 95% interval
(analysis/stats.py), and on PGD-20 and AutoAttack the verdict of "the experiment's side is more
robust": "holds", "reversed" or "not resolved at this n" (analysis/verdicts.py).

Decisions:
  - The params whose values differ between the sides are listed: they are what is compared (e.g.
    gamma, alpha). A difference in the evaluation (the data set, eps, the test images `n`, AutoAttack's
    `aa/n`) is refused: the accuracies would then not measure the same thing. Training recipe keys
    (epochs, training size, teacher) may differ; they are listed like any other.
  - Paired by seed because a seed fixes the initialisation, the data order and the attacks'
    randomness on both sides, as within one experiment (analysis/stats.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from analysis import stats, verdicts
from analysis.formats import write_json
from analysis.runs import ExperimentError, load_runs
from smaraad import metrics
from smaraad.cli import Parser, command
from smaraad.paths import writable_dir

EVALUATION_PARAMS = ("dataset", "eps_255")        # a difference here: not the same accuracy
EVALUATION_METRICS = ("n", "aa/n")                # the test images of the evaluation
IGNORED_PARAMS = ("seed", "device", "precision")  # where and which seed, not what was run
SIDES = ("experiment", "against")


def side(experiment: str, variant: str, tracking_uri: str | None,
         options: tuple[str, str]) -> pd.DataFrame:
    """The finished trials of `variant` in `experiment` (ExperimentError naming the side's
    `options`, experiment and variant, if there are none)."""
    try:
        done = load_runs(experiment, tracking_uri).finished
    except ExperimentError as exc:  # its message names --experiment: say which side
        raise ExperimentError(str(exc).replace("--experiment", options[0], 1)) from None
    rows = done[done["variant"] == variant]
    if rows.empty:
        known = ", ".join(sorted(map(str, done["variant"].unique())))
        raise ExperimentError(f"{options[1]} {variant!r}: no finished trial of it in "
                              f"{experiment!r}; it has: {known}")
    return rows


def differing_params(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, tuple]:
    """{param: (a's values, b's values)} for every param whose set of values differs."""
    out = {}
    for column in sorted(set(a.columns) | set(b.columns)):
        if not column.startswith("params.") or column[7:] in IGNORED_PARAMS:
            continue
        va, vb = (tuple(sorted(map(str, f[column].dropna().unique()))) if column in f else ()
                  for f in (a, b))
        if va != vb:
            out[column[7:]] = (va, vb)
    return out


def check_comparable(a: pd.DataFrame, b: pd.DataFrame, diff: dict[str, tuple],
                     names: tuple[str, str]) -> None:
    """ExperimentError when the two sides were not evaluated alike (see the module docstring);
    `diff`: their differing_params."""
    for key in EVALUATION_PARAMS:
        if key in diff:
            raise ExperimentError(f"{key}: {names[0]} has {', '.join(diff[key][0]) or 'none'}, "
                                  f"{names[1]} {', '.join(diff[key][1]) or 'none'}; the two "
                                  "sides must be evaluated alike")
    for key in EVALUATION_METRICS:
        column = f"metrics.{key}"
        va, vb = (sorted(set(f[column].dropna())) if column in f else [] for f in (a, b))
        if va != vb:
            raise ExperimentError(f"{key} (test images evaluated): {names[0]} has {va}, "
                                  f"{names[1]} {vb}; the two sides must be evaluated alike")


def compare(experiment: str, against: str, variant: str, *, against_variant: str | None = None,
            tracking_uri: str | None = None, method: str = "t") -> dict:
    """The paired comparison as a JSON-ready dict: sides, differing params, differences (every
    attack metric), verdicts (PGD-20 and AA). ExperimentError on an unusable side."""
    against_variant = against_variant or variant
    a = side(experiment, variant, tracking_uri, ("--experiment", "--variant"))
    b = side(against, against_variant, tracking_uri, ("--against", "--against-variant"))
    labels = (f"{experiment}:{variant}", f"{against}:{against_variant}")
    differs = differing_params(a, b)
    check_comparable(a, b, differs, labels)
    both = pd.concat([a.assign(side=SIDES[0]), b.assign(side=SIDES[1])], ignore_index=True)
    diffs = stats.paired_differences(both, SIDES[1], by="side", method=method)
    claim_keys = {metrics.REGISTRY[m].key() for m in verdicts.CLAIM_METRICS}
    rows = []
    for r in diffs.itertuples():
        row = {"metric": r.metric, "title": r.title, "n": int(r.n_pairs),
               "estimate": r.mean_diff, "ci_low": _finite(r.ci_low), "ci_high": _finite(r.ci_high)}
        if r.metric in claim_keys:
            row["verdict"] = verdicts.verdict(r.ci_low, r.ci_high, positive=True)
        rows.append(row)
    means = {s: {} for s in SIDES}
    for m in rows:  # each side over the seeds its difference pairs (as paired_differences does)
        column = f"metrics.{m['metric']}"
        per_seed = [f.groupby("seed")[column].mean().dropna() for f in (a, b)]
        paired = per_seed[0].index.intersection(per_seed[1].index)
        for s, values in zip(SIDES, per_seed):
            means[s][m["metric"]] = float(values[paired].mean())
    return {"comparison": f"{labels[0]} - {labels[1]}", "experiment": labels[0],
            "against": labels[1], "seeds": {s: sorted(int(x) for x in f["seed"].dropna())
                                            for s, f in zip(SIDES, (a, b))},
            "differs": {k: {SIDES[0]: list(v[0]), SIDES[1]: list(v[1])}
                        for k, v in differs.items()},
            "means": means, "differences": rows, "ci": method}


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def to_markdown(result: dict) -> str:
    """The differences in percentage points, with the verdicts and what differs."""
    lines = [f"{result['comparison']}, paired by seed "
             f"({', '.join(map(str, result['seeds'][SIDES[0]]))} against "
             f"{', '.join(map(str, result['seeds'][SIDES[1]]))})", ""]
    differs = result["differs"]
    lines.append("differs: " + ("; ".join(
        f"{k} {', '.join(v[SIDES[0]]) or '(default)'} vs {', '.join(v[SIDES[1]]) or '(default)'}"
        for k, v in differs.items()) if differs else "nothing but the experiment"))
    lines += ["", "| attack | pairs | experiment (%) | against (%) | estimate | 95% CI | verdict |",
              "|---|---|---|---|---|---|---|"]
    for r in result["differences"]:
        if not getattr(metrics.by_key(r["metric"]), "percent", True):
            continue  # e.g. the CAM distance: not an accuracy
        ci = "-" if r["ci_low"] is None else f"[{r['ci_low'] * 100:+.2f}, {r['ci_high'] * 100:+.2f}]"
        lines.append(f"| {r['title']} | {r['n']} | "
                     f"{result['means'][SIDES[0]][r['metric']] * 100:.2f} | "
                     f"{result['means'][SIDES[1]][r['metric']] * 100:.2f} | "
                     f"{r['estimate'] * 100:+.2f} pp | {ci} | {r.get('verdict', '')} |")
    return "\n".join(lines) + "\n"


def write(result: dict, out: str | Path, log: Callable[[str], None] = print) -> list[str]:
    """compare.md and compare.json in `out`; the table also through `log`."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    text = to_markdown(result)
    (folder / "compare.md").write_text(text)
    log(text)
    return [str(folder / "compare.md"), write_json(folder / "compare.json", result)]


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m analysis.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", required=True, help="MLflow experiment of the side tested "
                   "(e.g. the tuned point rerun over seeds)")
    p.add_argument("--against", required=True, help="MLflow experiment of the reference side "
                   "(e.g. the one holding the paper's point)")
    p.add_argument("--variant", required=True, help="the variant compared (e.g. smaraad_pp)")
    p.add_argument("--against-variant", help="its name in --against (default: --variant)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///./mlflow.db)")
    p.add_argument("--out", help="output folder (default: reports/<experiment>-vs-<against>)")
    p.add_argument("--ci", choices=("t", "bootstrap"), default="t",
                   help="confidence intervals of the paired differences (default: t)")
    args = p.parse_args(argv)
    out = args.out or f"reports/{args.experiment}-vs-{args.against}"
    writable_dir(out, "--out")  # before MLflow is read: a bad --out fails in a second
    result = compare(args.experiment, args.against, args.variant,
                     against_variant=args.against_variant, tracking_uri=args.tracking_uri,
                     method=args.ci)
    write(result, out)
    return 0


if __name__ == "__main__":
    command(main)
