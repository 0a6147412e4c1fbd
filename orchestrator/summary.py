"""Plain-text results for the terminal: trial tables, the best point, the Pareto front, mean +- std.

The columns come from smaraad/metrics.py's registry (headline metrics in the trials table, summary
metrics in the per-variant table). Every trial appears somewhere with its status: a trial that did
not finish is listed with its reason in the trials table and in the per-variant table's `failed`
column, so "see the table" always finds it.
"""

from __future__ import annotations

import math
import statistics
from urllib.parse import urlparse

from smaraad import metrics

REASON_CHARS = 120  # of an error in the per-variant table; the trials table keeps it whole
UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store by default
# MLflow 3.17 opens an experiment on its GenAI overview (traces) unless the UI's workflow is
# "machine_learning": the query parameter switches it (the experiment tag mlflow.experimentKind
# does not), and the /runs route opens the runs table itself. Sorted by anything but the start
# time, the table lists the trials beside their parent instead of folding them under it: by run
# name (the UI's own key for it, backquotes URL-encoded), so trials are in trial-id order.
RUNS_QUERY = ("?workflowType=machine_learning&orderByKey=tags.%60mlflow.runName%60"
              "&orderByAsc=true")


def runs_url(tracking_uri: str, experiment_id: str) -> str:
    """The MLflow UI page of the experiment's runs table: on the tracking server itself for an
    http(s) URI, else on `mlflow ui`'s default address."""
    parsed = urlparse(tracking_uri)
    base = (f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"
            if parsed.scheme in ("http", "https") else UI)
    return f"{base}/#/experiments/{experiment_id}/runs{RUNS_QUERY}"


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, cells)])


def trials_table(rows: list[dict], keys: list[str], metric: str) -> str:
    final = [k for k in metrics.headline_keys() if k != metric]
    headers = ["trial", "status", *keys, "epochs", metric, *final]
    body = []
    for r in sorted(rows, key=lambda r: r["metrics"].get("trial_id", "")):
        m = r["metrics"]
        body.append([m.get("trial_id", "?"), r["status"] + (f" ({r['error']})" if r["error"] else ""),
                     *(r["config"].get(k, "") for k in keys), m.get("epoch", 0),
                     m.get(metric, ""), *(m.get(k, "") for k in final)])
    return table(headers, body)


def best(rows: list[dict], metric: str, mode: str) -> dict | None:
    """The best finished trial by its validation metric (test metrics are only reported)."""
    done = [r for r in rows if r["status"] == "done" and metric in r["metrics"]]
    if not done:
        return None
    sign = 1 if mode == "max" else -1
    return max(done, key=lambda r: sign * r["metrics"][metric])


def pareto(rows: list[dict], objectives: tuple, mode: str) -> list[dict]:
    """Trials that no other trial beats on every objective (all maximised or all minimised)."""
    sign = 1 if mode == "max" else -1
    pts = [r for r in rows if all(o in r["metrics"] for o in objectives)]
    vals = lambda r: [sign * r["metrics"][o] for o in objectives]  # noqa: E731
    def dominated(a):
        return any(all(x >= y for x, y in zip(vals(b), vals(a))) and vals(b) != vals(a)
                   for b in pts)
    return [r for r in pts if not dominated(r)]


def budget(rows: list[dict], epochs: int) -> tuple[int, int]:
    """(trial-epochs spent, trial-epochs a run without early stopping would spend)."""
    return sum(int(r["metrics"].get("epoch", 0)) for r in rows), len(rows) * epochs


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def by_variant(rows: list[dict], key: str = "method") -> str:
    """mean +- std over the finished seeds of each variant (`seeds`: how many finished); a
    `failed` column names every other trial of the variant with its status and reason."""
    done: dict[str, list[dict]] = {}
    other: dict[str, list[str]] = {}
    for r in rows:
        variant = str(r["config"].get(key))
        done.setdefault(variant, [])
        other.setdefault(variant, [])
        if r["status"] == "done":
            done[variant].append(r["metrics"])
        else:
            reason = f": {r['error'][:REASON_CHARS]}" if r.get("error") else ""
            other[variant].append(f"seed {r['config'].get('seed', '?')} {r['status']}{reason}")
    final = [m.key() for m in metrics.summary_metrics()]
    headers = [key, "seeds", *(k.split("/", 1)[1] for k in final)]
    body = [[v, len(ms), *(mean_std([m[k] for m in ms if k in m]) for k in final)]
            for v, ms in done.items()]
    if any(other.values()):
        headers.append("failed")
        for row, v in zip(body, done):
            row.append("; ".join(other[v]) or "-")
    return table(headers, body)


def unfinished(rows: list[dict]) -> str:
    """"2 of 8 trials did not finish (1 failed, 1 interrupted)", or "" when every one did."""
    counts: dict[str, int] = {}
    for r in rows:
        if r["status"] != "done":
            counts[r["status"]] = counts.get(r["status"], 0) + 1
    if not counts:
        return ""
    detail = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return f"{sum(counts.values())} of {len(rows)} trials did not finish ({detail})"
