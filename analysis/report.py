"""`python -m analysis.report --experiment NAME`: tables, statistics and figures of one experiment.

Reads the experiment from MLflow (the parent run and its trial runs, their metrics and
artifacts); only the CAM figure needs models, and for it this loads the teacher and students'
checkpoints and the test images through the core (smaraad.models, smaraad.data). Writes every
output the experiment supports into --out, prints the main table, and logs the files as
artifacts of the parent run under `report/`, so they sit beside the runs in the MLflow UI (the
one write analysis/ makes to MLflow).

    ablation (kind ablate): table.{md,csv,tex}, stats.{md,csv} (paired differences against
      sm_align or smaraad), fig4_ablation.png, fig2_cams.png (teacher artifact logged); with
      several teachers also fig1_student_vs_teacher.png, teacher_slopes.{md,csv} (each method's
      slope of student on teacher robustness, 95% CI) and table_by_teacher.md; verdicts.{md,csv,
      json}: the paper's claims it speaks to (Table 3, Figure 4, Figure 1), each "holds",
      "reversed" or "not resolved at this n" with its 95% interval
    tuning (kind tune): table.{md,csv,tex} (one row per finished trial), tune_history.png,
      tune_importance.png (>= 2 trials, a varying parameter), tune_asha_curves.png,
      tune_pareto.png, fig2_cams.png (the best trial's student)
    both: model_info/<trial id>.json (RobustBench's format, one per finished trial) and
      benchmark.json (FastAT's layout: data set -> method -> seeds, mean, std), under
      report/model_info/ and report/ in MLflow
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from analysis import figures, formats, stats, tables, teachers, verdicts
from analysis.runs import RunsTable, load_runs
from smaraad.attacks import from_255
from smaraad.cli import Parser, command
from smaraad.paths import writable_dir

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per download
CAM_IMAGES = 4  # test images in the CAM figure: enough to see a pattern, small enough to read


def report_experiment(experiment: str, *, tracking_uri: str | None = None, out: str,
                      log: Callable[[str], None] = print, ci: str = "t",
                      flat_margin: float = 0.0) -> list[str]:
    """Write the report of `experiment` into `out`; return the paths written (UserError if the
    experiment cannot be read or has no finished trial)."""
    writable_dir(out, "--out")  # before MLflow is read: a bad --out fails in a second
    runs = load_runs(experiment, tracking_uri)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    done = runs.finished
    tune = runs.kind == "tune"
    by = ["trial_id", *(f"params.{k}" for k in runs.keys("search_keys"))] if tune else ["variant"]
    summary = tables.summarize(runs.trials, by)  # failed trials too: their row names the reason
    written = [_write(folder / "table.md", tables.to_markdown(summary, by)),
               _write(folder / "table.tex", tables.to_latex(summary, by))]
    tables.to_csv(summary, str(folder / "table.csv"))
    written.append(str(folder / "table.csv"))
    log(f"\n{experiment} ({runs.kind}): {len(done)} finished of {len(runs.trials)} trial(s); "
        f"test split{'' if tune else ', mean +- std over seeds'}")
    log(tables.to_markdown(summary, by))

    if tune:
        written += _tune_outputs(runs, folder, log)
        best = _best(runs)
        picks = [(f"best {best.trial_id}", best.run_id)]
    else:
        written += _ablation_outputs(runs, summary, folder, log, ci)
        written += _verdict_outputs(runs.finished, folder, log, ci, flat_margin)
        first = done.sort_values("seed").drop_duplicates("variant")  # lowest seed per variant
        picks = [(f"{r.variant} (seed {r.seed})", r.run_id) for r in first.itertuples()]
    written.append(_cams(runs, picks, str(folder / "fig2_cams.png"), log))

    written = [p for p in written if p] + _formats(runs, folder, log)
    for path in written:
        sub = Path(path).parent.relative_to(folder).as_posix()
        runs.client.log_artifact(runs.parent_id, path, "report" if sub == "." else f"report/{sub}")
    log(f"report: {len(written)} file(s) in {folder}, logged to MLflow run {runs.parent_id} "
        "under report/")
    return written


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _ablation_outputs(runs: RunsTable, summary, folder: Path, log, ci: str) -> list:
    done, out = runs.finished, []
    reference = stats.reference_of(done["variant"])
    if reference and done["variant"].nunique() > 1:
        diffs = stats.paired_differences(done, reference, method=ci)
        text = stats.to_markdown(diffs, method=ci)
        out.append(_write(folder / "stats.md", text))
        diffs.to_csv(folder / "stats.csv", index=False, float_format="%.6g")
        out.append(str(folder / "stats.csv"))
        log(f"paired by seed, variant minus {reference}:")
        log(text)
    else:
        log("no statistics: they compare variants with sm_align or smaraad, and this experiment "
            f"has {', '.join(map(str, done['variant'].unique()))}")
    out.append(figures.ablation_bars(summary, "variant", str(folder / "fig4_ablation.png"),
                                     title=f"{runs.experiment}: accuracy per attack"))
    fig1 = figures.student_vs_teacher(done, "variant", str(folder / "fig1_student_vs_teacher.png"))
    if fig1 is None:
        log("no student-vs-teacher figure: every trial distilled from the same teacher")
        return out
    return out + [fig1] + _teacher_outputs(done, folder, log)


def _verdict_outputs(done, folder: Path, log, ci: str, flat_margin: float) -> list:
    """The paper's claims this experiment speaks to, judged (analysis/verdicts.py)."""
    table = verdicts.verdicts(done, method=ci, flat_margin=flat_margin)
    if table.empty:
        log("no verdicts: the experiment compares none of the paper's claims (Table 3, "
            "Figure 4, Figure 1)")
        return []
    text = verdicts.to_markdown(table)
    table.to_csv(folder / "verdicts.csv", index=False, float_format="%.6g")
    log("the paper's claims, judged from 95% intervals:")
    log(text)
    return [_write(folder / "verdicts.md", text), str(folder / "verdicts.csv"),
            formats.write_json(folder / "verdicts.json",
                               {"verdicts": _records(table), "ci": ci,
                                "flat_margin": flat_margin})]


