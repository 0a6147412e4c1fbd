"""Shared test setup: an isolated teacher cache, and the real command lines run in-process."""

from __future__ import annotations

import os
import sys

import pytest


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Teachers trained by the tests are cached in a session folder, never in ~/.cache; Ray
    workers inherit the variable because it is set before any ray.init."""
    os.environ["SMARAAD_CACHE"] = str(tmp_path_factory.mktemp("smaraad-cache"))
    yield


@pytest.fixture(autouse=True)
def same_start():
    """Every test starts from the same process state, whatever ran before it: the environment
    (commands run in-process set variables for their process, e.g. MLflow's HTTP retries off once
    a server answered), torch's thread count, its global RNG, seeded (many tests draw inputs from
    it), and no Ray instance (a command run in-process starts one, and a later command would
    join it, with its workers' environment of then)."""
    import torch

    environ, threads = dict(os.environ), torch.get_num_threads()
    torch.manual_seed(0)
    yield
    ray = sys.modules.get("ray")  # not imported here: most tests never load it
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    os.environ.clear()
    os.environ.update(environ)
    torch.set_num_threads(threads)


def run_cli(main, argv, capsys):
    """Run a command's main through smaraad.cli.run; return (exit code, stdout, stderr)."""
    from smaraad.cli import run

    code = run(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


# Ray notices a lost node after health_check_failure_threshold missed checks, one every
# health_check_period_ms (defaults 5 x 3 s); the cluster tests lose one on purpose and need not
# wait that long. The GCS on the head reads these at start.
FAST_NODE_FAILURE = {"RAY_health_check_period_ms": "1000",
                     "RAY_health_check_failure_threshold": "3"}


@pytest.fixture(scope="module")
def ray_cluster():
    """A head and one worker node (1 CPU each) started with `ray start`, token authentication on;
    its `env` is what a driver needs to join it."""
    from trainables.services import RayCluster

    cluster = RayCluster(head_cpus=1, worker_cpus=(1,), system_env=FAST_NODE_FAILURE)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of its own on 127.0.0.1 (skipped without the server binaries)."""
    from trainables.services import Postgres, postgres_bin

    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; on Debian: "
                    "apt-get install postgresql (.ci/run does)")
    if os.geteuid() == 0:
        import pwd
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("PostgreSQL refuses to run as root and there is no `postgres` user to run "
                        "it as (Debian's postgresql package creates one)")
    server = Postgres(bindir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared_storage(tmp_path_factory):
    """The folder every node sees: Ray Tune's storage and the MLflow artifact root (on one
    machine a shared file system is a plain path)."""
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="module")
def postgres_tracking(postgres, shared_storage):
    """`mlflow server` over the PostgreSQL database, artifacts on the shared storage."""
    from trainables.services import mlflow_server

    with mlflow_server(postgres.uri, artifact_root=str(shared_storage / "mlflow-artifacts")) as uri:
        yield uri
