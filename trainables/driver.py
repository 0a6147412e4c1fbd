"""An experiment's driver side: its teachers provided, its parent MLflow run, Ray Tune, its rows.

The command line (orchestrator/) resolves and validates everything into one `Experiment` before
anything is written; `execute` then runs it and validates nothing again. The teachers are specs
(smaraad/teacher_specs.py): each is provided once here (trained and cached, or imported),
measured once at the experiment's threat model on the validation split (cached), and handed to
every trial by name through Ray's object store with the data.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from smaraad.config import TrainConfig
from smaraad.io import save_json
from smaraad.methods import METHODS
from trainables.points import TRANSFER_TEACHER
from trainables.resources import planned_trials

STATE_FILE = "smaraad_experiment.json"   # beside Ray's state: the parent run to resume into
TEACHER_ARTIFACT_MAX = 256 * 2**20  # bytes; larger teachers are referenced by path only


@dataclass(frozen=True)
class Experiment:
    """One experiment, resolved once from the command line and the space, checked, nothing
    written yet. `configs` holds each method's trial template (preset, space base, options and
    --set applied): a trial lays only its Ray point (searched or grid values, seed) over it."""
    space: object                   # the validated space (trainables.experiment.Space)
    kind: str                       # "tune" or "ablate"
    configs: dict                   # method -> TrainConfig, the first the base method's
    params: dict                    # the flat values the parent run logs as its params
    teachers: dict                  # name -> TeacherSpec the trials use
    name: str
    tracking_uri: str
    storage_path: str
    command: str                    # the command line as typed (a tag, and the resume record)
    resume: bool = False
    variants: list = field(default_factory=list)   # grid combinations (kind: grid)
    seeds: tuple = (0,)
    num_samples: int = 1
    objectives: tuple = ()
    seed: int = 0
    attacks: tuple = ()             # the final test-split evaluation
    eval_n: int = 0                 # its images (0 = all)
    aa_n: int = 0                   # AutoAttack's subset of them (0 = all)
    transfer: str = ""              # "", "teacher" (the trial's own) or a checkpoint path
    teacher_epochs: int | None = None      # --teacher-epochs (a recipe's own win)
    teacher_max_epochs: int | None = None  # a cap on every teacher's epochs (smoke runs)
    teacher_aa_n: int = 0           # validation images of each teacher's own AutoAttack
    teacher_dir: str | None = None  # where robustbench:NAME weights are
    download: bool = False          # fetch CIFAR (and zoo weights) when absent
    address: str | None = None      # a Ray cluster to join
    cpus_per_trial: float | None = None   # None: chosen from the cluster (trainables.resources)
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None
    retries: int = 0

    @property
    def template(self) -> TrainConfig:
        """The base method's config: the teachers' recipe, the data, the epochs."""
        return next(iter(self.configs.values()))

    @property
    def planned(self) -> int:
        return planned_trials(self.variants, self.seeds, self.num_samples)

    @property
    def methods(self) -> list[str]:
        return list(self.configs)

    @property
    def path(self) -> Path:
        return Path(self.storage_path) / self.name


def parent_state(exp_dir: Path) -> dict | None:
    f = exp_dir / STATE_FILE
    return json.loads(f.read_text()) if f.exists() else None


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def provide_teachers(exp: Experiment, data) -> dict:
    """Each spec's teacher provided and measured once, as TeacherWeights by name."""
    from smaraad.teacher_specs import provide
    from trainables.trial import TeacherWeights

    out = {}
    for name, spec in exp.teachers.items():
        t = provide(spec, exp.template, epochs=exp.teacher_epochs,
                    max_epochs=exp.teacher_max_epochs, teacher_dir=exp.teacher_dir,
                    download=exp.download, data=data, measure_n=exp.eval_n,
                    measure_aa_n=exp.teacher_aa_n)
        out[name] = TeacherWeights.of(t.model, metrics=t.metrics, path=t.path, name=name,
                                      label=spec.label)
        print(f"teacher {name} ({spec.label}): " + ", ".join(
            f"{k.split('/')[-1]} {v:.3f}" for k, v in t.metrics.items() if k.endswith("_acc")))
    return out


def execute(exp: Experiment) -> tuple[list[dict], "Plan"]:
    """Provide, run (or resume) and return (rows, plan); Ray lives for this call only."""
    from smaraad.trainer import load_splits
    from trainables.session import ray_session

    # The data first: a missing data set (or --download) is settled before Ray starts or a
    # teacher trains; the teachers are then measured on its validation split.
    data = load_splits(exp.template, download=exp.download)
    with ray_session(exp.address, None if exp.address else cpu_count()):
        return _execute(exp, data)


