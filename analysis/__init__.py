"""Reports on orchestrator experiments, read from MLflow only (never from Ray's files).

    from analysis import load_runs
    from analysis.report import report_experiment
    runs = load_runs("ablation-20261125-121545")          # one row per trial, pandas
    report_experiment(runs.experiment, out="reports/x")   # tables, statistics, figures

Command: python -m analysis.report --experiment NAME [--tracking-uri URI] [--out DIR]
(analysis.report is not imported here: `python -m` would then find it already loaded and warn.)
"""

from analysis.runs import ExperimentError, RunsTable, TrackingError, load_runs

__all__ = ["ExperimentError", "RunsTable", "TrackingError", "load_runs"]
