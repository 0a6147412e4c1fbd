"""Run one experiment end to end: checks, teacher, parent run, Ray Tune, summary, report."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.common import (Resolved, command_line, cpu_count, needs_teacher, parent_state,
                                 write_parent_state)
from orchestrator.spaces import Space
from smaraad.config import preset_config
from smaraad.methods import METHODS
from smaraad.trainer import load_splits

TEACHER_ARTIFACT_MAX = 256 * 2**20  # bytes; larger teachers are referenced by path only


def execute(args, space: Space, r: Resolved, *, kind: str, variants: list, seeds: tuple,
            num_samples: int, objectives: tuple = ()) -> tuple[list[dict], "Plan"]:
    """Provision, run (or resume) and return (rows, plan); every input was validated before."""
    from smaraad.teachers import provide_teacher
    from trainables import experiment as ex
    from trainables.tracking import Tracking, start_parent
    from trainables.trial import TeacherWeights, TrialSetup

    methods = {v.get("method", r.base["method"]) for v in variants} or {r.base["method"]}
    for v in variants:  # every grid point must be a valid config before anything starts
        preset_config({**r.base, **v})
    cpus = cpu_count()
    ex.init_ray(args.address, None if args.address else cpus)
    if args.address:  # trials run on the cluster's CPUs, not on this machine's
        cpus = ex.cluster_cpus()

    teacher = None
    if needs_teacher(methods):
        t = provide_teacher(r.base_cfg, path=args.teacher, epochs=r.teacher_epochs,
                            method=args.teacher_method)
        teacher = TeacherWeights.of(t.model, metrics=t.metrics, path=t.path)
        if t.metrics:
            print("teacher: " + ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in t.metrics.items()))
    natural = None
    if any(METHODS[m].needs_natural_teacher for m in methods):
        n = provide_teacher(r.base_cfg, method="natural", epochs=r.teacher_epochs)
        natural = TeacherWeights.of(n.model, metrics=n.metrics, path=n.path)
    data = load_splits(r.base_cfg)

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
                    **({f"teacher_{k.split('/')[-1]}": v for k, v in teacher.metrics.items()}
                       if teacher else {})})
        if teacher and teacher.path and Path(teacher.path).stat().st_size < TEACHER_ARTIFACT_MAX:
            from trainables.tracking import client
            client(tracking.uri).log_artifact(tracking.parent_run_id, teacher.path, "teacher")
        write_parent_state(exp_dir, {"tracking": tracking.__dict__, "space": space.name,
                                     "kind": kind, "command": command_line()})
    setup = TrialSetup(base=r.base, tracking=tracking, teacher=teacher, data=data,
                       natural_teacher=natural,
                       eval_attacks=r.attacks, eval_n=r.eval_n, aa_n=r.aa_n,
                       threads=max(1, int(args.cpus_per_trial)),
                       tags={"smaraad.space": space.name})
    concurrency = args.max_concurrent or max(1, int(cpus // args.cpus_per_trial))
    plan = ex.Plan(space=space, setup=setup, name=r.name, storage_path=r.storage_path,
                   epochs=r.base["epochs"], num_samples=num_samples, seed=args.seed, seeds=seeds,
                   variants=variants, objectives=objectives, max_concurrent=concurrency,
                   cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                   retries=args.retries)
    rows = ex.run(plan, resume=r.resume)
    stopped = ex.stopped_trials(ex.experiment_path(plan))
    for row in rows:
        row["status"] = status(row, stopped)
    interrupted = [row for row in rows if row["status"] == "interrupted"]
    from trainables.tracking import client
    c = client(tracking.uri)
    c.set_terminated(tracking.parent_run_id, status="KILLED" if interrupted else "FINISHED")
    return rows, plan


def status(row: dict, stopped: set) -> str:
    m = row["metrics"]
    if row["error"]:
        return "failed"
    if m.get("completed"):
        return "done"
    if m.get("trial_id") in stopped:
        return "stopped"
    return "interrupted"
