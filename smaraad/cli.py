"""What every command line shares: one-line errors with exit code 2, never a traceback.

User mistakes (a bad option, config, data root or checkpoint) raise UserError subclasses with a
message that names what is wrong and what is allowed; `run` prints that message as one line on
stderr and exits with 2. argparse's own errors get the same one-line treatment. `command` is
each command's `python -m` entry.
"""

from __future__ import annotations

import argparse
import gc
import sys
from typing import Callable, NoReturn, Sequence


from smaraad.errors import UserError


class UsageError(UserError):
    """A bad command-line value."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message; we keep one line
        raise UsageError(f"{message} (see {self.prog} --help)")


def parse_kv(items: Sequence[str]) -> dict:
    """`key=value` pairs from --set, values parsed as YAML scalars (1e-3, true, [1, 2])."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected key=value")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UsageError(f"--set {item!r}: the value is not a YAML scalar") from None
    return out


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run `main`; turn user errors into `error: ...` on stderr and exit code 2."""
    try:
        return int(main(argv) or 0)
    except UserError as exc:  # ConfigError, DataError, CheckpointError, UsageError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130


def command(main: Callable[[Sequence[str] | None], int | None]) -> NoReturn:
    """A command's `python -m` entry: `run(main)` on sys.argv, then exit with its code.

    Before the interpreter exits, every object still alive is frozen out of the cyclic garbage
    collector's reach (`gc.freeze`). Interpreter shutdown otherwise runs full collections over
    everything torch, Ray, MLflow and SQLAlchemy loaded: on the 2-core VM an ablate driver's exit
    took 1.8 s after its last line, 0.3 s with the freeze. Nothing is skipped that Python
    promises: atexit handlers still run (Ray's, MLflow's, logging's flush), objects freed by
    reference counting still are, and finalizers of objects alive at exit were never guaranteed.
    Only the command line does this; `run` called in-process (the tests) leaves gc alone."""
    code = run(main)
    gc.freeze()
    sys.exit(code)
