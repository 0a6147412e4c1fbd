"""Ray for one experiment: a private local instance, or the cluster at `--address`.

`ray_session` starts or joins it for the length of one experiment and shuts it down (a local
instance stops, a cluster's driver disconnects) when the experiment ends; a caller that started
Ray itself keeps it. Ray's own terminal chatter is turned off here, and the local instance's
system settings (below) are chosen from measurements on the 2-core VM (docs/measurements.md).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

import ray

from smaraad.cli import UsageError

# Ray's own terminal output, off (a user's own setting of these wins):
# - RAY_AIR_NEW_OUTPUT=0: the new reporter prints an experiment header, "View detailed results
#   here" and the TensorBoard hint whatever `verbose` says; the classic one obeys verbose=0.
# - TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1: no TensorBoard event files (the project has no
#   TensorBoard); the CSV and JSON loggers that Tune's results need are added by run_config.
# - TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S=0: no advice to keep fewer
#   checkpoints when a loaded machine snapshots often (trainables.experiment keeps 3 on purpose).
QUIET = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
         "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
# A new local instance enables token authentication (Ray's default, kept) and logs a warning
# that it did so. RAY_AUTH_MODE=token would silence it too, but Ray reads its config when it is
# imported, so setting it here is too late; the warning's own logger is quieted instead.
AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
# MLflow announces a new SQLite store's tables on the driver; its warnings and errors still show.
CHATTY_LOGGERS = ("mlflow.store.db.utils",)
# Ray starts its workers at niceness 15 (its `worker_niceness`), so that its driver and raylet stay
# responsive. A trial is then the first process to lose a core to anything else on the machine,
# where `python -m smaraad.train` runs at 0: on a shared 2-core VM the lone trial showed as
# ps NI 15 while other jobs ran. The driver and Ray's services use ~3 % of one core during training
# (docs/measurements.md), so the local instance starts its workers at the driver's niceness, 0.
# Ray also starts one idle worker per CPU when the driver connects, for tasks to come. A trial
# never runs in one: Ray Tune gives every trial actor a runtime environment (its env_vars), and
# a worker serves only the environment it was started with, so Ray starts the trial's own worker
# and later kills the idle ones. On the 2-core VM their start-up competed with the driver's:
# without them a one-trial ablate reached its first epoch 1.7 s sooner (two runs each way).
LOCAL_SYSTEM_CONFIG = {"worker_niceness": 0, "prestart_worker_first_driver": False,
                       "enable_worker_prestart": False}


@contextmanager
def ray_session(address: str | None, num_cpus: int | None):
    """Ray for one experiment (`init_ray`), shut down when it ends: a local instance stops, a
    cluster's driver disconnects. Its report and summary need no Ray, and an explicit shutdown
    skips the half second Ray's exit handler waits for log lines (none come: log_to_driver is
    off). A caller that started Ray itself keeps it."""
    mine = not ray.is_initialized()
    init_ray(address, num_cpus)
    try:
        yield
    finally:
        if mine:
            ray.shutdown()


def init_ray(address: str | None, num_cpus: int | None) -> None:
    """A private local instance by default; `address` joins an existing cluster."""
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)
    logging.getLogger(AUTH_LOGGER).setLevel(logging.ERROR)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if ray.is_initialized():
        return
    if address:
        join_cluster(address)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 log_to_driver=False, configure_logging=False,
                 _system_config=LOCAL_SYSTEM_CONFIG)


def join_cluster(address: str) -> None:
    """Join a running cluster. Ray turns its token authentication on by itself only for
    address="auto"; a driver that names the head's address gets it here too when this machine has
    a token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) and RAY_AUTH_MODE is unset.
    A cluster without authentication ignores the token. A refused token is the user's to fix."""
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available)

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError as exc:
        causes = f"{exc} {exc.__cause__!r}"
        hint = ("the cluster wants its token: set RAY_AUTH_TOKEN to what `ray get-auth-token` "
                "prints on the head, or RAY_AUTH_TOKEN_PATH to a file holding it"
                if "InvalidAuthToken" in causes or "AuthenticationError" in causes else str(exc))
        raise UsageError(f"--address {address}: cannot join the Ray cluster; {hint}") from None
