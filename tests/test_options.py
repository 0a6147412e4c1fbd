"""`smaraad.train`, `tune` and `ablate` share one set of run options: same values accepted, same
refused (one line, exit 2, nothing written), same mapping to config values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

from orchestrator import ablate, tune
from orchestrator.common import common_parser
from smaraad import train
from smaraad.options import run_options

COMMANDS = {"train": train.main, "tune": tune.main, "ablate": ablate.main}

SHARED_BAD = [
    (["--teacher-method", "bogus"], "invalid choice: 'bogus'"),
    (["--teacher-epochs", "0"], "--teacher-epochs"),
    (["--eval-n", "-1"], "--eval-n"),
    (["--aa-n", "-1"], "--aa-n"),
    (["--attacks", "clean,deepfool"], "unknown attack"),
    (["--set", "gamma"], "key=value"),
    (["--epochs", "many"], "invalid int value"),
    (["--dataset", "mnist"], "dataset"),
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("argv, message", SHARED_BAD)
def test_every_command_refuses_the_same_values(tmp_path, monkeypatch, capsys, command, argv,
                                               message):
    monkeypatch.chdir(tmp_path)
    out = ["--out", str(tmp_path / "out")] if command == "train" else []
    code, _, err = run_cli(COMMANDS[command], [*argv, *out], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []  # nothing written


SHARED_OK = ["--teacher-method", "natural", "--download", "--dataset", "cifar10", "--seed", "3",
             "--student", "resnet18", "--teacher-arch", "wrn34_10", "--teacher-epochs", "5",
             "--epochs", "7", "--set", "gamma=100", "--attacks", "clean,pgd20", "--eval-n", "50",
             "--aa-n", "10", "--data-root", "/data"]


def test_both_parsers_accept_the_same_values_and_map_them_alike():
    a = run_options(train.parser().parse_args(SHARED_OK))
    b = run_options(common_parser("tune", "").parse_args(SHARED_OK))
    assert a == b
    assert (a.teacher_method, a.download, a.teacher_epochs, a.attacks) == (
        "natural", True, 5, ("clean", "pgd20"))
    assert a.values == {"dataset": "cifar10", "seed": 3, "epochs": 7, "student": "resnet18",
                        "teacher_arch": "wrn34_10", "data_root": "/data", "gamma": 100}
    cfg, opts = train.options_from_args(train.parser().parse_args(["--download"]))
    assert opts.download and cfg.dataset == "embedded" and cfg.method == "smaraad_pp"


@pytest.mark.parametrize("module, when", [
    ("orchestrator.ablate", "1 when any is missing"), ("orchestrator.tune", "1 when none did")])
def test_help_states_the_exit_status(module, when):
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())  # argparse wraps the epilog
    assert "exit status: 0 when" in text and when in text and "2 on a bad input" in text


# A command's entry (`smaraad.cli.command`) in a fresh interpreter: the exit code and the last
# line are the command's, atexit handlers still run, and by then gc has frozen what was alive.
ENTRY = """
import atexit, gc, sys
from smaraad.cli import UsageError, command

def main(argv):
    atexit.register(lambda: print("atexit: frozen", gc.get_freeze_count() > 0, flush=True))
    print("last line", end="")  # no newline: flushed by the exit, not by print
    if sys.argv[1] == "bad":
        raise UsageError("--epochs: 'many'; expected a whole number")
    return int(sys.argv[1])

command(main)
"""


@pytest.mark.parametrize("arg, code", [("0", 0), ("1", 1), ("bad", 2)])
def test_a_command_exits_with_its_code_after_its_exit_handlers(arg, code):
    done = subprocess.run([sys.executable, "-c", ENTRY, arg], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == code
    assert done.stdout == "last lineatexit: frozen True\n"
    if arg == "bad":
        assert done.stderr == "error: --epochs: 'many'; expected a whole number\n"

