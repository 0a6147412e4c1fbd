"""A trial's point: the values Ray gives one trial (searched or grid values, its seed) and how they
become its config. Read by the command layer (each grid point is checked before anything
starts), the driver and the trial itself; it imports no Ray, so the commands stay light."""

from __future__ import annotations

from smaraad.config import TrainConfig
from smaraad.teacher_specs import TEACHER_KEY

TRANSFER_TEACHER = "teacher"  # --transfer-from: the trial's own teacher


def point_config(configs: dict, point: dict, teacher_names=()) -> TrainConfig:
    """A point's config: its method's resolved config with the point's other values applied
    (checked); a `teacher` value among `teacher_names` names a teacher, not an architecture."""
    values = {k: v for k, v in point.items()
              if k != "method" and not (k == TEACHER_KEY and v in teacher_names)}
    return configs[point.get("method", next(iter(configs)))].with_values(values)
