"""Bad input to `tune` and `ablate`: one line on stderr, exit code 2, nothing written."""

import os
from pathlib import Path

import pytest

from conftest import run_cli
from trainables.services import free_port
from orchestrator import ablate, tune
from smaraad.cli import UsageError
from smaraad.models import build_model, save_checkpoint


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


BAD_TUNE = [
    (["--space", "nope"], "available: "),
    (["--space", "ablation"], "is a grid"),
    (["--num-samples", "0"], "--num-samples"),
    (["--epochs", "many"], "invalid int value"),
    (["--cpus-per-trial", "-1"], "--cpus-per-trial"),
    (["--objectives", "val/pgd_acc"], "--objectives"),
    (["--objectives", "val/pgd_acc,test/aa_acc"], "--objectives"),
    (["--attacks", "clean,deepfool"], "unknown attack"),
    (["--dataset", "mnist"], "dataset"),
    (["--set", "alpha=3"], "alpha"),
    (["--set", "gamma"], "key=value"),
    (["--eval-n", "-5"], "--eval-n"),
    (["--aa-n", "-5"], "--aa-n"),
    (["--resume", "--name", "never-ran"], "no experiment to resume"),
    (["--tracking-uri", "http://127.0.0.1:{port}"], "no MLflow server answers"),
    (["--tracking-uri", "sqlite:////no/such/folder/m.db"], "does not exist"),
    (["--address", "127.0.0.1:{port}"], "no Ray cluster answers"),
    (["--teacher", "missing.pt"], "no such file"),
]


@pytest.mark.parametrize("argv, message", BAD_TUNE)
def test_tune_rejects_bad_input(workdir, capsys, argv, message):
    argv = [a.format(port=free_port()) for a in argv]
    code, _, err = run_cli(tune.main, argv, capsys)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert list(workdir.iterdir()) == []  # nothing written


BAD_ABLATE = [
    (["--variants", "kd,bogus"], "allowed: kd,kd_align,sm,sm_align"),
    (["--seeds", "one,two"], "--seeds"),
    (["--space", "gamma_alpha"], "is a search space"),
    (["--max-concurrent", "0"], "--max-concurrent"),
]


