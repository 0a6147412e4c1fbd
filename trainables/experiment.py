"""Ray Tune experiments: Optuna + ASHA for tuning, a plain grid for ablations, resume, results.

Everything that knows Ray Tune's API lives here and in trial.py (starting Ray itself: session.py,
sharing freed cores: resources.py's rule, `SpareCores` below); the driver (driver.py) hands over a
`Plan` and gets back plain dicts. Pitfalls this file works around (Ray Tune 2.60, Optuna 5.0):
- metric/mode go on TuneConfig, not also on ASHA (ValueError); for several objectives they go on
  OptunaSearch, and ASHA keeps its own single metric;
- TPE models nothing before n_startup_trials finished trials: set it for small sweeps;
- OptunaSearch refuses grid_search, so grids use the default search algorithm;
- `Tuner.restore(..., restart_errored=True)` with OptunaSearch dies; `resume_errored=True` works;
- `num_to_keep=2` plus a hard kill can point the state at a deleted checkpoint: keep 3;
- Ray's own failure reports (tracebacks, a dead node) go to a file (trainables/failures.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import ray
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from smaraad import metrics
from smaraad.io import save_json

from trainables.failures import ERRORS_LOG, ray_failures_to
from trainables.resources import planned_trials, spare_threads
from trainables.tracking import Tracking, close_trial_run
from trainables.trial import COMPLETED, NODE_ID, TrialSetup, fmt, run_trial



class Space(Protocol):
    """What this layer reads of a validated search space (orchestrator.spaces.Space fits it);
    described here so that nothing is imported upward from the command layer."""
    kind: str            # "tune" or "grid"
    metric: str
    mode: str
    search: dict         # name -> distribution with .distribution, .low, .high, .values
    grid: dict           # name -> list of values
    grace_period: int
    reduction_factor: float

    def paper_point(self) -> dict: ...

STARTUP_TRIALS = 4  # TPE's random start before it models (Optuna's default is 10)


@dataclass
class Plan:
    """Everything an experiment needs, resolved by the command line."""
    space: Space
    setup: TrialSetup
    name: str
    storage_path: str
    epochs: int
    num_samples: int = 8
    seed: int = 0
    seeds: tuple = (0,)
    variants: list = field(default_factory=list)   # grid combinations (kind: grid)
    objectives: tuple = ()                         # several metrics: Pareto mode
    max_concurrent: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    retries: int = 0

    @property
    def planned(self) -> int:
        return planned_trials(self.variants, self.seeds, self.num_samples)


STOPPED_FILE = "asha_stopped.json"


def stopped_trials(exp_dir: str) -> set[str]:
    f = Path(exp_dir) / STOPPED_FILE
    return set(json.loads(f.read_text())) if f.exists() else set()


def _record_stopped(exp_dir: str, trial_id: str) -> None:
    save_json(Path(exp_dir) / STOPPED_FILE, sorted(stopped_trials(exp_dir) | {trial_id}))


class RecordingASHA(ASHAScheduler):
    """ASHA that writes down which trials it stopped, so the driver can tell a trial stopped early
    from one interrupted by Ctrl-C (Tune reports both as terminated).

    max_t is one more than the epochs: plain ASHA stops a trial when it reports its last epoch,
    which would cut off the final evaluation that follows it. For the same reason a rung at the
    last epoch (grace_period x reduction_factor^k = epochs, or a grace period of the whole run)
    decides nothing: the trial has trained in full, and stopping it would save only its
    evaluation and lose its test metrics."""

    def __init__(self, *, exp_dir: str, epochs: int, **kw):
        super().__init__(time_attr="epoch", max_t=epochs + 1, **kw)
        self.exp_dir, self.epochs = exp_dir, epochs

    def on_trial_result(self, tune_controller, trial, result):
        if result.get("epoch", 0) >= self.epochs:
            return TrialScheduler.CONTINUE
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP and not result.get(COMPLETED):
            _record_stopped(self.exp_dir, trial.trial_id)
        return decision


class MlflowStatus(tune.Callback):
    """Ends the MLflow run of a trial that could not end it itself (ASHA stop, crash)."""

    def __init__(self, tracking: Tracking, exp_dir: str):
        self.tracking, self.exp_dir = tracking, exp_dir

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if trial.trial_id in stopped_trials(self.exp_dir):
            close_trial_run(self.tracking, trial.trial_id, status="FINISHED",
                            tags={"smaraad.stopped_early": f"after epoch {last.get('epoch', 0)}"})

    def on_trial_error(self, iteration, trials, trial, **info):
        reason = _error_text(trial)
        close_trial_run(self.tracking, trial.trial_id, status="FAILED",
                        tags={"smaraad.error": reason})


class ThreadBoard:
    """Torch threads per running trial, as `SpareCores` last set them; each trial reads its own
    between epochs (trainables.trial). A named actor of the experiment, started on first use."""

    def __init__(self):
        self.threads: dict[str, int] = {}

    def set(self, threads: dict[str, int]) -> None:
        self.threads = dict(threads)

    def get(self, trial_id: str) -> int | None:
        return self.threads.get(trial_id)


class SpareCores(tune.Callback):
    """Once no trial is left to start, the running trials share their nodes' cores
    (trainables.resources.spare_threads); back to their reservations while one waits. A trial
    counts on the node its last report names; before its first report it keeps its reservation."""

    def __init__(self, board: str, planned: int, reserved: int):
        self.board_name, self.planned, self.reserved = board, planned, reserved
        self.board, self.last, self.cpus = None, {}, {}

    def node_cpus(self, nodes: set[str]) -> dict[str, int]:
        if not nodes <= set(self.cpus):  # a node not seen yet (a cluster that grew)
            self.cpus = {n["NodeID"]: int(n["Resources"].get("CPU", 0))
                         for n in ray.nodes() if n.get("Alive")}
        return self.cpus

    def on_step_end(self, iteration, trials, **info):
        running: dict[str, list[str]] = {}
        for t in trials:
            node = (t.last_result or {}).get(NODE_ID)
            if t.status == Trial.RUNNING and node:
                running.setdefault(node, []).append(t.trial_id)
        waiting = len(trials) < self.planned or any(
            t.status in (Trial.PENDING, Trial.PAUSED) for t in trials)
        wanted = spare_threads(running, self.node_cpus(set(running)), self.reserved, waiting)
        if wanted == self.last:
            return
        self.last = wanted
        if self.board is None:
            if all(n == self.reserved for n in wanted.values()):
                return
            self.board = ray.remote(num_cpus=0)(ThreadBoard).options(
                name=self.board_name).remote()
        self.board.set.remote(wanted)


class Progress(tune.Callback):
    """One line per trial-epoch on the driver (Tune's own table is off: verbose=0), e.g.
    `trial 3b79d60f  epoch 3/8  val/pgd_acc 0.420  gamma=28.65 alpha=0.7152`, and one when a trial
    ends, so a sweep that runs for minutes (or days on a cluster) shows where it is. A failure is
    one line too, with its retry if one is left, e.g. `trial 3b79d60f  failed on node 5f1c09ab
    10.0.0.7 after epoch 3 (its node or its worker process was lost): retry 1 of 1 from epoch 3's
    checkpoint, 0 left; Ray's traceback: <experiment>/ray_errors.log`."""

    def __init__(self, metric: str, keys: list[str], epochs: int, errors_log: str):
        self.metric, self.keys, self.epochs = metric, keys, epochs
        self.errors_log = errors_log

    def _point(self, trial) -> str:
        return " ".join(f"{k}={fmt(trial.config.get(k))}" for k in self.keys
                        if k in (trial.config or {}))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get(COMPLETED):
            line = "  ".join(f"{k} {fmt(result[k])}" for k in metrics.headline_keys()
                             if k in result)
            print(f"trial {trial.trial_id}  evaluated  {line}", flush=True)
        elif "epoch" in result:
            print(f"trial {trial.trial_id}  epoch {result['epoch']}/{self.epochs}  "
                  f"{self.metric} {fmt(result.get(self.metric))}  {self._point(trial)}",
                  flush=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        n, most = trial.run_metadata.num_failures, trial.max_failures
        saved = trial.latest_checkpoint_result
        start = (f"from epoch {saved.metrics['epoch']}'s checkpoint"
                 if saved and saved.metrics.get("epoch") else "from the start (no checkpoint)")
        print(f"{self._failure(trial, 'failed')}: retry {n} of {most} {start}, {most - n} left; "
              f"Ray's traceback: {self.errors_log}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"{self._failure(trial, 'FAILED')}, no retries left; "
              f"Ray's traceback: {self.errors_log}", flush=True)

    @staticmethod
    def _failure(trial, word: str) -> str:
        """`trial ID  failed on node N after epoch E (why)`: why in our words (the node or the
        worker process lost, or the trial's own error), N the Ray node id's start and its IP."""
        last, exc = trial.last_result or {}, _last_exception(trial)
        ip = last.get("node_ip") or getattr(exc, "ip", None)  # before its first report: Ray's
        node = " ".join(filter(None, [last.get(NODE_ID, "")[:8], ip]))
        where = f" on node {node}" if node else ""
        after = f" after epoch {last['epoch']}" if last.get("epoch") else ""
        cause = getattr(exc, "cause", None)  # what the trial raised (a RayTaskError's)
        if isinstance(exc, ray.exceptions.RayActorError):
            why = "its node or its worker process was lost"
        elif isinstance(cause, Exception):
            why = f"{type(cause).__name__}: {cause}"[:200]
        else:
            why = _error_text(trial)[:200]
        return f"trial {trial.trial_id}  {word}{where}{after} ({why})"


def _last_exception(trial) -> BaseException | None:
    """The exception Tune pickled for the trial's latest failure (None if unreadable)."""
    from ray import cloudpickle

    try:
        with open(trial.pickled_error_file, "rb") as f:
            return cloudpickle.load(f)
    except Exception:  # no file yet, or an exception class this driver cannot import
        return None


def _error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "error")[:2000]


def trainable(plan: Plan):
    fn = tune.with_parameters(run_trial, setup=plan.setup)
    return tune.with_resources(fn, {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial})


def param_space(plan: Plan) -> dict:
    if plan.space.kind == "grid":
        return {**{k: tune.grid_search(list(dict.fromkeys(v[k] for v in plan.variants)))
                   for k in plan.space.grid},
                "seed": tune.grid_search(list(plan.seeds))}
    return {**to_tune(plan.space), "seed": plan.seed}


def to_tune(space: Space) -> dict:
    make = {"uniform": lambda d: tune.uniform(d.low, d.high),
            "loguniform": lambda d: tune.loguniform(d.low, d.high),
            "int": lambda d: tune.randint(int(d.low), int(d.high) + 1),
            "choice": lambda d: tune.choice(list(d.values))}
    return {k: make[d.distribution](d) for k, d in space.search.items()}


def tune_config(plan: Plan) -> tune.TuneConfig:
    space = plan.space
    if space.kind == "grid":
        return tune.TuneConfig(num_samples=1, max_concurrent_trials=plan.max_concurrent,
                               reuse_actors=True)
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in memory"
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    sampler = optuna.samplers.TPESampler(seed=plan.seed,
                                         n_startup_trials=min(STARTUP_TRIALS, plan.num_samples))
    multi = len(plan.objectives) > 1
    searcher = OptunaSearch(
        sampler=sampler if not multi else optuna.samplers.NSGAIISampler(seed=plan.seed),
        points_to_evaluate=[space.paper_point()],
        metric=list(plan.objectives) if multi else None,
        mode=[space.mode] * len(plan.objectives) if multi else None)
    grace = min(space.grace_period, plan.epochs)
    scheduler = RecordingASHA(exp_dir=experiment_path(plan), epochs=plan.epochs,
                              grace_period=grace, reduction_factor=space.reduction_factor,
                              **({"metric": space.metric, "mode": space.mode} if multi else {}))
    return tune.TuneConfig(
        search_alg=ConcurrencyLimiter(searcher, max_concurrent=plan.max_concurrent),
        scheduler=scheduler, num_samples=plan.num_samples, reuse_actors=True,
        **({} if multi else {"metric": space.metric, "mode": space.mode}))


def run_config(plan: Plan) -> tune.RunConfig:
    return tune.RunConfig(
        name=plan.name, storage_path=plan.storage_path, verbose=0,
        callbacks=[CSVLoggerCallback(), JsonLoggerCallback(),
                   MlflowStatus(plan.setup.tracking, experiment_path(plan)),
                   Progress(plan.space.metric, [*plan.space.search, *plan.space.grid, "seed"],
                            plan.epochs, errors_log=errors_log(plan)),
                   *([SpareCores(plan.setup.board, plan.planned, plan.setup.threads)]
                     if plan.setup.board else [])],
        checkpoint_config=tune.CheckpointConfig(num_to_keep=3),
        failure_config=tune.FailureConfig(max_failures=plan.retries))


def experiment_path(plan: Plan) -> str:
    return str(Path(plan.storage_path) / plan.name)


def errors_log(plan: Plan) -> str:
    return str(Path(experiment_path(plan)) / ERRORS_LOG)


def run(plan: Plan, *, resume: bool) -> list[dict]:
    """Run (or resume) the experiment; return one plain dict per trial."""
    path = experiment_path(plan)
    if resume:
        tuner = tune.Tuner.restore(path, trainable(plan), resume_errored=True,
                                   param_space=param_space(plan))
    else:
        tuner = tune.Tuner(trainable(plan), param_space=param_space(plan),
                           tune_config=tune_config(plan), run_config=run_config(plan))
    Path(path).mkdir(parents=True, exist_ok=True)
    with ray_failures_to(errors_log(plan)):
        grid = tuner.fit()
    return [trial_row(r) for r in grid]


def trial_row(result) -> dict[str, Any]:
    metrics = dict(result.metrics or {})
    return {"trial_id": metrics.get("trial_id", ""), "config": dict(result.config or {}),
            "metrics": metrics, "error": str(result.error).strip().splitlines()[-1][:300]
            if result.error else "", "path": result.path}


def can_resume(path: str) -> bool:
    return tune.Tuner.can_restore(path)
