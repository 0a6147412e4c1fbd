"""Run one experiment end to end: checks, teachers, parent run, Ray Tune, summary, report.

The teachers are specs (smaraad/teacher_specs.py): the space's `teachers:`, or the one that
--teacher / --teacher-method describe. Each is provided once on the driver (trained and cached, or
imported), measured once at the experiment's threat model on the validation split (clean, PGD-20,
AutoAttack on the first --teacher-aa-n images; cached), and handed to every trial by name through
the object store."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from orchestrator.common import (Resolved, command_line, cpu_count,
                                 needs_teacher, parent_state, write_parent_state)
from orchestrator.spaces import TEACHER_KEY, Space
from smaraad.cli import UsageError
from smaraad.config import preset_config
from smaraad.methods import METHODS
from smaraad.trainer import load_splits

TEACHER_ARTIFACT_MAX = 256 * 2**20  # bytes; larger teachers are referenced by path only
SMOKE_TEACHER_AA_N = 8  # a teacher's AutoAttack in --smoke-test: a check that it runs
TRANSFER_TEACHER = "teacher"  # --transfer-from: the trial's own teacher


def with_space_eval(args, space: Space, r: Resolved) -> Resolved:
    """The space's eval_n / aa_n where --eval-n / --aa-n (and --smoke-test) leave them open."""
    if args.smoke_test:
        return r
    changes = {k: getattr(space, k) for k in ("eval_n", "aa_n")
               if getattr(args, k) is None and getattr(space, k) is not None}
    return dataclasses.replace(r, **changes)


def teacher_specs(args, space: Space, r: Resolved, variants: list) -> dict:
    """name -> TeacherSpec that this experiment's trials use; UsageError before anything runs."""
    from smaraad.teacher_specs import DEFAULT_NAME, from_options

    if not space.teachers:
        return {DEFAULT_NAME: from_options(r.teacher, args.teacher_method)}
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
        raise UsageError(f"--transfer-from {value}: no such file; allowed: teacher or a "
                         "checkpoint path")
    return value


def teacher_aa_n(args, space: Space) -> int:
    """Validation images of each teacher's own AutoAttack: --teacher-aa-n, else the space's, else
    none. Not on by default: AA on the small_resnet teacher costs ~6 s of one core per robust
    image (measured: 10 images of the eps-4 PGD-AT teacher, 63 s), ~6x the student's."""
    if getattr(args, "teacher_aa_n", None) is not None:
        if args.teacher_aa_n < 0:
            raise UsageError(f"--teacher-aa-n: {args.teacher_aa_n}; must be >= 0 (0 = none)")
        return args.teacher_aa_n
    n = space.teacher_aa_n or 0
    return min(n, SMOKE_TEACHER_AA_N) if args.smoke_test else n


def provide_teachers(args, specs: dict, r: Resolved, data, aa_n: int) -> dict:
    """Each spec's teacher provided and measured once, as TeacherWeights by name."""
    from smaraad.teacher_specs import provide, teacher_metrics
    from smaraad.trainer import resolve_device
    from trainables.trial import TeacherWeights

    out = {}
    for name, spec in specs.items():
        t = provide(spec, r.base_cfg, epochs=r.teacher_epochs,
                    max_epochs=r.teacher_epochs if args.smoke_test else None,
                    teacher_dir=r.teacher_dir, download=r.download, data=data)
        # what the teacher brings (a zoo teacher's leaderboard figures), then our own measurement
        metrics = {**t.metrics, **teacher_metrics(
            t, data.val, eps_255=r.base_cfg.eps_255, n=r.eval_n, aa_n=aa_n,
            device=str(resolve_device(r.base_cfg.device)))}
        out[name] = TeacherWeights.of(t.model, metrics=metrics, path=t.path, name=name,
                                      label=spec.label)
        print(f"teacher {name} ({spec.label}): " + ", ".join(
            f"{k.split('/')[-1]} {v:.3f}" for k, v in metrics.items() if k.endswith("_acc")))
    return out


