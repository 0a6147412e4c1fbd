"""The teacher as a dimension of an experiment: specs, the space key, the trial's pick, the slope
table and Figure 1 from MLflow, black-box transfer, and the `teachers` space's smoke run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from mlflow.tracking import MlflowClient
from scipy import stats
from test_analysis import Store, _readable_png

from analysis import teachers as slopes_mod
from analysis.report import report_experiment
from orchestrator.spaces import SpaceError, _validate, load_space
from smaraad.config import ConfigError
from smaraad.teacher_specs import parse_teacher, parse_teachers


# --- specs ----------------------------------------------------------------------------------

def test_specs_parse_to_stable_labels_and_ids():
    a = parse_teacher("a", {"eps_255": 4, "method": "pgd_at", "epochs": 3})
    b = parse_teacher("b", {"epochs": 3, "eps_255": 4.0})  # same recipe, other name and order
    assert a.kind == "recipe" and a.label == "pgd_at eps4 e3" and a.id == b.id
    assert a.overrides() == {"eps_255": 4.0}
    wide = parse_teacher("w", {"arch": "small_cnn", "method": "natural", "seed": 2})
    assert wide.label == "natural small_cnn seed2" and wide.id != a.id
    assert wide.overrides() == {"seed": 2, "student": "small_cnn", "teacher_arch": "small_cnn"}
    rb = parse_teacher("r", "robustbench:Carmon2019Unlabeled")
    assert (rb.kind, rb.path, rb.label) == ("robustbench", "robustbench:Carmon2019Unlabeled",
                                            "rb:Carmon2019Unlabeled")
    f = parse_teacher("f", "/some/where/wrn.pt")
    assert (f.kind, f.label) == ("path", "file:wrn.pt")
    assert list(parse_teachers({"z": {}, "a": {}})) == ["z", "a"]  # the file's order


@pytest.mark.parametrize("name,raw,says", [
    ("t", {"eps": 4}, "unknown key 'eps'; allowed: arch, method"),
    ("t", {"method": "kd"}, "'kd'; allowed: pgd_at, trades, natural"),
    ("t", {"epochs": 2.5}, "teachers.t.epochs: 2.5; expected a whole number"),
    ("t", {"epochs": 0}, "teachers.t: "),
    ("t", {"eps_255": 300}, "teachers.t: "),
    ("t", {"arch": "vgg99"}, "teachers.t: "),
    ("t", "robustbench:", "names no model"),
    ("t", 3, "expected a checkpoint path, robustbench:NAME or a recipe"),
    ("bad name", {}, "name 'bad name'"),
])
def test_bad_specs_name_what_is_wrong(name, raw, says):
    with pytest.raises(ConfigError, match=None) as exc:
        parse_teacher(name, raw)
    assert says in str(exc.value)


# --- the space key --------------------------------------------------------------------------

def test_teachers_space_varies_four_teachers_of_six_methods():
    space = load_space("teachers")
    assert len(space.teachers) >= 4 and set(space.grid["teacher"]) == set(space.teachers)
    assert set(space.grid["method"]) == {"kd", "ard", "rslad", "adaad", "smaraad", "smaraad_pp"}
    assert len(space.seeds) >= 2 and len(space.variants) == 6 * len(space.teachers)
    assert len({s.id for s in space.teachers.values()}) == len(space.teachers)  # all distinct


def _grid(**extra):
    return {"kind": "grid", "grid": {"method": ["kd"]}, **extra}


@pytest.mark.parametrize("raw,says", [
    (_grid(teachers={"a": {}, "b": {"eps_255": 2}}), "add teacher: [a, b]"),
    ({"kind": "grid", "teachers": {"a": {}}, "grid": {"teacher": ["a", "c"]}},
     "grid.teacher: unknown teacher 'c'; allowed: a"),
    ({"kind": "tune", "teachers": {"a": {}, "b": {}},
      "search": {"teacher": {"distribution": "uniform", "low": 0, "high": 1}}},
     "a teacher is searched with choice"),
    (_grid(teachers=[{"eps_255": 2}]), "teachers: expected a mapping"),
    (_grid(teacher_aa_n=-1), "teacher_aa_n: -1"),
])
def test_bad_teacher_keys_in_a_space(raw, says):
    with pytest.raises(ConfigError) as exc:
        _validate("x", raw)
    assert says in str(exc.value)


def test_a_search_can_vary_the_teacher_from_the_first():
    space = _validate("x", {"kind": "tune", "base": {"method": "smaraad"},
                            "teachers": {"strong": {}, "weak": {"epochs": 1}},
                            "search": {"teacher": {"distribution": "choice",
                                                   "values": ["weak", "strong"]},
                                       "alpha": {"distribution": "uniform", "low": 0.1,
                                                 "high": 1.0}}})
    assert space.paper_point()["teacher"] == "strong"


def test_the_trial_picks_its_teacher_by_name_and_takes_its_arch():
    from smaraad.models import build_model
    from smaraad.config import preset_config
    from trainables.trial import TeacherWeights, TrialSetup, pick_teacher, trial_config

    def weights(arch, name):
        return TeacherWeights.of(build_model(arch), metrics={"teacher/val_pgd_acc": 0.1},
                                 path="", name=name)

    setup = TrialSetup(configs={"kd": preset_config({"dataset": "embedded", "method": "kd"})},
                       tracking=None, data=None,
                       teachers={"big": weights("small_resnet", "big"),
                                 "tiny": weights("small_cnn", "tiny")})
    assert pick_teacher(setup, {"teacher": "tiny"}).name == "tiny"
    assert pick_teacher(setup, {}).name == "big"  # no key: the experiment's first
    assert trial_config(setup, {"teacher": "tiny"}).teacher_arch == "small_cnn"
    assert trial_config(setup, {"method": "kd"}).teacher_arch == "small_resnet"  # the preset's


# --- the slope table and Figure 1 -----------------------------------------------------------

def test_slope_matches_scipy_and_its_interval_the_t_quantile():
    rng = np.random.default_rng(0)
    x = np.repeat([0.0, 0.3, 0.5, 0.8], 3)
    y = 0.2 + 0.5 * x + rng.normal(0, 0.02, len(x))
    fit = slopes_mod.slope(x, y)
    ref = stats.linregress(x, y)
    assert fit["slope"] == pytest.approx(ref.slope) and fit["se"] == pytest.approx(ref.stderr)
    half = stats.t.ppf(0.975, len(x) - 2) * ref.stderr
    assert (fit["ci_low"], fit["ci_high"]) == pytest.approx((ref.slope - half, ref.slope + half))
    two = slopes_mod.slope(np.array([0.1, 0.5]), np.array([0.2, 0.4]))
    assert two["slope"] == pytest.approx(0.5) and np.isnan(two["ci_low"])  # n - 2 = 0


# teacher val PGD -> student test (pgd20, aa) per method, seeds 0 and 1: kd flat, smaraad rising
TEACHER_PGD = (0.0, 0.4, 0.8)
STUDENT = {"kd": lambda t, s: (0.40 + 0.01 * s, 0.30 - 0.01 * s),
           "smaraad": lambda t, s: (0.30 + 0.5 * t + 0.01 * s, 0.20 + 0.4 * t)}


@pytest.fixture(scope="module")
def teacher_store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("teachers"))
    s.parent("teachers-2", "ablate", grid="method,teacher", teacher=False)
    for method, f in STUDENT.items():
        for i, t in enumerate(TEACHER_PGD):
            for seed in (0, 1):
                pgd, aa = f(t, seed)
                s.trial(f"{method}{i}{seed}", {"method": method, "seed": seed, "teacher": f"t{i}"},
                        tags={"variant": method}, teacher_pgd=t,
                        final={"test/pgd20_acc": pgd, "test/aa_acc": aa,
                               "test/transfer_pgd20_acc": pgd + 0.1})
    return s


def test_report_holds_figure1_and_one_slope_row_per_method(teacher_store, tmp_path):
    lines = []
    paths = report_experiment("teachers-2", tracking_uri=teacher_store.uri, out=str(tmp_path),
                              log=lines.append)
    names = {p.rsplit("/", 1)[1] for p in paths}
    assert {"fig1_student_vs_teacher.png", "teacher_slopes.md", "teacher_slopes.csv",
            "table_by_teacher.md"} <= names
    _readable_png(str(tmp_path / "fig1_student_vs_teacher.png"))
    table = pd.read_csv(tmp_path / "teacher_slopes.csv")
    assert sorted(table["variant"].unique()) == ["kd", "smaraad"]
    assert set(table["metric"]) == {"test/pgd20_acc", "test/aa_acc"}
    assert table["ci_low"].notna().all() and (table["ci_low"] <= table["ci_high"]).all()
    smaraad = table[(table.variant == "smaraad") & (table.metric == "test/pgd20_acc")].iloc[0]
    assert smaraad.slope == pytest.approx(0.5) and smaraad.verdict == "improves"
    assert smaraad.n_points == 6 and smaraad.n_teachers == 3
    kd = table[(table.variant == "kd") & (table.metric == "test/pgd20_acc")].iloc[0]
    assert kd.slope == pytest.approx(0.0, abs=1e-9) and kd.verdict == "no clear change"
    md = (tmp_path / "teacher_slopes.md").read_text()
    assert sum(line.startswith(("| kd |", "| smaraad |")) for line in md.splitlines()) == 2
    assert "Transfer PGD-20 (%)" in (tmp_path / "table.md").read_text()


# --- end to end: the teachers space's smoke mode --------------------------------------------

def _argv(tmp, name):
    return ["--space", "teachers", "--smoke-test", "--name", name, "--variants", "kd,smaraad",
            "--epochs", "1", "--teacher-epochs", "1", "--eval-n", "32", "--teacher-aa-n", "8",
            "--attacks", "clean,pgd20,cw,aa", "--aa-n", "8",
            "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--storage-path",
            str(tmp / "ray")]


@pytest.mark.parametrize("extra,says", [
    (["--transfer-from", "missing.pt"], "--transfer-from missing.pt: no such file"),
    (["--teacher-method", "trades"], "space 'teachers' names its teachers"),
])
def test_bad_teacher_options_exit_2_before_anything_runs(tmp_path, monkeypatch, capsys, extra,
                                                          says):
    from orchestrator import ablate

    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(ablate.main, [*_argv(tmp_path, "bad"), *extra], capsys)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ray").exists() and not (tmp_path / "reports").exists()


@pytest.mark.slow
def test_teachers_smoke_run_logs_each_teacher_and_the_slope_table(tmp_path, monkeypatch, capsys):
    import ray

    from orchestrator import ablate

    monkeypatch.chdir(tmp_path)
    try:
        code, out, err = run_cli(ablate.main, [*_argv(tmp_path, "tsmoke"), "--transfer-from",
                                               "teacher"], capsys)
    finally:
        ray.shutdown()
    assert code == 0, err
    c = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name("tsmoke").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    space = load_space("teachers")
    first, last = list(space.teachers)[0], list(space.teachers)[-1]
    assert sorted((r.data.tags["variant"], r.data.tags["smaraad.teacher"]) for r in children) == \
        sorted((m, t) for m in ("kd", "smaraad") for t in (first, last))
    by_teacher = {}
    for r in children:
        m = r.data.metrics
        for key in ("teacher/eval_clean_acc", "teacher/eval_pgd20_acc", "teacher/eval_aa_acc",
                    "test/transfer_pgd20_acc", "test/transfer_cw_acc", "test/pgd20_acc"):
            assert key in m, key
        assert r.data.params["teacher"] == r.data.tags["smaraad.teacher"]
        assert r.data.params["teacher_label"] == space.teachers[r.data.params["teacher"]].label
        assert r.data.tags["smaraad.transfer_from"] == f"teacher {r.data.params['teacher']}"
        by_teacher.setdefault(r.data.params["teacher"], set()).add(m["teacher/eval_pgd20_acc"])
    assert all(len(v) == 1 for v in by_teacher.values())  # one measurement per teacher
    report = tmp_path / "reports" / "tsmoke"
    assert (report / "fig1_student_vs_teacher.png").is_file()
    table = pd.read_csv(report / "teacher_slopes.csv")
    assert sorted(table[table.metric == "test/pgd20_acc"]["variant"]) == ["kd", "smaraad"]
