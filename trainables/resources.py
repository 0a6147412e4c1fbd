"""What each trial reserves (CPUs, GPUs) and how many run at once, from the cluster's resources.

Defaults, where --cpus-per-trial / --gpus-per-trial / --max-concurrent are not given:
- trials at once: every planned trial, at most one per CPU (and per GPU share, below);
- GPUs: none on a cluster without GPUs. On one with GPUs, a whole GPU per trial while there are
  GPUs enough for the trials at once, else a 1/k share so that k trials pack on each GPU, k at
  most MAX_TRIALS_PER_GPU (each trial holds its own CUDA context, model copies and batches);
- CPUs: the cluster's CPUs shared among the trials at once, at most one node's CPUs, whole
  numbers (a trial's CPUs are its torch threads). A lone trial gets every core, so a one-trial
  experiment trains as fast per epoch as `python -m smaraad.train` does.
A trial's CPU reservation is fixed when the experiment starts, but its torch threads are not: once
no trial is left to start (a grid's last ones, a tune's last samples, the others finished or
stopped by ASHA), the running trials share their node's cores (`spare_threads`), told between
epochs by the driver (trainables/experiment.py, `SpareCores`); when a trial is waiting again (a
retry) they go back to their reservation. Ray Tune's ResourceChangingScheduler would move the
reservations themselves, but restarts a trial from its checkpoint for each change and refuses
reuse_actors=True (Ray 2.60).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from smaraad.cli import UsageError

MAX_TRIALS_PER_GPU = 4


@dataclass(frozen=True)
class Cluster:
    cpus: int            # all alive nodes together
    gpus: int
    node_cpus: int       # the largest node's (a trial's reservation must fit one node)


@dataclass(frozen=True)
class Resources:
    cpus: float          # per trial
    gpus: float          # per trial
    concurrent: int      # trials at once

    def describe(self, cluster: Cluster) -> str:
        gpu = (f", {fmt(self.gpus)} GPU" if self.gpus else "")
        return (f"resources: {cluster.cpus} CPUs, {cluster.gpus} GPUs; up to {self.concurrent} "
                f"trial(s) at once, each with {fmt(self.cpus)} CPU(s){gpu}")


def fmt(x: float) -> str:
    return f"{x:g}"


def cluster_of(nodes: list[dict]) -> Cluster:
    """The alive nodes' totals, from `ray.nodes()`."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    cpus = [int(r.get("CPU", 0)) for r in alive]
    return Cluster(cpus=sum(cpus), gpus=int(sum(r.get("GPU", 0) for r in alive)),
                   node_cpus=max(cpus, default=0))


def plan_resources(cluster: Cluster, trials: int, *, cpus: float | None = None,
                   gpus: float | None = None, max_concurrent: int | None = None) -> Resources:
    """Per-trial CPUs and GPUs and the trials at once; the given values are kept as they are."""
    at_once = max(1, min(trials, max_concurrent or trials))
    at_once = min(at_once, max(1, int(cluster.cpus // cpus) if cpus else cluster.cpus or 1))
    if gpus is None:
        gpus = gpu_share(cluster.gpus, at_once)
    if gpus:
        at_once = min(at_once, max(1, int(cluster.gpus // gpus) if gpus >= 1 else
                                   cluster.gpus * int(1 / gpus + 1e-9)))
    if cpus is None:
        cpus = max(1, min(cluster.cpus // at_once, cluster.node_cpus or 1))
    return Resources(cpus=cpus, gpus=gpus, concurrent=at_once)


def gpu_share(gpus: int, at_once: int) -> float:
    """GPUs per trial: 0 without GPUs, 1 while each trial at once can have its own, else 1/k."""
    if gpus == 0:
        return 0.0
    if at_once <= gpus:
        return 1.0
    return 1.0 / min(math.ceil(at_once / gpus), MAX_TRIALS_PER_GPU)


def current_cluster() -> Cluster:
    import ray
    return cluster_of(ray.nodes())


def check_device(device: str, gpus: float) -> None:
    """A device the trials will not hold: one clear error before anything runs, the one a trial
    would raise (smaraad.trainer.placed_device). A trial sees its own GPUs only, from cuda:0."""
    from smaraad.config import ConfigError
    from smaraad.trainer import placed_device

    held = max(1, int(gpus)) if gpus else 0
    try:
        placed_device(device, [str(i) for i in range(held)], held)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def planned_trials(variants: list, seeds: tuple, num_samples: int) -> int:
    """The trials an experiment starts: a grid's cells times its seeds, or a search's samples."""
    return len(variants) * len(seeds) if variants else num_samples


def spare_threads(running: dict[str, list[str]], node_cpus: dict[str, int], reserved: int,
                  waiting: bool) -> dict[str, int]:
    """Torch threads per running trial: its reservation while any trial waits to start, else an
    equal share of its node's cores (never fewer than reserved). `running` is node -> trial ids."""
    out = {}
    for node, trials in running.items():
        share = reserved if waiting else max(reserved, node_cpus.get(node, 0) // len(trials))
        out.update({t: share for t in trials})
    return out
