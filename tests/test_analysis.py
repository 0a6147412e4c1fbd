"""analysis/: tables, paired statistics and figures on MLflow stores with KNOWN values.

The stores are written with MlflowClient in the orchestrator's layout (trainables/tracking.py):
one parent run per experiment, one nested child run per trial, per-epoch and final metrics,
config.json and student.pt artifacts, the teacher as a parent artifact. No Ray, no training.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from conftest import run_cli
from trainables.services import free_port
from matplotlib.image import imread
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis import load_runs
from analysis.report import report_experiment
from analysis.report import main
from analysis.stats import interval, paired_differences, pareto_mask, reference_of
from analysis.tables import summarize, to_latex, to_markdown
from smaraad.models import build_model, save_checkpoint

T_975_2 = 4.302652729749464  # Student's t, 97.5% quantile, 2 degrees of freedom (tables)

# test metrics per variant, one value per seed 0, 1, 2 (pgd20, clean, cam_dist)
PGD20 = {"kd": [0.40, 0.43, 0.43], "kd_align": [0.45, 0.47, None], "sm": [0.48, 0.50, 0.55],
         "sm_align": [0.50, 0.52, 0.54]}
CLEAN = {"kd": [0.80, 0.82, 0.84], "kd_align": [0.81, 0.80, None], "sm": [0.78, 0.79, 0.80],
         "sm_align": [0.79, 0.80, 0.81]}
CAM = {"kd": 0.20, "kd_align": 0.10, "sm": 0.15, "sm_align": 0.05}


class Store:
    """An MLflow store in the orchestrator's layout, with the known values above."""

    def __init__(self, root):
        self.root, self.uri = root, f"sqlite:///{root / 'mlflow.db'}"
        self.c = MlflowClient(self.uri)
        torch.manual_seed(0)
        self.ckpt = root / "student.pt"  # one tiny real checkpoint serves every student
        save_checkpoint(self.ckpt, build_model("small_cnn"),
                        config={"dataset": "embedded", "eps_255": 8.0})

    def parent(self, name: str, kind: str, *, search="", grid="", teacher=True) -> str:
        exp = self.c.create_experiment(name, artifact_location=str(self.root / "artifacts" / name))
        tags = {"smaraad.kind": kind, "smaraad.space": name.split("-")[0], "smaraad.mode": "max",
                "smaraad.metric": "val/pgd_acc", "smaraad.search_keys": search,
                "smaraad.grid_keys": grid, "smaraad.objectives": "", "git_commit": "abc"}
        run = self.c.create_run(exp, run_name=name, tags=tags)
        self.c.log_batch(run.info.run_id,
                         params=[Param("space", name), Param("seeds", "[0, 1, 2]")])
        if teacher:
            torch.manual_seed(1)
            path = self.root / "teacher.pt"
            save_checkpoint(path, build_model("small_resnet"), config={"dataset": "embedded"})
            self.c.log_artifact(run.info.run_id, str(path), "teacher")
        self.c.set_terminated(run.info.run_id)
        self.exp, self.parent_id = exp, run.info.run_id
        return run.info.run_id

    def trial(self, trial_id: str, params: dict, *, curve=(), final=None, tags=None,
              teacher_pgd=0.30, status="FINISHED") -> str:
        run = self.c.create_run(self.exp, run_name=trial_id, tags={
            "mlflow.parentRunId": self.parent_id, "smaraad.trial_id": trial_id, **(tags or {})})
        rid = run.info.run_id
        metrics = [Metric("teacher/eval_pgd20_acc", teacher_pgd, 0, 0)]
        for epoch, (clean, robust) in enumerate(curve, start=1):
            metrics += [Metric("val/clean_acc", clean, 0, epoch),
                        Metric("val/pgd_acc", robust, 0, epoch), Metric("epoch", epoch, 0, epoch)]
        metrics += [Metric(k, v, 0, len(curve)) for k, v in (final or {}).items() if v is not None]
        self.c.log_batch(rid, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
        if final:
            self.c.set_tag(rid, "smaraad.completed", "true")
            self.c.log_artifact(rid, str(self.ckpt))
        self.c.set_terminated(rid, status=status)
        return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("mlflow"))
    s.parent("ablation-1", "ablate", grid="method")
    n = 0
    for seed in (2, 0, 1):  # out of order: pairing must go by seed, not by position
        for v in PGD20:
            if PGD20[v][seed] is None:
                continue
            s.trial(f"a_{n:05d}", {"method": v, "seed": seed}, curve=[(0.5, 0.2)],
                    tags={"variant": v, "smaraad.flags": "none"},
                    final={"test/pgd20_acc": PGD20[v][seed], "test/clean_acc": CLEAN[v][seed],
                           "test/cam_dist": CAM[v], "n": 100})
            n += 1
    s.trial("a_failed", {"method": "kd", "seed": 3}, tags={"variant": "kd", "smaraad.error": "x"},
            status="FAILED")

    s.parent("gamma_alpha-1", "tune", search="gamma,alpha")
    # (gamma, alpha) -> val (clean, pgd) per epoch; None = the paper's point (gamma not logged)
    tune = {"t1": ((None, 1.0), [(0.5, 0.20), (0.6, 0.30), (0.7, 0.40), (0.8, 0.45)]),
            "t2": ((10.0, 0.5), [(0.6, 0.10), (0.7, 0.15)]),
            "t3": ((0.3, 0.2), [(0.5, 0.25), (0.6, 0.35), (0.7, 0.40), (0.9, 0.38)]),
            "t4": ((300.0, 0.9), [(0.4, 0.20), (0.5, 0.28), (0.6, 0.42), (0.7, 0.50)])}
    for tid, ((gamma, alpha), curve) in tune.items():
        params = {"method": "smaraad_pp", "seed": 0, "alpha": alpha,
                  **({"gamma": gamma} if gamma else {})}
        full = len(curve) == 4
        s.trial(tid, params, curve=curve, final={"test/pgd20_acc": 0.4} if full else None,
                tags={} if full else {"smaraad.stopped_early": "after epoch 2"})

    s.parent("teachers-1", "ablate", grid="method", teacher=False)
    for i, (tpgd, spgd) in enumerate([(0.30, 0.40), (0.35, 0.42), (0.40, 0.47)]):
        s.trial(f"w{i}", {"method": "sm_align", "seed": 0}, tags={"variant": "sm_align"},
                teacher_pgd=tpgd, final={"test/pgd20_acc": spgd})

    s.parent("pending-1", "ablate", grid="method")
    s.trial("p0", {"method": "kd", "seed": 0}, curve=[(0.5, 0.2)], status="RUNNING")
    return s


