"""What `tune` and `ablate` share: options, checks before anything is written, the run itself.

Order matters: every input is validated (space, config, attacks, tracking URI, Ray address,
experiment folder) before a file is written or a run is opened, so a bad option leaves nothing
behind. Then the driver provisions the teacher once (trained and cached on first use), opens the
parent MLflow run, and hands trials the teacher's weights and the data through Ray's object store.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from smaraad.cli import Parser, UsageError, parse_kv
from smaraad.config import (METHOD_OVERRIDES, TRAIN_KEYS, TrainConfig, method_keys,
                            preset_config)
from smaraad.evaluation import ATTACKS, check_attacks
from smaraad.methods import METHODS

STATE_FILE = "smaraad_experiment.json"   # beside Ray's state: the parent run to resume into
EMBEDDED_AA_N = 100  # AutoAttack costs ~0.5-1 s per robust image of the small student on one core
SMOKE = {"epochs": 2, "num_samples": 2, "eval_n": 64, "teacher_epochs": 2, "train_size": 1500}


def common_parser(prog: str, description: str) -> Parser:
    p = Parser(prog=prog, description=description)
    p.add_argument("--dataset", default="embedded", help="embedded (default), cifar10, cifar100")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: the preset's)")
    p.add_argument("--student", help="student architecture (default: the preset's)")
    p.add_argument("--teacher", metavar="PATH", help="teacher checkpoint (default: train and "
                   "cache a PGD-AT teacher of --teacher-arch)")
    p.add_argument("--teacher-arch", help="teacher architecture to train when none is given")
    p.add_argument("--teacher-epochs", type=int, help="epochs of a teacher trained here")
    p.add_argument("--teacher-method", default="pgd_at", help="how that teacher is trained: "
                   "pgd_at (default) or trades")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base config key for every trial (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seeds the search and the trials")
    p.add_argument("--eval-n", type=int, help="test images in each trial's final evaluation "
                   f"(default: all; {SMOKE['eval_n']} with --smoke-test)")
    p.add_argument("--aa-n", type=int, help="of those, the first N that AutoAttack runs on "
                   f"(default: all; {EMBEDDED_AA_N} on the embedded data)")
    p.add_argument("--attacks", default=",".join(ATTACKS),
                   help=f"final evaluation attacks, from: {','.join(ATTACKS)}")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///./mlflow.db)")
    p.add_argument("--storage-path", default="ray_results", help="Ray Tune storage folder "
                   "(shared by all nodes on a cluster)")
    p.add_argument("--name", help="experiment name (default: <space>-<date>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted experiment "
                   "--name (default: the latest of this space)")
    p.add_argument("--address", help="join a Ray cluster (e.g. auto or HOST:6379)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="fractions pack several trials on one GPU, e.g. 0.5")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: CPUs / "
                   "cpus-per-trial)")
    p.add_argument("--retries", type=int, default=0, help="retries of a failed trial")
    p.add_argument("--data-root", help="folder holding the CIFAR files")
    p.add_argument("--download", action="store_true", help="download CIFAR-10/100 into "
                   "--data-root if missing (torchvision's downloader, md5-checked)")
    p.add_argument("--no-report", action="store_true", help="skip the analysis report at the end")
    p.add_argument("--smoke-test", action="store_true",
                   help=f"a tiny run to check the setup ({SMOKE['epochs']} epochs, "
                        f"{SMOKE['num_samples']} trials, {SMOKE['train_size']} embedded training "
                        f"images, {SMOKE['eval_n']} test images)")
    return p


@dataclass
class Resolved:
    """Validated inputs of an experiment, nothing written yet."""
    base: dict              # flat values every trial starts from
    base_cfg: TrainConfig   # the base as a config (for the teacher recipe and the data)
    attacks: tuple
    eval_n: int
    aa_n: int               # AutoAttack's subset of the eval_n images (0 = all of them)
    tracking_uri: str
    storage_path: str
    name: str
    resume: bool
    teacher_epochs: int | None


def resolve(args, space, *, space_name: str) -> Resolved:
    for opt in ("cpus_per_trial", "gpus_per_trial", "retries"):
        if getattr(args, opt) < 0:
            raise UsageError(f"--{opt.replace('_', '-')}: {getattr(args, opt)}; must be >= 0")
    if args.cpus_per_trial <= 0:
        raise UsageError("--cpus-per-trial: must be > 0")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UsageError("--max-concurrent: must be >= 1")
    attacks = check_attacks([a.strip() for a in args.attacks.split(",") if a.strip()])
    values = {**space.base, "dataset": args.dataset, "seed": args.seed}
    for key, value in (("student", args.student), ("teacher", args.teacher_arch),
                       ("data_root", args.data_root)):
        if value is not None:
            values[key] = value
    epochs = SMOKE["epochs"] if args.smoke_test and args.epochs is None else args.epochs
    if epochs is not None:
        values["epochs"] = epochs
    if args.smoke_test and args.dataset == "embedded":
        values["train_size"] = SMOKE["train_size"]
    flat, overrides = split_sets(parse_kv(args.set), experiment_methods(space, values))
    values.update(flat)
    if overrides:
        values[METHOD_OVERRIDES] = overrides
    base_cfg = preset_config(values)
    # Training keys resolved once; method keys only where the user gave them, since a grid's
    # variants may be methods with other hyperparameters.
    base = {**{k: v for k, v in base_cfg.to_flat().items() if k in TRAIN_KEYS},
            **{k: v for k, v in values.items() if k not in TRAIN_KEYS}}
    eval_n = args.eval_n if args.eval_n is not None else SMOKE["eval_n"] if args.smoke_test else 0
    if eval_n < 0:
        raise UsageError(f"--eval-n: {eval_n}; must be >= 0 (0 = the whole test split)")
    aa_n = args.aa_n if args.aa_n is not None else (
        EMBEDDED_AA_N if args.dataset == "embedded" and not args.smoke_test else 0)
    if aa_n < 0:
        raise UsageError(f"--aa-n: {aa_n}; must be >= 0 (0 = all of --eval-n)")
    if args.teacher and not Path(args.teacher).is_file():
        raise UsageError(f"--teacher {args.teacher}: no such file")
    teacher_epochs = args.teacher_epochs or (SMOKE["teacher_epochs"] if args.smoke_test else None)
    if teacher_epochs is not None and teacher_epochs < 1:
        raise UsageError("--teacher-epochs: must be >= 1")
    if args.teacher_method not in ("pgd_at", "trades"):
        raise UsageError(f"--teacher-method: {args.teacher_method!r}; allowed: pgd_at, trades")

    uri = args.tracking_uri or f"sqlite:///{Path('mlflow.db').resolve()}"
    check_tracking_uri(uri)
    storage = str(Path(args.storage_path).resolve())
    name = args.name or (latest(storage, space_name) if args.resume else None) \
        or f"{space_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    exp_dir = Path(storage) / name
    from trainables.experiment import can_resume
    if args.resume and not can_resume(str(exp_dir)):
        raise UsageError(f"--resume: no experiment to resume at {exp_dir}")
    if not args.resume and exp_dir.exists():
        raise UsageError(f"experiment {name!r} already exists in {storage}; pass --resume to "
                         "continue it or choose another --name")
    if args.address:
        check_ray_address(args.address)
    return Resolved(base, base_cfg, attacks, eval_n, aa_n, uri, storage, name, args.resume,
                    teacher_epochs)


def experiment_methods(space, values: dict) -> list[str]:
    """The methods an experiment's trials train: the grid's or the search's `method` values,
    else the one of its base."""
    if "method" in space.grid:
        return list(dict.fromkeys(space.grid["method"]))
    if "method" in space.search and space.search["method"].values:
        return list(dict.fromkeys(space.search["method"].values))
    return [values.get("method", TrainConfig.method)]


def split_sets(sets: dict, methods: list[str]) -> tuple[dict, dict]:
    """--set values as (flat, per method): a training key, or a method key every method of the
    experiment has, applies to every trial; a key only some methods have goes to those methods
    alone ({method: {key: value}}); a key none has is one UsageError naming who has what."""
    flat: dict = {}
    overrides: dict = {}
    for key, value in sets.items():
        key = "lam" if key == "lambda" else key  # the config's alias
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


def latest(storage: str, space_name: str) -> str | None:
    found = sorted(Path(storage).glob(f"{space_name}-*"), key=lambda p: p.stat().st_mtime)
    return found[-1].name if found else None


def check_tracking_uri(uri: str) -> None:
    """One clear error for a tracking URI that cannot work, before anything is written."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
        if not _reachable(host, port):
            raise UsageError(f"--tracking-uri {uri}: no MLflow server answers at {host}:{port}")
        from trainables.tracking import env_for_remote
        env_for_remote(uri)
    elif parsed.scheme == "sqlite":
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir():
            raise UsageError(f"--tracking-uri {uri}: folder {folder} does not exist")
    elif parsed.scheme not in ("file", "postgresql", "mysql", "databricks") and parsed.scheme:
        raise UsageError(f"--tracking-uri {uri}: unsupported scheme {parsed.scheme!r}; allowed: "
                         "sqlite:///PATH, http(s)://HOST:PORT, postgresql://, mysql://")


def check_ray_address(address: str) -> None:
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address {address!r}: expected auto or HOST:PORT")
    if not _reachable(host, int(port)):
        raise UsageError(f"--address {address}: no Ray cluster answers at {host}:{port}")


def _reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def needs_teacher(methods) -> bool:
    return any(METHODS[m].needs_teacher for m in methods)


def command_line() -> str:
    """The command as typed: `python -m orchestrator.tune ...` (argv[0] is a file path)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = ["python", "-m", spec.name] if spec is not None else ["python", sys.argv[0]]
    return " ".join(shlex.quote(a) for a in [*head, *sys.argv[1:]])


def parent_state(exp_dir: Path) -> dict | None:
    f = exp_dir / STATE_FILE
    return json.loads(f.read_text()) if f.exists() else None


def write_parent_state(exp_dir: Path, state: dict) -> None:
    from smaraad.io import save_json
    save_json(exp_dir / STATE_FILE, state)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
