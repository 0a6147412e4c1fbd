"""The report's figures, one PNG each (matplotlib's Agg backend: no display needed).

Ablations: bars per attack (the paper's Figure 4), student vs teacher robustness (Figure 1, only
when the trials span several teachers), CAMs of the teacher and each student on the same PGD-20
examples (Figure 2). Tuning: optimisation history, fANOVA importance, ASHA's per-trial curves, the
clean-vs-robust Pareto front. Each function writes `path` and returns it, or returns None (with
nothing written) when the experiment does not hold what the figure needs.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before pyplot: reports run headless (trial nodes, CI)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from analysis.stats import interval, pareto_mask  # noqa: E402
from analysis.teachers import STUDENT_Y, TEACHER_X, slope, varies  # noqa: E402
from smaraad import metrics  # noqa: E402

DPI = 120


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _label(metric: str) -> str:
    """'test/pgd20_acc' -> 'test PGD-20 accuracy (%)': axis labels carry the split and the unit
    (the registry's words; validation metrics name their split already)."""
    split, name = metric.split("/", 1)
    m = metrics.by_key(metric)
    if m is None:
        return metric
    words = m.words if metric in metrics.VALIDATION else f"{split} {m.words}"
    return words + (" (%)" if m.percent else "")


# --- Ablations ------------------------------------------------------------------------------

def ablation_bars(summary: pd.DataFrame, by: str, path: str, *, title: str) -> str | None:
    """Figure 4: mean accuracy per attack and variant, error bars = std over seeds."""
    if summary.empty:
        return None
    percent = {m.key(): m.percent for m in metrics.summary_metrics()}
    summary = summary[summary["metric"] != ""]  # a variant whose every trial failed: no bars
    if summary.empty:
        return None
    acc = summary[summary["metric"].map(lambda k: percent.get(k, False))]
    cam = summary[summary["metric"] == metrics.REGISTRY["cam_dist"].key()]
    variants = list(dict.fromkeys(summary[by]))
    fig, axes = plt.subplots(1, 2 if len(cam) else 1, figsize=(11 if len(cam) else 8, 4),
                             gridspec_kw={"width_ratios": [5, 1]} if len(cam) else None,
                             squeeze=False)
    titles = list(dict.fromkeys(acc["title"]))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        rows = acc[acc[by] == v].set_index("title").reindex(titles)
        axes[0, 0].bar(np.arange(len(titles)) + i * width, rows["mean"] * 100, width,
                       yerr=rows["std"].fillna(0) * 100, capsize=3, label=str(v))
    axes[0, 0].set_xticks(np.arange(len(titles)) + width * (len(variants) - 1) / 2, titles)
    axes[0, 0].set(xlabel="attack (test split)", ylabel="accuracy (%)", title=title)
    axes[0, 0].legend(title=by, fontsize=8)
    if len(cam):
        rows = cam.set_index(by).reindex(variants)
        axes[0, 1].bar(range(len(variants)), rows["mean"], yerr=rows["std"].fillna(0), capsize=3,
                       color=[f"C{i}" for i in range(len(variants))])
        axes[0, 1].set_xticks(range(len(variants)), [str(v) for v in variants], rotation=45)
        axes[0, 1].set(ylabel="MSE to the teacher's CAM (lower: closer)", title="CAM distance")
    return _save(fig, path)


def student_vs_teacher(trials: pd.DataFrame, by: str, path: str) -> str | None:
    """Figure 1: student test PGD-20 (and AutoAttack, where logged) accuracy against its teacher's
    validation PGD accuracy, one line per method; points are the mean over seeds with their 95%
    t-interval, dashed lines the least-squares fit whose slope analysis/teachers.py tabulates."""
    panels = [(m, t) for m, t in STUDENT_Y if f"metrics.{m}" in trials.columns
              and trials[f"metrics.{m}"].notna().any()]
    if not varies(trials) or not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (metric, title) in zip(axes[0], panels):
        y = f"metrics.{metric}"
        for i, (v, group) in enumerate(trials.groupby(by, sort=False)):
            pts = group[[TEACHER_X, y]].dropna().astype(float)
            if pts.empty:
                continue
            per = pts.groupby(TEACHER_X)[y].agg(list)
            means = np.array([np.mean(ys) for ys in per])
            half = np.array([_half_width(ys) for ys in per])
            ax.errorbar(per.index * 100, means * 100, yerr=half * 100, marker="o", capsize=3,
                        color=f"C{i}", label=str(v))
            fit = slope(pts[TEACHER_X].to_numpy(), pts[y].to_numpy())
            if not np.isnan(fit["slope"]):
                xs = np.array([per.index.min(), per.index.max()])
                ax.plot(xs * 100, (fit["intercept"] + fit["slope"] * xs) * 100, "--",
                        color=f"C{i}", alpha=0.6)
        ax.set(xlabel="teacher val PGD-20 accuracy (%)",
               ylabel=f"student test {title} accuracy (%)",
               title=f"Student {title} vs teacher robustness")
        ax.legend(title=by, fontsize=8)
    fig.suptitle("Does a more robust teacher give a more robust student? (mean, 95% CI over "
                 "seeds; dashed: least squares)", fontsize=10)
    return _save(fig, path)


def _half_width(ys: list) -> float:
    """Half the 95% t-interval of the mean over seeds; 0 for a single seed (no bar)."""
    if len(ys) < 2:
        return 0.0
    lo, hi = interval(np.asarray(ys, dtype=float))
    return (hi - lo) / 2


def cam_grid(teacher, students: list[tuple[str, object]], images, labels, path: str, *,
             eps: float) -> str:
    """Figure 2: CAMs (Eq. 6, label class, min-max normalised) of the teacher and each student on
    the same PGD-20 examples, crafted on the teacher so that every column sees identical inputs."""
    import torch
    import torch.nn.functional as F

    from smaraad.attacks import pgd
    from smaraad.losses import cam

    torch.manual_seed(0)  # PGD's random start: the same figure on every run
    x_adv = pgd(teacher, images, labels, eps=eps, steps=20)
    models = [("teacher", teacher), *students]
    n = len(images)
    cols = len(models) + 1
    # constrained layout makes room for the shared colour bar (tight_layout cannot)
    fig, axes = plt.subplots(n, cols, figsize=(1.8 * cols + 1, 1.8 * n + 0.6), squeeze=False,
                             layout="constrained")
    with torch.no_grad():
        for col, (name, model) in enumerate(models, start=1):
            logits, fmap = model.forward_features(x_adv)
            maps = F.interpolate(cam(fmap, model.fc.weight, labels).unsqueeze(1),
                                 size=images.shape[-2:], mode="bilinear", align_corners=False)
            for row in range(n):
                ax = axes[row, col]
                ax.imshow(x_adv[row].permute(1, 2, 0).numpy())
                shown = ax.imshow(maps[row, 0].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
                ax.set_title(f"{name}\npred {logits[row].argmax().item()}" if row == 0
                             else f"pred {logits[row].argmax().item()}", fontsize=8)
    for row in range(n):
        axes[row, 0].imshow(x_adv[row].permute(1, 2, 0).numpy())
        axes[row, 0].set_title(f"PGD-20 input\nlabel {labels[row].item()}" if row == 0
                               else f"label {labels[row].item()}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"CAMs on PGD-20 examples (eps {eps * 255:.0f}/255, crafted on the teacher)",
                 fontsize=10)
    fig.colorbar(shown, ax=axes, shrink=0.6, label="CAM of the label class (min-max, 0-1)")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


# --- Tuning ---------------------------------------------------------------------------------

def optimisation_history(trials: pd.DataFrame, metric: str, mode: str, path: str) -> str | None:
    """Each trial's last reported `metric` in start order, and the best so far."""
    column = f"metrics.{metric}"
    if column not in trials.columns:
        return None
    runs = trials[trials[column].notna()].sort_values("start_time")
    values = runs[column].to_numpy() * 100
    best = np.maximum.accumulate(values) if mode == "max" else np.minimum.accumulate(values)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    order = np.arange(1, len(runs) + 1)
    full = runs["completed"].to_numpy(dtype=bool)
    ax.scatter(order[full], values[full], label="ran every epoch")
    ax.scatter(order[~full], values[~full], marker="x", label="stopped early by ASHA")
    ax.step(order, best, where="post", color="k", label="best so far")
    ax.set(xlabel="trial (start order)", ylabel=_label(metric),
           title="Optimisation history (last reported value)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    return _save(fig, path)


def importance_bars(importances: dict[str, float] | None, metric: str, path: str) -> str | None:
    if not importances:
        return None
    fig, ax = plt.subplots(figsize=(6, 1 + 0.5 * len(importances)))
    names = list(importances)[::-1]  # most important on top
    ax.barh(names, [importances[k] for k in names])
    ax.set(xlabel=f"fANOVA importance for {metric} (share of variance)", ylabel="hyperparameter",
           title="Hyperparameter importance", xlim=(0, 1))
    return _save(fig, path)


def asha_curves(history: pd.DataFrame, trials: pd.DataFrame, metric: str, path: str) -> str | None:
    """`metric` per epoch for every trial; an x marks where ASHA stopped one."""
    if history.empty:
        return None
    stopped = set(trials.loc[trials["stopped_early"] != "", "trial_id"])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for trial_id, curve in history.groupby("trial_id"):
        line, = ax.plot(curve["step"], curve["value"] * 100, marker=".", label=trial_id)
        if trial_id in stopped:
            ax.plot(curve["step"].iloc[-1], curve["value"].iloc[-1] * 100, "x", ms=10,
                    color=line.get_color())
    ax.set(xlabel="epoch", ylabel=_label(metric), title="Trial curves (x: stopped by ASHA)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if history["trial_id"].nunique() <= 12:  # beyond that a legend hides the curves
        ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def pareto_front(trials: pd.DataFrame, objectives: list[str], path: str) -> str | None:
    """Completed trials on two objectives (both maximised); the non-dominated ones joined."""
    cols = [f"metrics.{o}" for o in objectives[:2]]
    if len(cols) < 2 or any(c not in trials.columns for c in cols):
        return None
    done = trials[trials["completed"]].dropna(subset=cols)
    if done.empty:
        return None
    points = done[cols].to_numpy(dtype=float) * 100
    front = pareto_mask(points)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(points[~front, 0], points[~front, 1], color="0.6", label="dominated")
    line = points[front][np.argsort(points[front][:, 0])]
    ax.plot(line[:, 0], line[:, 1], "o-", color="C3", label="Pareto front")
    for (px, py), trial_id in zip(points[front], done.loc[front, "trial_id"]):
        ax.annotate(trial_id, (px, py), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel=_label(objectives[0]), ylabel=_label(objectives[1]),
           title="Pareto front (trials that ran every epoch)")
    ax.legend(fontsize=8)
    return _save(fig, path)