@pytest.fixture(scope="module")
def ablation_report(store, tmp_path_factory):
    lines = []
    out = tmp_path_factory.mktemp("report")
    with one_thread():  # a shared 2-core machine: the CAM figure's PGD stays on one core
        paths = report_experiment("ablation-1", tracking_uri=store.uri, out=str(out),
                                  log=lines.append)
    return paths, "\n".join(lines)


@contextmanager
def one_thread():
    """torch on one thread, then back to the caller's count (later tests must not inherit it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def test_load_runs_one_row_per_trial_with_full_config(store):
    runs = load_runs("gamma_alpha-1", store.uri)
    assert runs.kind == "tune" and runs.keys("search_keys") == ["gamma", "alpha"]
    assert list(runs.trials["trial_id"]) == ["t1", "t2", "t3", "t4"]
    # t1 logged no gamma (it is the method's default): the table fills it in as MLflow would hold it
    assert runs.trials.set_index("trial_id").loc["t1", "params.gamma"] == "1000.0"
    assert list(runs.finished["trial_id"]) == ["t1", "t3", "t4"]
    h = runs.histories("val/pgd_acc")
    assert list(h[h.trial_id == "t2"]["value"]) == [0.10, 0.15]
    assert list(h[h.trial_id == "t3"]["step"]) == [1, 2, 3, 4]
    ablation = load_runs("ablation-1", store.uri)
    assert len(ablation.trials) == 12 and len(ablation.finished) == 11  # the failed one is out
    assert ablation.teacher_artifact() == "teacher/teacher.pt"


def test_table_mean_std_seeds_failures_and_best_marks(store):
    runs = load_runs("ablation-1", store.uri)
    done = runs.finished
    t = summarize(runs.trials, ["variant"]).set_index(["variant", "metric"])
    kd = t.loc[("kd", "test/pgd20_acc")]
    assert kd["seeds"] == 3 and kd["mean"] == pytest.approx(0.42) and kd["n"] == "100"
    assert kd["failed"] == "a_failed seed 3: x"  # the failed trial is named, not averaged
    assert kd["std"] == pytest.approx(np.std([0.40, 0.43, 0.43], ddof=1))
    assert t.loc[("kd_align", "test/pgd20_acc")]["seeds"] == 2
    # highest accuracy, lowest CAM distance: sm_align's PGD-20 (0.52 > sm's 0.51), kd's clean
    assert sorted(t[t["best"]].index) == [("kd", "test/clean_acc"), ("sm_align", "test/cam_dist"),
                                          ("sm_align", "test/pgd20_acc")]
    md = to_markdown(summarize(runs.trials, ["variant"]), ["variant"])
    assert ("| variant | seeds | n | Clean (%) | PGD-20 (%) | CAM dist. (lower is better) | "
            "failed |") in md
    assert ("| kd | 3 | 100 | **82.00 ± 2.00** | 42.00 ± 1.73 | 0.2000 ± 0.0000 | "
            "a_failed seed 3: x |") in md
    assert "| sm | 3 | 100 | 79.00 ± 1.00 | 51.00 ± 3.61 | 0.1500 ± 0.0000 | - |" in md
    assert "| kd_align | 2 | 100 | 80.50 ± 0.71 | 46.00 ± 1.41 |" in md
    assert "failed" not in to_markdown(summarize(done, ["variant"]), ["variant"])
    assert r"\textbf{52.00 $\pm$ 2.00}" in to_latex(summarize(done, ["variant"]), ["variant"])


def test_paired_differences_known_values(store):
    done = load_runs("ablation-1", store.uri).finished
    assert reference_of(done["variant"]) == "sm_align"
    d = paired_differences(done, "sm_align").set_index(["variant", "metric"])
    kd = d.loc[("kd", "test/pgd20_acc")]  # per seed: -0.10, -0.09, -0.11
    half = T_975_2 * 0.01 / math.sqrt(3)
    assert kd["n_pairs"] == 3 and kd["mean_diff"] == pytest.approx(-0.10)
    assert (kd["ci_low"], kd["ci_high"]) == pytest.approx((-0.10 - half, -0.10 + half))
    assert kd["real"]
    sm = d.loc[("sm", "test/pgd20_acc")]  # -0.02, -0.02, +0.01: the interval holds 0
    assert sm["mean_diff"] == pytest.approx(-0.01) and not sm["real"]
    ka = d.loc[("kd_align", "test/pgd20_acc")]  # seed 2 missing: two pairs, -0.05 and -0.05
    assert ka["n_pairs"] == 2 and ka["mean_diff"] == pytest.approx(-0.05)
    assert (ka["ci_low"], ka["ci_high"]) == pytest.approx((-0.05, -0.05))


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    d = np.array([-0.10, -0.09, -0.11, -0.12, -0.08])
    lo, hi = interval(d, method="bootstrap", n_boot=2000, seed=3)
    assert (lo, hi) == interval(d, method="bootstrap", n_boot=2000, seed=3)
    assert -0.12 <= lo < d.mean() < hi <= -0.08
    assert all(math.isnan(v) for v in interval(np.array([0.1])))


def test_pareto_mask():
    points = np.array([[0.8, 0.45], [0.9, 0.38], [0.7, 0.40], [0.8, 0.45], [0.6, 0.50]])
    assert pareto_mask(points).tolist() == [True, True, False, True, True]  # ties both stay


def _readable_png(path):
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.01  # not blank


def _names(paths) -> list[str]:
    """Report files by name, model_info files as model_info/<name>."""
    return sorted("/".join(p.split("/")[-2:]) if "/model_info/" in p else p.rsplit("/", 1)[1]
                  for p in paths)


def _model_infos(runs) -> list[str]:
    return [f"model_info/{t}.json" for t in runs.finished["trial_id"]]


def test_ablation_report_writes_tables_stats_and_figures(store, ablation_report):
    paths, log = ablation_report
    runs = load_runs("ablation-1", store.uri)
    names = _names(paths)
    assert names == sorted(["benchmark.json", "fig2_cams.png", "fig4_ablation.png", "stats.csv",
                            "stats.md", "table.csv", "table.md", "table.tex", "verdicts.csv",
                            "verdicts.json", "verdicts.md", *_model_infos(runs)])
    for p in paths:
        if p.endswith(".png"):
            _readable_png(p)
    assert "| kd | sm_align | PGD-20 | 3 | -10.00 pp |" in log
    assert "no student-vs-teacher figure" in log  # a single teacher
    # Figure 4's verdicts: sm_align - kd on PGD-20 is +10 pp in every seed
    assert "| Figure 4 | sm_align - kd | PGD-20 | 3 | +10.00 pp |" in log
    top = [f.path for f in store.c.list_artifacts(runs.parent_id, "report") if not f.is_dir]
    infos = [f.path for f in store.c.list_artifacts(runs.parent_id, "report/model_info")]
    assert _names(top + infos) == names


def test_tune_report_figures_and_importance(store, tmp_path):
    lines = []
    paths = report_experiment("gamma_alpha-1", tracking_uri=store.uri, out=str(tmp_path),
                              log=lines.append)
    assert _names(paths) == sorted(
        ["benchmark.json", "fig2_cams.png", "table.csv", "table.md", "table.tex",
         "tune_asha_curves.png", "tune_history.png", "tune_importance.png", "tune_pareto.png",
         *_model_infos(load_runs("gamma_alpha-1", store.uri))])
    for p in paths:
        if p.endswith(".png"):
            _readable_png(p)
    assert "| t1 | 1000 | 1 | 1 |" in (tmp_path / "table.md").read_text()
    assert any(line.startswith("fANOVA importance: ") for line in lines)


def test_student_vs_teacher_figure_when_teachers_differ(store, tmp_path):
    paths = report_experiment("teachers-1", tracking_uri=store.uri, out=str(tmp_path),
                              log=lambda s: None)
    fig1 = [p for p in paths if p.endswith("fig1_student_vs_teacher.png")]
    assert fig1 and not any(p.endswith("fig2_cams.png") for p in paths)  # no teacher artifact
    _readable_png(fig1[0])


@pytest.mark.parametrize("argv, says", [
    (["--experiment", "nope"], "known: ablation-1, gamma_alpha-1, pending-1, teachers-1"),
    (["--experiment", "pending-1"], "no finished trials yet"),
    (["--experiment", "Default"], "no orchestrator parent run"),
    ([], "the following arguments are required: --experiment"),
])
def test_bad_input_is_one_line_and_exit_2(store, tmp_path, capsys, argv, says):
    code, out, err = run_cli(main, [*argv, "--tracking-uri", store.uri, "--out", str(tmp_path)],
                             capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and says in err


def test_unreachable_tracking_uris_exit_2_and_create_nothing(tmp_path, capsys):
    missing = tmp_path / "none" / "mlflow.db"
    for uri, says in ((f"sqlite:///{missing}", "no MLflow database"),
                      (f"http://127.0.0.1:{free_port()}", "no MLflow server answers")):
        code, _, err = run_cli(main, ["--experiment", "x", "--tracking-uri", uri], capsys)
        assert code == 2 and err.count("\n") == 1 and says in err
    assert not missing.exists()
