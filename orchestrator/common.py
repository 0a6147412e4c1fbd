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

from smaraad import metrics
from smaraad.cli import Parser, UsageError
from smaraad.config import TRAIN_KEYS, TrainConfig, preset_config
from smaraad.methods import METHODS
from smaraad.options import add_run_options, check_teacher, run_options
from smaraad.paths import folder_or_absent, writable_dir, writable_file

STATE_FILE = "smaraad_experiment.json"   # beside Ray's state: the parent run to resume into
EMBEDDED_AA_N = 100  # AutoAttack costs ~0.5-1 s per robust image of the small student on one core
SMOKE = {"epochs": 2, "num_samples": 2, "eval_n": 64, "teacher_epochs": 2, "train_size": 1500}


def common_parser(prog: str, description: str) -> Parser:
    p = Parser(prog=prog, description=description)
    add_run_options(p, attacks=metrics.default_attacks(),
                    eval_n_default=f"all; {SMOKE['eval_n']} with --smoke-test",
                    aa_n_default=f"all; {EMBEDDED_AA_N} on the embedded data")
    p.add_argument("--teacher-aa-n", type=int, help="validation images each teacher's own "
                   "AutoAttack accuracy is measured on (0 = none; default: the space's, else 0; "
                   "at most 8 with --smoke-test)")
    p.add_argument("--transfer-from", metavar="teacher|PATH", help="black-box transfer in the "
                   "final evaluation: PGD-20 and CW examples made on the trial's teacher or on "
                   "this checkpoint (test/transfer_pgd20_acc, test/transfer_cw_acc)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///./mlflow.db)")
    p.add_argument("--storage-path", default="ray_results", help="Ray Tune storage folder "
                   "(shared by all nodes on a cluster)")
    p.add_argument("--name", help="experiment name (default: <space>-<date>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted experiment "
                   "--name (default: the latest of this space)")
    p.add_argument("--address", help="join a Ray cluster (e.g. auto or HOST:6379)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs (torch threads) per trial "
                   "(default: the CPUs shared among the trials at once, up to one node's)")
    p.add_argument("--gpus-per-trial", type=float, help="fractions pack several trials on one "
                   "GPU, e.g. 0.5 (default: 0 without GPUs; else a whole GPU per trial, or a "
                   "share when there are more trials at once than GPUs)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: every planned "
                   "trial, at most one per CPU)")
    p.add_argument("--retries", type=int, default=0, help="retries of a failed trial")
    p.add_argument("--no-report", action="store_true", help="skip the analysis report at the end")
    p.add_argument("--smoke-test", action="store_true",
                   help=f"a tiny run to check the setup ({SMOKE['epochs']} epochs, "
                        f"{SMOKE['num_samples']} trials, {SMOKE['train_size']} embedded training "
                        f"images, {SMOKE['eval_n']} test images)")
    add_plan_flag(p)
    return p


def add_plan_flag(p: Parser) -> None:
    p.add_argument("--plan", action="store_true", help="print what the experiment costs (trials x "
                   "epochs, FLOPs per step and in total, GPU hours, one measured CPU step) and "
                   "exit: trains nothing, needs neither the data nor the teacher")


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
    download: bool = False  # --download: fetch CIFAR-10/100 with torchvision if absent
    teacher: str | None = None      # --teacher, or the space's robustbench:NAME
    teacher_dir: str | None = None  # where robustbench:NAME weights are


def resolve(args, space, *, space_name: str) -> Resolved:
    for opt in ("cpus_per_trial", "gpus_per_trial", "retries"):
        if (getattr(args, opt) or 0) < 0:
            raise UsageError(f"--{opt.replace('_', '-')}: {getattr(args, opt)}; must be >= 0")
    if args.cpus_per_trial is not None and args.cpus_per_trial <= 0:
        raise UsageError("--cpus-per-trial: must be > 0")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UsageError("--max-concurrent: must be >= 1")
    dataset = args.dataset or space.base.get("dataset", "embedded")
    smoke = {**({"epochs": SMOKE["epochs"]} if args.epochs is None else {}),
             **({"train_size": SMOKE["train_size"]} if dataset == "embedded" else {})}
    opts = run_options(args, base=space.base, extra=smoke if args.smoke_test else None,
                       methods=lambda values: experiment_methods(space, values))
    values = opts.values
    base_cfg = preset_config(values)
    # Training keys resolved once; method keys only where the user gave them, since a grid's
    # variants may be methods with other hyperparameters.
    base = {**{k: v for k, v in base_cfg.to_flat().items() if k in TRAIN_KEYS},
            **{k: v for k, v in values.items() if k not in TRAIN_KEYS}}
    eval_n = opts.eval_n if opts.eval_n is not None else SMOKE["eval_n"] if args.smoke_test else 0
    aa_n = opts.aa_n if opts.aa_n is not None else (
        EMBEDDED_AA_N if dataset == "embedded" and not args.smoke_test else 0)
    teacher = opts.teacher or space.teacher
    check_teacher(teacher, base_cfg.dataset, opts.teacher_dir, opts.download)
    teacher_epochs = opts.teacher_epochs or (SMOKE["teacher_epochs"] if args.smoke_test else None)

    uri = args.tracking_uri or f"sqlite:///{Path('mlflow.db').resolve()}"
    check_tracking_uri(uri)
    storage = str(Path(args.storage_path).resolve())
    name = args.name or (latest(storage, space_name) if args.resume else None) \
        or f"{space_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_paths(args, name)
    exp_dir = Path(storage) / name
    from trainables.experiment import can_resume
    if args.resume and not can_resume(str(exp_dir)):
        raise UsageError(f"--resume: no experiment to resume at {exp_dir}")
    if not args.resume and exp_dir.exists():
        raise UsageError(f"experiment {name!r} already exists in {storage}; pass --resume to "
                         "continue it or choose another --name")
    if args.address:
        check_ray_address(args.address)
    return Resolved(base, base_cfg, opts.attacks, eval_n, aa_n, uri, storage, name, args.resume,
                    teacher_epochs, download=opts.download, teacher=teacher,
                    teacher_dir=opts.teacher_dir)


def check_paths(args, name: str) -> None:
    """Every path a tune or ablate run reads or writes, before Ray starts or a file appears:
    the storage folder, the data root and the report folder (the tracking URI's
    database in `check_tracking_uri`)."""
    writable_dir(args.storage_path, "--storage-path")
    if args.data_root:
        folder_or_absent(args.data_root, "--data-root")
    if not args.no_report:
        writable_dir(Path("reports", name), "the report folder (or pass --no-report)")


def experiment_methods(space, values: dict) -> list[str]:
    """The methods an experiment's trials train: the grid's or the search's `method` values,
    else the one of its base."""
    if "method" in space.grid:
        return list(dict.fromkeys(space.grid["method"]))
    if "method" in space.search and space.search["method"].values:
        return list(dict.fromkeys(space.search["method"].values))
    return [values.get("method", TrainConfig.method)]


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
        writable_file(uri[len("sqlite:///"):], "--tracking-uri", parent_must_exist=True)
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