def _records(table) -> list[dict]:
    """Rows as JSON-ready dicts (NaN -> null)."""
    return [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
            for row in table.astype(object).to_dict("records")]


def _formats(runs: RunsTable, folder: Path, log) -> list:
    """RobustBench model_info per finished trial, the FastAT-style benchmark of the experiment."""
    done = runs.finished
    out = [formats.write_json(folder / "model_info" / f"{trial['trial_id']}.json",
                              formats.model_info(trial, experiment=runs.experiment,
                                                 parent_tags=runs.parent_tags))
           for _, trial in done.iterrows()]
    out.append(formats.write_json(folder / "benchmark.json",
                                  formats.benchmark(done, tune=runs.kind == "tune")))
    log(f"formats: {len(out) - 1} RobustBench model_info file(s) in {folder / 'model_info'}, "
        f"benchmark.json (data set -> method -> seeds, mean, std)")
    return out


def _teacher_outputs(done, folder: Path, log) -> list:
    """The paper's teacher claim as numbers, and the table split by teacher."""
    out = []
    slopes = teachers.slopes(done)
    if len(slopes):
        text = teachers.to_markdown(slopes)
        out.append(_write(folder / "teacher_slopes.md", text))
        slopes.to_csv(folder / "teacher_slopes.csv", index=False, float_format="%.6g")
        out.append(str(folder / "teacher_slopes.csv"))
        log("student robustness vs teacher robustness, slope per method:")
        log(text)
    if "params.teacher" in done.columns and done["params.teacher"].nunique() > 1:
        by = ["variant", "params.teacher"]
        out.append(_write(folder / "table_by_teacher.md",
                          tables.to_markdown(tables.summarize(done, by), by)))
    return out


