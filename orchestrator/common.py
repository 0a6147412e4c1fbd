"""What `tune` and `ablate` share: their options, and `resolve`, which turns the command line
and the space into one checked `Experiment` (trainables/driver.py) before anything is written.

Order matters: every input is validated (space, config of every method and grid point, teachers,
attacks, tracking URI, Ray address, experiment folder) before a file is written or a run is
opened, so a bad option leaves nothing behind. Running it is trainables' (driver.execute).
"""

from __future__ import annotations

import shlex
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from smaraad import metrics
from smaraad.cli import Parser, UsageError
from smaraad.config import DEFAULT_DATASET, TRAIN_KEYS, TrainConfig, preset_config
from smaraad.data import registry as data_registry
from smaraad.options import add_run_options, check_teacher, run_options
from smaraad.paths import (default_tracking_uri, fail_fast_tracking, folder_or_absent,
                           writable_dir, writable_file)
from smaraad.teacher_specs import DEFAULT_NAME, TEACHER_KEY, from_options
from trainables.driver import Experiment
from trainables.points import TRANSFER_TEACHER, point_config

SMOKE = {"epochs": 2, "num_samples": 2, "eval_n": 64, "teacher_epochs": 2, "train_size": 1500,
         "val_max": 200}
SMOKE_TEACHER_AA_N = 8  # a teacher's AutoAttack in --smoke-test: a check that it runs


def common_parser(prog: str, description: str) -> Parser:
    p = Parser(prog=prog, description=description)
    add_run_options(p, attacks=metrics.default_attacks(),
                    eval_n_default=f"all; {SMOKE['eval_n']} with --smoke-test",
                    aa_n_default="all; the data set's registry entry (100 on embedded and "
                                 "fashion_mnist)")
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
                        f"{SMOKE['num_samples']} trials, at most {SMOKE['train_size']} training "
                        f"images, {SMOKE['val_max']} validation images per epoch, "
                        f"{SMOKE['eval_n']} test images)")
    add_plan_flag(p)
    return p


def add_plan_flag(p: Parser) -> None:
    p.add_argument("--plan", action="store_true", help="print what the experiment costs (trials x "
                   "epochs, FLOPs per step and in total, GPU hours, one measured CPU step) and "
                   "exit: trains nothing, needs neither the data nor the teacher")


def resolve(args, space, *, kind: str, variants: list | None = None, seeds: tuple = (0,),
            num_samples: int = 1, objectives: tuple = ()) -> Experiment:
    """The command line and the space as one checked Experiment; UsageError (or ConfigError)
    before anything is written."""
    for opt in ("cpus_per_trial", "gpus_per_trial", "retries"):
        if (getattr(args, opt) or 0) < 0:
            raise UsageError(f"--{opt.replace('_', '-')}: {getattr(args, opt)}; must be >= 0")
    if args.cpus_per_trial is not None and args.cpus_per_trial <= 0:
        raise UsageError("--cpus-per-trial: must be > 0")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UsageError("--max-concurrent: must be >= 1")
    variants = variants or []
    dataset = args.dataset or space.base.get("dataset", DEFAULT_DATASET)
    smoke = {**({"epochs": SMOKE["epochs"]} if args.epochs is None else {}),
             "train_size": SMOKE["train_size"], "val_max": SMOKE["val_max"]}
    opts = run_options(args, base=space.base, extra=smoke if args.smoke_test else None,
                       methods=lambda values: experiment_methods(space, values))
    values = opts.values
    methods = experiment_methods(space, values)
    configs = {m: preset_config({**values, "method": m}) for m in dict.fromkeys(
        [values.get("method", TrainConfig.method), *methods])}
    template = next(iter(configs.values()))
    for v in variants:  # every grid point must be a valid config before anything starts
        point_config(configs, v, space.teachers)
    # what the parent run logs: the resolved training keys, and the method keys given
    params = {**{k: v for k, v in template.to_flat().items() if k in TRAIN_KEYS},
              **{k: v for k, v in values.items() if k not in TRAIN_KEYS}}
    eval_n = opts.eval_n if opts.eval_n is not None else (
        SMOKE["eval_n"] if args.smoke_test else space.eval_n or 0)
    aa_n = opts.aa_n if opts.aa_n is not None else (
        0 if args.smoke_test else space.aa_n if space.aa_n is not None else
        data_registry.dataset(dataset).aa_n)
    teacher = opts.teacher or space.teacher
    check_teacher(teacher, template.dataset, opts.teacher_dir, opts.download)
    teacher_epochs = opts.teacher_epochs or (SMOKE["teacher_epochs"] if args.smoke_test else None)

    uri = args.tracking_uri or default_tracking_uri()
    check_tracking_uri(uri)
    storage = str(Path(args.storage_path).resolve())
    name = args.name or (latest(storage, space.name) if args.resume else None) \
        or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_paths(args, name)
    exp_dir = Path(storage) / name
    if args.resume:  # Ray Tune's import (~0.8 s) only where its state is read
        from trainables.experiment import can_resume
        if not can_resume(str(exp_dir)):
            raise UsageError(f"--resume: no experiment to resume at {exp_dir}")
    if not args.resume and exp_dir.exists():
        raise UsageError(f"experiment {name!r} already exists in {storage}; pass --resume to "
                         "continue it or choose another --name")
    if args.address:
        check_ray_address(args.address)
    return Experiment(
        space=space, kind=kind, configs=configs, params=params,
        teachers=teacher_specs(args, space, teacher, variants), name=name, tracking_uri=uri,
        storage_path=storage, command=command_line(), resume=args.resume, variants=variants,
        seeds=seeds, num_samples=num_samples, objectives=objectives, seed=args.seed,
        attacks=opts.attacks, eval_n=eval_n, aa_n=aa_n, transfer=transfer_option(args),
        teacher_epochs=teacher_epochs,
        teacher_max_epochs=teacher_epochs if args.smoke_test else None,
        teacher_aa_n=teacher_aa_n(args, space), teacher_dir=opts.teacher_dir,
        download=opts.download, address=args.address, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent,
        retries=args.retries)


