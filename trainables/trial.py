"""The Ray Tune function trainable: one trial = one `smaraad.trainer.fit` run.

It receives its point as its Tune config: the searched or grid values and the seed, the one flat
form Ray and Optuna need (made by trainables/experiment.py's `param_space`, read back here by
`trial_config` alone). Everything shared (each method's resolved config, the teachers' weights,
the data, where to log) comes once through Ray's object store via `tune.with_parameters`. An experiment may hold several named
teachers: a trial distils from the one its config's `teacher` names (a grid or search key), else
from the experiment's first. Each epoch it reports the core's metrics
with a checkpoint of the resumable state; on restart it continues from `tune.get_checkpoint()`.
After the last epoch it runs the final evaluation on the test split and logs everything to the
trial's own MLflow run.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from smaraad import metrics
from smaraad.attacks import from_255
from smaraad.config import TrainConfig
from smaraad.data import Splits
from smaraad.teacher_specs import TEACHER_KEY
from smaraad.evaluation import evaluate_best, evaluate_suite
from smaraad.io import load_torch
from smaraad.models import MODELS, build_model
from smaraad.teachers import teacher_record
from smaraad.trainer import (BestState, fit, placed_device, resolve_device, training_precision,
                             visible_gpus)
from trainables.datasets import dataset_inputs
from trainables.heap import keep_freed_heap
from trainables.points import TRANSFER_TEACHER, point_config
from trainables.tracking import Tracking, TrialRun

STATE_FILE = "state.pt"
PEAK_MEMORY = "memory/peak_mb"  # logged with the final evaluation; see `peak_memory_mb`
COMPLETED = "completed"  # set in the report that follows the final evaluation
NODE_ID = "node_id"  # in each epoch's report: the Ray node it ran on (the driver names it)
THREADS = "system/torch_threads"  # in each epoch's report: the torch threads it trained with


@dataclass
class TeacherWeights:
    """A teacher as plain data (it travels through the object store, not as a pickled module).

    Ours are (arch, statistics, state_dict), rebuilt with build_model. A model-zoo teacher
    (HookedCamNet) carries `zoo` = ("robustbench", NAME, dataset, threat model) instead, and the
    trial rebuilds its architecture through robustbench's zoo before loading the state_dict."""
    arch: str
    num_classes: int
    channels: int
    mean: tuple
    std: tuple
    center: bool
    state_dict: dict
    metrics: dict = field(default_factory=dict)
    path: str = ""
    zoo: tuple = ()
    name: str = ""                # the experiment's name for it (a grid value)
    label: str = ""               # its spec's short label (smaraad.teacher_specs)

    @classmethod
    def of(cls, model, *, metrics: dict, path: str, name: str = "",
           label: str = "") -> "TeacherWeights":
        norm = model.normalize
        return cls(model.arch, model.num_classes, model.in_channels,
                   tuple(norm.mean.flatten().tolist()),
                   tuple(norm.std.flatten().tolist()), bool(norm.center),
                   {k: v.cpu() for k, v in model.state_dict().items()}, metrics, path,
                   tuple(getattr(model, "source", ())), name, label)

    @property
    def record(self) -> dict:
        """How a student checkpoint names this teacher (smaraad.teachers.teacher_record): a zoo
        teacher by its robustbench:NAME (its arch), ours by its file."""
        return teacher_record(self.arch if self.zoo else self.path, self.path, self.arch)

    def build(self):
        if self.zoo:
            from smaraad.robustbench_teachers import rebuild
            return rebuild(self.zoo, self.state_dict)
        model = build_model(self.arch, num_classes=self.num_classes, channels=self.channels,
                            mean=self.mean, std=self.std, center=self.center)
        model.load_state_dict(self.state_dict)
        return model.eval()


@dataclass
class TrialSetup:
    """What every trial of an experiment shares."""
    configs: dict                    # method -> TrainConfig, resolved once (the first: default)
    tracking: Tracking
    teachers: dict                   # name -> TeacherWeights (first = the default); {} = none
    data: Splits
    natural_teacher: TeacherWeights | None = None   # MTARD's second teacher
    eval_attacks: tuple = field(default_factory=metrics.attack_names)  # the registry's attacks
    eval_n: int = 0                  # test images in the final evaluation (0 = all)
    aa_n: int = 0                    # the first of those that AutoAttack runs on (0 = all)
    threads: int = 1                 # torch threads per trial (= CPUs per trial)
    board: str = ""                  # the driver's thread board for freed cores ("" = none)
    tags: dict = field(default_factory=dict)
    transfer_from: str = ""          # "", "teacher" (the trial's own) or a checkpoint path
    transfer_source: TeacherWeights | None = None   # that checkpoint's weights


