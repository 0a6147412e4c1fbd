"""Ray's own reports of a failure, off the driver's terminal and into the experiment's log file.

A failed trial is logged with its traceback by Tune's controller logger, but a lost node is
printed by Ray's driver itself (ray._private.worker.print_to_stdstream, a private function: where
Ray moves it, its message stays on the terminal). RayFailureLog takes both to the file; the
experiment's Progress callback prints our one line for each.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager

ERRORS_LOG = "ray_errors.log"
# Tune's record of a failed trial task: `ERROR tune_controller.py ... Trial task failed for trial
# ...` and the exception's traceback (~20 lines of ActorUnavailableError for a lost node).
TUNE_CONTROLLER = "ray.tune.execution.tune_controller"
TRIAL_TASK_FAILED = "Trial task failed"
# The GCS's message to every driver when a node stops answering, which Ray's driver prints itself
# (ray._private.worker.print_to_stdstream, "(raylet) The node with node id: ... has been marked
# dead because ..."), not through a logger.
NODE_DEAD = re.compile(r"The node with node id: (\w+) and address: (\S+)")


class RayFailureLog(logging.Filter):
    """Ray's own reports of a failure, off the driver's terminal and into the experiment's
    ray_errors.log: Tune's failed-trial record with its traceback (Progress prints our line for
    it) and the GCS's message that a node was marked dead (for which this prints our line:
    `node 3b8b7f37 10.0.0.7 lost: Ray marked it dead; Ray's message: <file>`)."""

    def __init__(self, path: str, print_ray=None):
        super().__init__()
        self.path, self.print_ray = path, print_ray
        self.file = logging.FileHandler(path, delay=True)  # created on the first failure
        self.file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: "
                                                 "%(message)s"))

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(TRIAL_TASK_FAILED):
            self.file.handle(record)
            return False
        return True

    def print_to_stdstream(self, data: dict, ignore_prefix: bool) -> None:
        """Stands in for Ray's printer of GCS messages: a node's death goes to the file."""
        text = "\n".join(data.get("lines", []))
        dead = NODE_DEAD.search(text)
        if not dead:
            return self.print_ray(data, ignore_prefix)
        self.file.handle(logging.makeLogRecord({"name": "ray.gcs", "levelname": "WARNING",
                                                "levelno": logging.WARNING, "msg": text}))
        print(f"node {dead[1][:8]} {dead[2]} lost: Ray marked it dead; its trials continue on "
              f"the other nodes where --retries allows; Ray's message: {self.path}", flush=True)


@contextmanager
def ray_failures_to(path: str):
    """While the experiment runs, Ray's reports of failures go to `path` (RayFailureLog). Both
    hooks leave with the experiment, so a second experiment in the same process does not write
    into the first one's file."""
    import ray._private.worker as ray_worker  # private: where Ray moves it, its line stays

    logger = logging.getLogger(TUNE_CONTROLLER)
    divert = RayFailureLog(path, getattr(ray_worker, "print_to_stdstream", None))
    logger.addFilter(divert)
    if divert.print_ray:
        ray_worker.print_to_stdstream = divert.print_to_stdstream
    try:
        yield
    finally:
        logger.removeFilter(divert)
        if divert.print_ray:
            ray_worker.print_to_stdstream = divert.print_ray
        divert.file.close()