def _tune_outputs(runs: RunsTable, folder: Path, log) -> list:
    metric, trials = runs.metric, runs.trials
    keys = runs.keys("search_keys")
    importance = stats.param_importance(trials, keys, metric, runs.mode, runs.search_space())
    if importance is None:
        log("no importance figure: it needs trials that differ both in a searched parameter "
            f"and in {metric}")
    else:
        log("fANOVA importance: " + ", ".join(f"{k} {v:.2f}" for k, v in importance.items()))
    # Pareto on the declared objectives when there were several, else clean vs robust
    objectives = runs.keys("objectives") or ["val/clean_acc", metric]
    return [figures.optimisation_history(trials, metric, runs.mode,
                                         str(folder / "tune_history.png")),
            figures.importance_bars(importance, metric, str(folder / "tune_importance.png")),
            figures.asha_curves(runs.histories(metric), trials, metric,
                                str(folder / "tune_asha_curves.png")),
            figures.pareto_front(trials, objectives, str(folder / "tune_pareto.png"))]


def _best(runs: RunsTable):
    """The finished trial with the best validation metric (test metrics are only reported)."""
    done = runs.finished.dropna(subset=[f"metrics.{runs.metric}"])
    ordered = done.sort_values(f"metrics.{runs.metric}", ascending=runs.mode != "max")
    return next(ordered.itertuples()) if len(ordered) else next(runs.finished.itertuples())


def _cams(runs: RunsTable, picks: list[tuple[str, str]], path: str, log) -> str | None:
    """Figure 2 from the logged checkpoints, on the first test images of the run's data set."""
    from smaraad.config import DEFAULT_DATASET
    from smaraad.data import load_data
    from smaraad.errors import UserError
    from smaraad.models import load_checkpoint, read_checkpoint

    teacher_file = runs.teacher_artifact()
    if teacher_file is None:
        log("no CAM figure: the parent run holds no teacher artifact (none, or too large to log)")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        teacher_path = runs.download(runs.parent_id, teacher_file, tmp)
        if teacher_path is None:
            log(f"no CAM figure: {teacher_file} could not be downloaded")
            return None
        try:
            teacher = load_checkpoint(teacher_path)
            students, config = [], {}
            for label, run_id in picks:
                f = runs.download(run_id, "student.pt", Path(tmp) / run_id)
                if f is not None:
                    students.append((label, load_checkpoint(f)))
                    config = read_checkpoint(f).get("config", {})
            if not students:
                log("no CAM figure: no finished trial logged student.pt")
                return None
            splits = load_data(config.get("dataset", DEFAULT_DATASET),
                               root=config.get("data_root") or None)
        except UserError as exc:  # a CIFAR folder missing here, an unreadable checkpoint
            log(f"no CAM figure: {exc}")
            return None
    images = splits.test[0][:CAM_IMAGES].float() / 255  # uint8 -> [0, 1], the models' input
    return figures.cam_grid(teacher, students, images, splits.test[1][:CAM_IMAGES], path,
                            eps=from_255(config.get("eps_255", 8.0)))


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m analysis.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", required=True, help="MLflow experiment name (the "
                   "orchestrator's --name, e.g. ablation-20261125-121545)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///./mlflow.db)")
    p.add_argument("--out", help="output folder (default: reports/<experiment>)")
    p.add_argument("--ci", choices=("t", "bootstrap"), default="t",
                   help="confidence intervals of the paired differences (default: t)")
    p.add_argument("--flat-margin", type=float, default=0.0, metavar="SLOPE",
                   help="Figure 1's verdict for KL methods: 'no more robust student' holds when "
                        "the slope's interval lies below this (default 0: clearly negative)")
    args = p.parse_args(argv)
    report_experiment(args.experiment, tracking_uri=args.tracking_uri,
                      out=args.out or f"reports/{args.experiment}", ci=args.ci,
                      flat_margin=args.flat_margin)
    return 0


if __name__ == "__main__":
    command(main)