def execute(args, space: Space, r: Resolved, *, kind: str, variants: list, seeds: tuple,
            num_samples: int, objectives: tuple = ()) -> tuple[list[dict], "Plan"]:
    """Provision, run (or resume) and return (rows, plan); every input was validated before."""
    from smaraad.teachers import provide_teacher
    from trainables import experiment as ex
    from trainables.tracking import Tracking, start_parent
    from trainables.trial import TeacherWeights, TrialSetup

    methods = {v.get("method", r.base["method"]) for v in variants} or {r.base["method"]}
    for v in variants:  # every grid point must be a valid config before anything starts
        preset_config({k: x for k, x in {**r.base, **v}.items()
                       if not (k == TEACHER_KEY and space.teachers)})
    r = with_space_eval(args, space, r)
    specs = teacher_specs(args, space, r, variants)
    transfer = transfer_option(args)
    aa_n = teacher_aa_n(args, space)
    # The data first: a missing data set (or --download) is settled before Ray starts or a
    # teacher trains; the teachers are then measured on its validation split.
    data = load_splits(r.base_cfg, download=r.download)
    cpus = cpu_count()
    ex.init_ray(args.address, None if args.address else cpus)
    res = trial_resources(args, len(variants) * len(seeds) if variants else num_samples,
                          r.base_cfg.device)

    teachers = {}
    if needs_teacher(methods) or transfer == TRANSFER_TEACHER:
        teachers = provide_teachers(args, specs, r, data, aa_n)
    teacher = next(iter(teachers.values()), None)  # the first: the parent's params, the CAMs
    natural = None
    if any(METHODS[m].needs_natural_teacher for m in methods):
        n = provide_teacher(r.base_cfg, method="natural", epochs=r.teacher_epochs)
        natural = TeacherWeights.of(n.model, metrics=n.metrics, path=n.path)
    source = None
    if transfer and transfer != TRANSFER_TEACHER:
        t = provide_teacher(r.base_cfg, path=transfer, log=None)  # ours, or imported weights
        source = TeacherWeights.of(t.model, metrics={}, path=transfer)

    exp_dir = Path(r.storage_path) / r.name
    state = parent_state(exp_dir) if r.resume else None
    if state:
        tracking = Tracking(**state["tracking"])
        from trainables.tracking import client
        client(tracking.uri).update_run(tracking.parent_run_id, status="RUNNING")
        print(f"resuming {r.name} (MLflow parent run {tracking.parent_run_id})")
    else:
        tracking = start_parent(
            r.tracking_uri, r.name, run_name=r.name,
            tags={"smaraad.kind": kind, "smaraad.space": space.name, "smaraad.metric": space.metric,
                  "smaraad.mode": space.mode, "smaraad.command": command_line(),
                  "smaraad.search_keys": ",".join(space.search),
                  "smaraad.search_space": json.dumps({k: d.__dict__ for k, d in
                                                      space.search.items()}),
                  "smaraad.grid_keys": ",".join(space.grid),
                  "smaraad.objectives": ",".join(objectives),
                  "mlflow.note.content": space.description},
            params={**{k: v for k, v in r.base.items()}, "space": space.name,
                    "num_samples": num_samples, "seeds": list(seeds),
                    "teacher_path": teacher.path if teacher else "none",
                    **({"teacher": teacher.arch} if teacher and teacher.zoo else {}),
                    "teachers": json.dumps({k: t.label for k, t in teachers.items()}),
                    "transfer_from": transfer or "none",
                    **({f"teacher_{k.split('/')[-1]}": v for k, v in teacher.metrics.items()}
                       if teacher else {})})
        from trainables.tracking import client
        if teacher and teacher.metrics:  # its own val accuracy (and a zoo teacher's leaderboard)
            for k, v in teacher.metrics.items():
                client(tracking.uri).log_metric(tracking.parent_run_id, k, v)
        if (teacher and teacher.path and not teacher.zoo  # a zoo teacher is its name
                and Path(teacher.path).stat().st_size < TEACHER_ARTIFACT_MAX):
            client(tracking.uri).log_artifact(tracking.parent_run_id, teacher.path, "teacher")
        write_parent_state(exp_dir, {"tracking": tracking.__dict__, "space": space.name,
                                     "kind": kind, "command": command_line()})
    setup = TrialSetup(base=r.base, tracking=tracking, teachers=teachers, data=data,
                       natural_teacher=natural, transfer_from=transfer, transfer_source=source,
                       eval_attacks=r.attacks, eval_n=r.eval_n, aa_n=r.aa_n,
                       threads=max(1, int(res.cpus)), tags={"smaraad.space": space.name})
    plan = ex.Plan(space=space, setup=setup, name=r.name, storage_path=r.storage_path,
                   epochs=r.base["epochs"], num_samples=num_samples, seed=args.seed, seeds=seeds,
                   variants=variants, objectives=objectives, max_concurrent=res.concurrent,
                   cpus_per_trial=res.cpus, gpus_per_trial=res.gpus,
                   retries=args.retries)
    rows = ex.run(plan, resume=r.resume)
    stopped = ex.stopped_trials(ex.experiment_path(plan))
    for row in rows:
        row["status"] = status(row, stopped)
    rows += not_started(rows, variants, seeds, num_samples)
    interrupted = [row for row in rows if row["status"] == "interrupted"]
    from trainables.tracking import client
    c = client(tracking.uri)
    c.set_terminated(tracking.parent_run_id, status="KILLED" if interrupted else "FINISHED")
    return rows, plan


def trial_resources(args, trials: int, device: str):
    """Per-trial CPUs and GPUs and the trials at once (trainables/resources.py), said on the
    terminal; a device the trials will not hold is refused before anything runs."""
    from trainables.resources import check_device, current_cluster, plan_resources

    cluster = current_cluster()
    res = plan_resources(cluster, trials, cpus=args.cpus_per_trial, gpus=args.gpus_per_trial,
                         max_concurrent=args.max_concurrent)
    check_device(device, res.gpus)
    print(res.describe(cluster), flush=True)
    return res


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