def pick_teacher(setup: TrialSetup, config: dict) -> TeacherWeights | None:
    """The teacher the trial's `teacher` value names, else the experiment's first (or None)."""
    named = setup.teachers.get(config.get(TEACHER_KEY)) if isinstance(
        config.get(TEACHER_KEY), str) else None
    return named or next(iter(setup.teachers.values()), None)


def trial_config(setup: TrialSetup, config: dict) -> TrainConfig:
    """The trial's config (`point_config`); where its `teacher` names one of the experiment's
    teachers, teacher_arch becomes that teacher's architecture (a model-zoo teacher's is not one
    of ours: the config keeps its own)."""
    cfg = point_config(setup.configs, config, setup.teachers)
    chosen = setup.teachers.get(config.get(TEACHER_KEY))
    if chosen is not None and chosen.arch in MODELS:
        cfg = dataclasses.replace(cfg, teacher_arch=chosen.arch)
    return cfg


def run_trial(config: dict, setup: TrialSetup) -> None:
    keep_freed_heap()  # as smaraad.train's allocator ends up (trainables/heap.py)
    torch.set_num_threads(max(1, setup.threads))
    cfg = placed(trial_config(setup, config))
    trial_id = tune.get_context().get_trial_id()
    flat = cfg.to_flat()
    chosen = pick_teacher(setup, config)
    named = config.get(TEACHER_KEY) in setup.teachers  # the experiment varies its teacher
    params = {**cfg.diff(), **{k: flat[k] for k in config if k in flat},  # searched: always
              "method": cfg.method, "student": cfg.student, "dataset": cfg.dataset,
              "seed": cfg.seed, "epochs": cfg.epochs,
              # a varied teacher is logged by its name (what the grid varies), else by its arch
              "teacher": (chosen.name if named else chosen.arch) if chosen else "none",
              **({"teacher_arch": chosen.arch, "teacher_name": chosen.name,
                  "teacher_label": chosen.label} if chosen else {})}
    run = TrialRun(setup.tracking, trial_id, run_name=_run_name(config, trial_id), params=params,
                   tags={**setup.tags, **({"variant": config["method"]} if "method" in config
                                          else {}),
                         **({"smaraad.teacher": chosen.name} if chosen else {})})
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = load_torch(Path(d) / STATE_FILE)
    teacher = chosen.build() if chosen else None

    board = Board(setup.board, trial_id)

    def report(epoch_metrics: dict, state: dict) -> None:
        epoch_metrics = {**epoch_metrics, THREADS: torch.get_num_threads()}
        run.log_metrics(epoch_metrics, step=epoch_metrics["epoch"])
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / STATE_FILE)
            tune.report({**epoch_metrics, NODE_ID: ray.get_runtime_context().get_node_id()},
                        checkpoint=tune.Checkpoint.from_directory(d))
        threads = board.threads()  # the next epoch's: freed cores, or back to the reservation
        if threads and threads != torch.get_num_threads():
            torch.set_num_threads(threads)

    try:
        device = resolve_device(cfg.device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        run.set_tags({"smaraad.training_precision": training_precision(cfg), **node_tags()})
        if resume is None:
            run.log_dict(cfg.to_flat(), "config.json")
            log_dataset(run, cfg, setup.data)
            if chosen:
                run.log_metrics(chosen.metrics, step=0)
        natural = setup.natural_teacher.build() if setup.natural_teacher else None
        best = BestState()
        model, last = fit(cfg, teacher=teacher, natural_teacher=natural, data=setup.data,
                          report=report, resume=resume, log=None, best=best)
        teacher = teacher.to(device) if teacher is not None else None
        source = teacher if setup.transfer_from == TRANSFER_TEACHER else (
            setup.transfer_source.build() if setup.transfer_source else None)
        final = evaluate_suite(model, setup.data.test, attacks=setup.eval_attacks,
                               n=setup.eval_n, aa_n=setup.aa_n, device=device, seed=cfg.seed,
                               teacher=teacher, source=source, eps=from_255(cfg.eps_255))
        names = metrics.transfer_keys()  # blackbox/<field> -> test/transfer_<field> (Table 5)
        final = {names.get(k, k): v for k, v in final.items()}
        if source is not None:
            run.set_tags({"smaraad.transfer_from": f"teacher {chosen.name}" if source is teacher
                          else setup.transfer_from})
        flags = final.pop("flags", [])
        final.update(evaluate_best(best.model_like(model), best.epoch, setup.data.test,
                                   eps=from_255(cfg.eps_255), n=setup.eval_n, device=device,
                                   seed=cfg.seed, last=final, last_epoch=cfg.epochs))
        final[PEAK_MEMORY] = peak_memory_mb(device)
        scalars = {k: v for k, v in final.items() if isinstance(v, (int, float))}
        run.log_metrics(scalars, step=cfg.epochs)
        run.set_tags({"smaraad.flags": "; ".join(flags) or "none", "smaraad.completed": "true"})
        with tempfile.TemporaryDirectory() as d:
            from smaraad.models import save_checkpoint
            record = {"teacher": chosen.record} if chosen else {}
            save_checkpoint(Path(d) / "student.pt", model.cpu(), config=cfg.to_flat(),
                            extra=record or None)
            run.log_artifact(str(Path(d) / "student.pt"))
            if best.epoch:
                save_checkpoint(Path(d) / "best.pt", best.model_like(model), config=cfg.to_flat(),
                                extra={**record, "best": best.record()})
                run.log_artifact(str(Path(d) / "best.pt"))
        tune.report({**last, **scalars, COMPLETED: 1})
        run.finish("FINISHED")
    except Exception as exc:
        run.set_tags({"smaraad.error": f"{type(exc).__name__}: {exc}"[:5000]})
        run.finish("FAILED")
        raise


def board_name(experiment: str) -> str:
    """The named actor through which the driver shares freed cores (trainables.experiment)."""
    return f"smaraad-threads-{experiment}"


class Board:
    """This trial's entry on its experiment's thread board (`name`; "" = the experiment shares
    no cores), once the driver has started it."""

    def __init__(self, name: str, trial_id: str):
        self.name, self.trial_id, self.actor = name, trial_id, None

    def threads(self) -> int | None:
        if not self.name:
            return None
        try:
            if self.actor is None:
                self.actor = ray.get_actor(self.name)
            return ray.get(self.actor.get.remote(self.trial_id))
        except ValueError:  # not started yet: every trial keeps its reservation
            return None
        except ray.exceptions.RayError:  # the board is gone: the trial trains on as it is
            self.name = ""
            return None


def peak_memory_mb(device: torch.device) -> float:
    """The trial's peak memory in MiB: on a GPU the most its tensors held (CUDA's allocator,
    reset when the trial starts); on a CPU the peak resident set of the trial's process
    (`ru_maxrss`, KiB on Linux), which also counts the process's libraries, the data set and any
    earlier trial Ray ran in the same worker process."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 10


def log_dataset(run: TrialRun, cfg: TrainConfig, data: Splits) -> None:
    """The trial's train / validation / test splits as the run's MLflow dataset inputs."""
    splits = {"train": data.train, "val": data.val, "test": data.test}
    run.log_inputs(dataset_inputs(splits, cfg.dataset, {
        "data_root": cfg.data_root, "train_size": str(cfg.train_size),
        "val_size": str(cfg.val_size), "split_seed": str(cfg.split_seed)}))


def placed(cfg: TrainConfig) -> TrainConfig:
    """cfg on the device Ray placed the trial on: its own GPU(s), else the CPU, even where the
    node's GPUs are visible to it (smaraad.trainer.placed_device)."""
    gpu_ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
    return cfg.replace(device=str(placed_device(cfg.device, gpu_ids, visible_gpus())))


def node_tags() -> dict[str, str]:
    """Where this attempt of the trial runs. A restarted trial (its node lost, or the experiment
    resumed) overwrites them, so they name the node that ran its last epochs."""
    return {"smaraad.node_id": ray.get_runtime_context().get_node_id(),
            "smaraad.node_ip": ray.util.get_node_ip_address(),
            "smaraad.hostname": socket.gethostname()}


def _run_name(config: dict, trial_id: str) -> str:
    parts = [f"{k}={fmt(v)}" for k, v in sorted(config.items())]
    return f"{trial_id} " + " ".join(parts)


def fmt(v: Any) -> str:
    """A value for a run name or a progress line: floats to 4 significant digits."""
    if isinstance(v, float) and math.isfinite(v):
        return f"{v:.4g}"
    return str(v)
