"""Plain-text results for the terminal: trial tables, the best point, the Pareto front, mean +- std."""

from __future__ import annotations

import math
import statistics

FINAL = ("test/clean_acc", "test/fgsm_acc", "test/pgd20_acc", "test/cw_acc", "test/aa_acc",
         "test/cam_dist", "test/transfer_pgd20_acc", "test/transfer_cw_acc")


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
    headers = ["trial", "status", *keys, "epochs", metric, "test/pgd20_acc", "test/aa_acc"]
    body = []
    for r in sorted(rows, key=lambda r: r["metrics"].get("trial_id", "")):
        m = r["metrics"]
        body.append([m.get("trial_id", "?"), r["status"] + (f" ({r['error']})" if r["error"] else ""),
                     *(r["config"].get(k, "") for k in keys), m.get("epoch", 0),
                     m.get(metric, ""), m.get("test/pgd20_acc", ""), m.get("test/aa_acc", "")])
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
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["status"] == "done":
            groups.setdefault(str(r["config"].get(key)), []).append(r["metrics"])
    headers = [key, "n", *(k.split("/")[1] for k in FINAL)]
    body = [[v, len(ms), *(mean_std([m[k] for m in ms if k in m]) for k in FINAL)]
            for v, ms in groups.items()]
    return table(headers, body)
