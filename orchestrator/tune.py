"""`python -m orchestrator.tune --space NAME`: Optuna TPE through Ray Tune, ASHA early stopping.

The paper's values are the first point evaluated; TPE (seeded) proposes the rest; ASHA stops
trials whose validation robust accuracy trails at its rungs (epochs are its time unit). Every trial
logs to a nested MLflow run; at the end the best configuration (or, with several --objectives, the
Pareto front) is printed with its validation and test metrics, and how many trial-epochs ASHA
spent out of the full budget.
"""

from __future__ import annotations

import sys
from typing import Sequence

from orchestrator import summary
from orchestrator.common import SMOKE, common_parser, resolve
from orchestrator.spaces import METRICS, SpaceError, available, load_space
from smaraad import metrics
from smaraad.cli import UsageError, command
from smaraad.errors import UserError


EXIT_STATUS = ("exit status: 0 when a trial finished; 1 when none did (each failed) or the run "
               "was interrupted (--resume continues it); 2 on a bad input")


def main(argv: Sequence[str] | None = None) -> int:
    p = common_parser("python -m orchestrator.tune", __doc__.split("\n\n")[0])
    p.epilog = EXIT_STATUS
    p.add_argument("--space", default="gamma_alpha",
                   help=f"search space name or YAML path; available: {', '.join(available())}")
    p.add_argument("--num-samples", type=int, help="trials (default: the space's)")
    p.add_argument("--objectives", help=f"several metrics, e.g. {','.join(reversed(METRICS))}: "
                   "optimise them jointly and print the Pareto front")
    args = p.parse_args(argv)
    space = load_space(args.space, args.dataset)
    if space.kind != "tune":
        raise SpaceError(f"space {space.name!r} is a grid; run it with python -m orchestrator.ablate "
                         f"--space {space.name}")
    objectives = tuple(o.strip() for o in (args.objectives or "").split(",") if o.strip())
    bad = [o for o in objectives if o not in METRICS]
    if bad or len(objectives) == 1:
        raise UsageError(f"--objectives: {bad[0] if bad else objectives[0]!r}; give two or more "
                         f"of: {','.join(METRICS)}")
    num_samples = args.num_samples if args.num_samples is not None else (
        SMOKE["num_samples"] if args.smoke_test else space.num_samples)
    if num_samples < 1:
        raise UsageError("--num-samples: must be >= 1")
    exp = resolve(args, space, kind="tune", seeds=(args.seed,), num_samples=num_samples,
                  objectives=objectives)
    if args.plan:  # before the teacher, the data and Ray
        from orchestrator.plan import print_plan
        return print_plan(exp, runs_per_variant=num_samples,
                          label=f"tune --space {space.name}, {num_samples} trials")

    from trainables.driver import execute
    rows, plan = execute(exp)
    keys = list(space.search)
    print()
    print(summary.trials_table(rows, keys, space.metric))
    spent, full = summary.budget(rows, plan.epochs)
    print(f"\nASHA ran {spent} of {full} trial-epochs ({1 - spent / max(1, full):.0%} saved)")
    if objectives:
        front = summary.pareto([x for x in rows if x["status"] == "done"], objectives, space.mode)
        print("\nPareto front (" + " vs ".join(objectives) + "):")
        final = metrics.headline_keys()
        print(summary.table(["trial", *keys, *objectives, *final],
                            [[x["metrics"]["trial_id"], *(x["config"][k] for k in keys),
                              *(x["metrics"][o] for o in objectives),
                              *(x["metrics"].get(k, "") for k in final)] for x in front]))
    else:
        top = summary.best(rows, space.metric, space.mode)
        if top:
            print(f"\nbest: " + ", ".join(f"{k}={summary.fmt(top['config'][k])}" for k in keys))
            print("  " + ", ".join(f"{k} {summary.fmt(v)}" for k, v in top["metrics"].items()
                                   if k.startswith(("val/", "test/"))))
    none = not any(x["status"] == "done" for x in rows)
    return finish(args, rows, exp,
                  incomplete=f"no trial finished: {summary.unfinished(rows)}" if none else "")


def finish(args, rows: list[dict], r, *, incomplete: str = "") -> int:
    """Shared ending: the analysis report, then failure count, resume hint, and last the URL of
    the experiment's runs table in the MLflow UI. Exit status 1 when the run was interrupted or
    the command calls it `incomplete` (its reason, printed on stderr), else 0."""
    interrupted = sum(x["status"] == "interrupted" for x in rows)
    failed = sum(x["status"] == "failed" for x in rows)
    if not args.no_report and not interrupted:
        from analysis.report import report_experiment
        try:
            report_experiment(r.name, tracking_uri=r.tracking_uri, out=f"reports/{r.name}",
                              log=print)
        except UserError as exc:  # e.g. every trial failed: the summary above says why
            print(f"no report: {exc}")
    if failed:
        print(f"\n{failed} trial(s) failed: see the tables above and their MLflow runs")
    if interrupted:
        print(f"interrupted: {interrupted} trial(s) unfinished; continue with the same command "
              f"and --resume --name {r.name}", file=sys.stderr)
    if incomplete:
        print(f"incomplete: {incomplete}; exit status 1", file=sys.stderr)
    from trainables.tracking import client
    exp = client(r.tracking_uri).get_experiment_by_name(r.name)
    print(f"\nRay: {r.storage_path}/{r.name}\nMLflow: {r.tracking_uri} (experiment {r.name})")
    if not r.tracking_uri.startswith(("http://", "https://")):
        print(f"  browse it: mlflow ui --backend-store-uri {r.tracking_uri}")
    print(f"runs: {summary.runs_url(r.tracking_uri, exp.experiment_id)}")
    return 1 if interrupted or incomplete else 0


if __name__ == "__main__":
    command(main)