def teacher_specs(args, space, teacher: str | None, variants: list) -> dict:
    """name -> TeacherSpec that the experiment's trials use: the space's `teachers:` (those its
    grid or search names), else the one that --teacher / --teacher-method describe."""
    if not space.teachers:
        return {DEFAULT_NAME: from_options(teacher, args.teacher_method)}
    if args.teacher or args.teacher_method != "pgd_at":
        raise UsageError(f"--teacher/--teacher-method: space {space.name!r} names its teachers "
                         f"({', '.join(space.teachers)}); drop the option or use another space")
    used = {v[TEACHER_KEY] for v in variants if TEACHER_KEY in v}
    if TEACHER_KEY in space.search:
        used |= set(space.search[TEACHER_KEY].values)
    specs = {k: s for k, s in space.teachers.items() if k in used or not used}
    for s in specs.values():
        if s.kind == "path" and not Path(s.path).is_file():
            raise UsageError(f"space {space.name!r}: teacher {s.name}: {s.path}: no such file")
    return specs


def transfer_option(args) -> str:
    """--transfer-from: '', 'teacher' or an existing checkpoint path."""
    value = (getattr(args, "transfer_from", None) or "").strip()
    if value and value != TRANSFER_TEACHER and not Path(value).is_file():
        raise UsageError(f"--transfer-from {value}: no such file; allowed: {TRANSFER_TEACHER} or "
                         "a checkpoint path")
    return value


def teacher_aa_n(args, space) -> int:
    """Validation images of each teacher's own AutoAttack: --teacher-aa-n, else the space's, else
    none. Not on by default: AA on the small_resnet teacher costs ~6 s of one core per robust
    image (measured: 10 images of the eps-4 PGD-AT teacher, 63 s), ~6x the student's."""
    if getattr(args, "teacher_aa_n", None) is not None:
        if args.teacher_aa_n < 0:
            raise UsageError(f"--teacher-aa-n: {args.teacher_aa_n}; must be >= 0 (0 = none)")
        return args.teacher_aa_n
    n = space.teacher_aa_n or 0
    return min(n, SMOKE_TEACHER_AA_N) if args.smoke_test else n


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
        fail_fast_tracking(uri)
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


def command_line() -> str:
    """The command as typed: `python -m orchestrator.tune ...` (argv[0] is a file path)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = ["python", "-m", spec.name] if spec is not None else ["python", sys.argv[0]]
    return " ".join(shlex.quote(a) for a in [*head, *sys.argv[1:]])