def _execute(exp: Experiment, data) -> tuple[list[dict], "Plan"]:
    from smaraad.teachers import provide_teacher
    from trainables import experiment as ex
    from trainables.tracking import Tracking, client, start_parent
    from trainables.trial import TeacherWeights, TrialSetup, board_name

    res = trial_resources(exp)

    teachers = {}
    if any(METHODS[m].needs_teacher for m in exp.methods) or exp.transfer == TRANSFER_TEACHER:
        teachers = provide_teachers(exp, data)
    natural = None
    if any(METHODS[m].needs_natural_teacher for m in exp.methods):
        n = provide_teacher(exp.template, method="natural", epochs=exp.teacher_epochs)
        natural = TeacherWeights.of(n.model, metrics=n.metrics, path=n.path)
    source = None
    if exp.transfer and exp.transfer != TRANSFER_TEACHER:
        t = provide_teacher(exp.template, path=exp.transfer, log=None)  # ours, or imported
        source = TeacherWeights.of(t.model, metrics={}, path=exp.transfer)

    state = parent_state(exp.path) if exp.resume else None
    if state:
        tracking = Tracking(**state["tracking"])
        client(tracking.uri).update_run(tracking.parent_run_id, status="RUNNING")
        print(f"resuming {exp.name} (MLflow parent run {tracking.parent_run_id})")
    else:
        tracking = open_parent(exp, teachers, start_parent, client)
    setup = TrialSetup(configs=exp.configs, tracking=tracking, teachers=teachers, data=data,
                       natural_teacher=natural, transfer_from=exp.transfer,
                       transfer_source=source, eval_attacks=exp.attacks, eval_n=exp.eval_n,
                       aa_n=exp.aa_n, threads=max(1, int(res.cpus)),
                       board=board_name(exp.name) if shares_cores(exp, res) else "",
                       tags={"smaraad.space": exp.space.name})
    plan = ex.Plan(space=exp.space, setup=setup, name=exp.name, storage_path=exp.storage_path,
                   epochs=exp.template.epochs, num_samples=exp.num_samples, seed=exp.seed,
                   seeds=exp.seeds, variants=exp.variants, objectives=exp.objectives,
                   max_concurrent=res.concurrent, cpus_per_trial=res.cpus,
                   gpus_per_trial=res.gpus, retries=exp.retries)
    rows = ex.run(plan, resume=exp.resume)
    stopped = ex.stopped_trials(ex.experiment_path(plan))
    for row in rows:
        row["status"] = status(row, stopped)
    rows += not_started(rows, exp.variants, exp.seeds, exp.num_samples)
    interrupted = [row for row in rows if row["status"] == "interrupted"]
    client(tracking.uri).set_terminated(tracking.parent_run_id,
                                        status="KILLED" if interrupted else "FINISHED")
    return rows, plan


def open_parent(exp: Experiment, teachers: dict, start_parent, client):
    """The experiment's parent MLflow run, with the first teacher's figures (its params, its
    metrics, its weights as an artifact when small and ours); recorded beside Ray's state so
    --resume logs into it again."""
    space = exp.space
    teacher = next(iter(teachers.values()), None)  # the first: the parent's params, the CAMs
    tracking = start_parent(
        exp.tracking_uri, exp.name, run_name=exp.name,
        tags={"smaraad.kind": exp.kind, "smaraad.space": space.name,
              "smaraad.metric": space.metric, "smaraad.mode": space.mode,
              "smaraad.command": exp.command, "smaraad.search_keys": ",".join(space.search),
              "smaraad.search_space": json.dumps({k: d.__dict__ for k, d in
                                                  space.search.items()}),
              "smaraad.grid_keys": ",".join(space.grid),
              "smaraad.objectives": ",".join(exp.objectives),
              "mlflow.note.content": space.description},
        params={**exp.params, "space": space.name, "num_samples": exp.num_samples,
                "seeds": list(exp.seeds), "teacher_path": teacher.path if teacher else "none",
                **({"teacher": teacher.arch} if teacher and teacher.zoo else {}),
                "teachers": json.dumps({k: t.label for k, t in teachers.items()}),
                "transfer_from": exp.transfer or "none",
                **({f"teacher_{k.split('/')[-1]}": v for k, v in teacher.metrics.items()}
                   if teacher else {})})
    c = client(tracking.uri)
    if teacher and teacher.metrics:  # its own val accuracy (and a zoo teacher's leaderboard)
        for k, v in teacher.metrics.items():
            c.log_metric(tracking.parent_run_id, k, v)
    if (teacher and teacher.path and not teacher.zoo  # a zoo teacher is its name
            and Path(teacher.path).stat().st_size < TEACHER_ARTIFACT_MAX):
        c.log_artifact(tracking.parent_run_id, teacher.path, "teacher")
    save_json(exp.path / STATE_FILE, {"tracking": tracking.__dict__, "space": space.name,
                                      "kind": exp.kind, "command": exp.command})
    return tracking


def trial_resources(exp: Experiment):
    """Per-trial CPUs and GPUs and the trials at once (trainables/resources.py), said on the
    terminal; a device the trials will not hold is refused before anything runs."""
    from trainables.resources import check_device, current_cluster, plan_resources

    cluster = current_cluster()
    res = plan_resources(cluster, exp.planned, cpus=exp.cpus_per_trial, gpus=exp.gpus_per_trial,
                         max_concurrent=exp.max_concurrent)
    check_device(exp.template.device, res.gpus)
    print(res.describe(cluster), flush=True)
    return res


def shares_cores(exp: Experiment, res) -> bool:
    """Whether the running trials take the cores freed as others end (trainables.resources):
    where the CPUs per trial were chosen from the cluster, more than one trial is planned, and
    the trials train on the CPU."""
    return exp.cpus_per_trial is None and exp.planned > 1 and not res.gpus


def status(row: dict, stopped: set) -> str:
    m = row["metrics"]
    if row["error"]:
        return "failed"
    if m.get("completed"):
        return "done"
    if m.get("trial_id") in stopped:
        return "stopped"
    return "interrupted"


def not_started(rows: list[dict], variants: list, seeds: tuple, num_samples: int) -> list[dict]:
    """Rows for the planned trials Tune never created: an experiment stopped (Ctrl-C, SIGUSR1)
    before it reached them returns only the trials it began, and would otherwise look complete.
    A grid names each missing (variant, seed); a search counts the missing samples."""
    def row(config: dict) -> dict:
        return {"trial_id": "", "config": config, "metrics": {}, "error": "", "path": "",
                "status": "interrupted"}

    if not variants:
        return [row({}) for _ in range(num_samples - len(rows))]
    seen = [{k: x["config"].get(k) for k in (*variants[0], "seed")} for x in rows]
    planned = [{**v, "seed": s} for v in variants for s in seeds]
    return [row(p) for p in planned if p not in seen]
