"""Tasks: data, loss, metrics and memoryless baseline. `build_task` turns the `task` config group
into a Task."""
from __future__ import annotations

from .adding import AddingTask
from .base import Task
from .copy import CopyTask

TASKS = {"copy": CopyTask, "adding": AddingTask}


def build_task(cfg, seed: int) -> Task:
    """cfg: the `task` config as a plain dict (enums as strings); its fields other than `name` are the constructor's keywords."""
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    return TASKS[cfg["name"]](seed=seed, **kwargs)


__all__ = ["AddingTask", "CopyTask", "TASKS", "Task", "build_task"]
