"""The run options that `python -m smaraad.train` and the orchestrator's `tune`/`ablate` share.

One parser piece (`add_run_options`) and one mapping from the parsed arguments to config values
(`run_options`), so the commands accept and refuse the same values: the data set, the student,
the teacher (a checkpoint, or the architecture, recipe and epochs of one trained here), the seed,
`--set` overrides, the final evaluation (attacks from smaraad/metrics.py's registry, images, the
AutoAttack subset) and `--download`. Each command adds only what is its own (train: --method,
--config, --out; tune/ablate: the space, Ray and MLflow options).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from smaraad import metrics
from smaraad.cli import Parser, UsageError, parse_kv
from smaraad.config import (DATASETS, DEFAULT_DATASET, METHOD_OVERRIDES, TRAIN_KEYS, canonical_key,
                            method_keys)
from smaraad.teachers import TEACHER_METHODS


def add_run_options(p: Parser, *, attacks: Sequence[str], eval_n_default: str,
                    aa_n_default: str) -> Parser:
    """Add the shared options to `p`; `attacks` is the command's default evaluation, the two
    strings say in its help what --eval-n and --aa-n default to."""
    p.add_argument("--dataset", help=f"{', '.join(DATASETS)} (default: {DEFAULT_DATASET})")
    p.add_argument("--epochs", type=int, help="training epochs (default: the data set's preset)")
    p.add_argument("--seed", type=int, default=0, help="seeds the run (and the search)")
    p.add_argument("--student", help="student architecture (default: the preset's)")
    p.add_argument("--teacher", metavar="PATH", help="teacher checkpoint, or robustbench:NAME "
                   "from RobustBench's model zoo (docs/teachers.md) (default: train and cache a "
                   "teacher of --teacher-arch with --teacher-method)")
    p.add_argument("--teacher-dir", help="RobustBench weights folder, in its layout "
                   "<dir>/<dataset>/Linf/<NAME>.pt (default: $SMARAAD_CACHE/robustbench or "
                   "~/.cache/smaraad/robustbench)")
    p.add_argument("--teacher-arch", help="architecture of the teacher to train when none is given")
    p.add_argument("--teacher-method", default="pgd_at", choices=TEACHER_METHODS,
                   help="how that teacher is trained: pgd_at (default), trades, or natural "
                        "(no adversarial training: a non-robust teacher)")
    p.add_argument("--teacher-epochs", type=int, help="epochs of a teacher trained here "
                   "(default: the data set's preset)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set gamma=100 (repeatable)")
    p.add_argument("--data-root", help="folder holding the data set's files (default: "
                   "$SMARAAD_DATA, else ./data; Fashion-MNIST also Debian's "
                   "/usr/share/datasets/fashion-mnist)")
    p.add_argument("--download", action="store_true",
                   help="download the data set's files with torchvision (md5-checked) if absent")
    p.add_argument("--attacks", default=",".join(attacks),
                   help=f"final test-split evaluation, from: {','.join(metrics.attack_names())} "
                        f"(default: {','.join(attacks) or 'none'})")
    p.add_argument("--eval-n", type=int, help=f"test images evaluated (default: {eval_n_default})")
    p.add_argument("--aa-n", type=int, help="of those, the first N AutoAttack runs on "
                   f"(default: {aa_n_default})")
    return p


@dataclass
class RunOptions:
    """The shared options, validated; `values` are config values, --set applied last."""
    values: dict
    attacks: tuple
    eval_n: int | None         # None: the command's default
    aa_n: int | None
    teacher: str | None        # a checkpoint path or robustbench:NAME
    teacher_dir: str | None    # where robustbench:NAME weights are
    teacher_method: str
    teacher_epochs: int | None
    download: bool


def run_options(args, *, base: dict | None = None, extra: dict | None = None,
                allow_no_attacks: bool = False,
                methods: Callable[[dict], list[str]] | None = None) -> RunOptions:
    """Map parsed arguments to config values: `base` (a space's or a YAML file's values), then
    the options given, then the command's `extra` values, then --set. UsageError names a bad one."""
    from smaraad.evaluation import check_attacks

    values = dict(base or {})
    values["dataset"] = args.dataset or values.get("dataset", DEFAULT_DATASET)
    values["seed"] = args.seed
    for key, value in (("epochs", args.epochs), ("student", args.student),
                       ("teacher_arch", args.teacher_arch), ("data_root", args.data_root)):
        if value is not None:
            values[key] = value
    values.update(extra or {})
    sets = parse_kv(args.set)
    if methods is None:  # one method: --set is checked by its config
        values.update(sets)
    else:  # an experiment of several methods: each --set reaches the methods that have its key
        flat, overrides = split_sets(sets, methods(values))
        values.update(flat)
        if overrides:
            values[METHOD_OVERRIDES] = overrides
    names = [a.strip() for a in args.attacks.split(",") if a.strip()]
    attacks = check_attacks(names) if names or not allow_no_attacks else ()
    for option, value, meaning in (("--eval-n", args.eval_n, "0 = the whole test split"),
                                   ("--aa-n", args.aa_n, "0 = all of --eval-n")):
        if value is not None and value < 0:
            raise UsageError(f"{option}: {value}; must be >= 0 ({meaning})")
    if args.teacher_epochs is not None and args.teacher_epochs < 1:
        raise UsageError(f"--teacher-epochs: {args.teacher_epochs}; must be >= 1")
    return RunOptions(values, attacks, args.eval_n, args.aa_n, args.teacher, args.teacher_dir,
                      args.teacher_method, args.teacher_epochs, args.download)


def check_teacher(spec: str | None, dataset: str, teacher_dir: str | None,
                  download: bool) -> None:
    """--teacher before anything starts: a robustbench:NAME (its name, data set and weights file,
    or --download) or a checkpoint file. UsageError/ZooError name what is wrong."""
    from smaraad.paths import existing_file
    from smaraad.robustbench_teachers import check as check_zoo, is_zoo_spec

    if is_zoo_spec(spec):
        check_zoo(spec, dataset, teacher_dir, download)
    elif spec:
        existing_file(spec, "--teacher")


def split_sets(sets: dict, methods: list[str]) -> tuple[dict, dict]:
    """--set values as (flat, per method): a training key, or a method key every method of the
    experiment has, applies to every trial; a key only some methods have goes to those methods
    alone ({method: {key: value}}); a key none has is one UsageError naming who has what."""
    flat: dict = {}
    overrides: dict = {}
    for key, value in sets.items():
        key = canonical_key(key)
        have = [m for m in methods if key in method_keys(m)]
        if key in TRAIN_KEYS or (have and len(have) == len(methods)):
            flat[key] = value
        elif have:
            for m in have:
                overrides.setdefault(m, {})[key] = value
        else:
            raise UsageError(f"--set {key}: no method of this experiment has that key "
                             f"({', '.join(methods)}); allowed: {allowed_keys(methods)}")
    return flat, overrides


def allowed_keys(methods: list[str]) -> str:
    """The training keys, then each method key with the methods that have it."""
    owners: dict[str, list[str]] = {}
    for m in methods:
        for k in sorted(method_keys(m)):
            owners.setdefault(k, []).append(m)
    everyone = [k for k, ms in owners.items() if len(ms) == len(methods)]
    some = [f"{k} ({', '.join(ms)})" for k, ms in sorted(owners.items()) if len(ms) < len(methods)]
    return ", ".join([*sorted(TRAIN_KEYS), *sorted(everyone), *some])