@pytest.mark.parametrize("argv, message", BAD_ABLATE)
def test_ablate_rejects_bad_input(workdir, capsys, argv, message):
    code, _, err = run_cli(ablate.main, argv, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert list(workdir.iterdir()) == []


def test_an_invalid_space_file_is_one_error(workdir, capsys):
    bad = workdir / "space.yaml"
    bad.write_text("kind: tune\nsearch: {gamma: {distribution: uniform, low: 5, high: 1}}\n")
    code, _, err = run_cli(tune.main, ["--space", str(bad)], capsys)
    assert code == 2 and "inverted" in err
    assert sorted(p.name for p in workdir.iterdir()) == ["space.yaml"]


# ---------------------------------------------------------------------------------------------
# Bad paths, in every command: one line, exit 2, nothing created (all fail before Ray starts)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def paths(workdir, tmp_path_factory):
    """A file, a folder, a folder named like a YAML file, and a folder this user cannot write."""
    (workdir / "afile").write_text("not a folder\n")
    (workdir / "adir").mkdir()
    (workdir / "adir.yaml").mkdir()
    save_checkpoint(workdir / "s.pt", build_model("small_cnn", num_classes=10))
    locked = tmp_path_factory.mktemp("ro")
    locked.chmod(0o555)
    # root ignores modes; procfs refuses even root
    ro = next(d for d in (locked, Path("/proc/1")) if not os.access(d, os.W_OK))
    yield {"ro": str(ro)}
    locked.chmod(0o755)


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _commands():
    from analysis import report
    from smaraad import evaluate, train
    return {"tune": tune.main, "ablate": ablate.main, "train": train.main,
            "evaluate": evaluate.main, "report": report.main}


OUT = ["--out", "e.json"]
BAD_PATHS = [
    ("tune", ["--storage-path", "afile"], "--storage-path afile: is a file, not a folder"),
    ("tune", ["--storage-path", "afile/sub"], "lies under the file"),
    ("tune", ["--storage-path", "{ro}/sub"], "is not writable"),
    ("tune", ["--data-root", "afile"], "--data-root afile: is a file"),
    ("tune", ["--teacher", "adir"], "--teacher adir: is a folder"),
    ("tune", ["--teacher", "afile/t.pt"], "lies under the file"),
    ("tune", ["--tracking-uri", "sqlite:///afile/x.db"], "lies under the file"),
    ("tune", ["--tracking-uri", "sqlite:///adir"], "is a folder"),
    ("tune", ["--tracking-uri", "sqlite:///{ro}/m.db"], "is not writable"),
    ("tune", ["--space", "adir.yaml"], "adir.yaml: is a folder"),
    ("tune", ["--name", "x", "--storage-path", "adir"], "report folder"),  # ./reports is a file
    ("ablate", ["--storage-path", "afile"], "--storage-path afile: is a file, not a folder"),
    ("ablate", ["--space", "adir.yaml"], "is a folder"),
    ("train", ["--out", "afile"], "--out afile: is a file"),
    ("train", ["--out", "afile/run"], "lies under the file"),
    ("train", ["--out", "{ro}/run"], "is not writable"),
    ("train", ["--teacher", "adir"], "--teacher adir: is a folder"),
    ("train", ["--data-root", "afile", "--dataset", "cifar10"], "--data-root afile: is a file"),
    ("train", ["--config", "adir"], "is a folder"),
    ("evaluate", ["--checkpoint", "adir", *OUT], "checkpoint 'adir' is a directory"),
    ("evaluate", ["--checkpoint", "s.pt", "--out", "adir"], "--out adir: is a folder"),
    ("evaluate", ["--checkpoint", "s.pt", "--out", "afile/e.json"], "lies under the file"),
    ("evaluate", ["--checkpoint", "s.pt", "--out", "{ro}/e.json"], "is not writable"),
    ("evaluate", ["--checkpoint", "s.pt", *OUT, "--source", "adir"], "--source: checkpoint"),
    ("evaluate", ["--checkpoint", "s.pt", *OUT, "--teacher", "adir"], "--teacher: checkpoint"),
    ("evaluate", ["--checkpoint", "s.pt", *OUT, "--data-root", "afile"], "--data-root afile"),
    ("report", ["--experiment", "x", "--out", "afile"], "--out afile: is a file"),
    ("report", ["--experiment", "x", "--out", "afile/r"], "lies under the file"),
    ("report", ["--experiment", "x", "--tracking-uri", "sqlite:///afile/x.db"], "afile"),
]


@pytest.mark.parametrize("command, argv, message", BAD_PATHS,
                         ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(BAD_PATHS)])
def test_a_bad_path_is_one_line_and_nothing_is_written(paths, workdir, capsys, command, argv,
                                                       message):
    if "report folder" in message:
        (workdir / "reports").write_text("a file where the report folder goes\n")
    before = tree(workdir)
    code, _, err = run_cli(_commands()[command], [a.format(**paths) for a in argv], capsys)
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert tree(workdir) == before  # nothing written: no folder, no database, no report


def test_paths_that_do_not_exist_yet_are_accepted_and_not_created(workdir):
    from smaraad.paths import existing_file, folder_or_absent, writable_dir, writable_file

    (workdir / "afile").write_text("x\n")
    assert writable_dir("new/deep/run", "--out") == workdir / "new/deep/run"
    assert writable_file("new/deep/e.json", "--out") == workdir / "new/deep/e.json"
    assert writable_file("afile", "--out") == workdir / "afile"  # a file is overwritten
    assert folder_or_absent("data/cifar", "--data-root") == workdir / "data/cifar"
    assert existing_file("afile", "--teacher").is_file()
    assert tree(workdir) == ["afile"]
    with pytest.raises(UsageError, match="folder .*new does not exist"):
        writable_file("new/m.db", "--tracking-uri", parent_must_exist=True)
