"""Tasks: data, loss, metrics and memoryless baseline. `build_task` turns the `task` config group
into a Task."""
from __future__ import annotations

from .adding import AddingTask
from .base import Task
from .copy import CopyTask
from .music import MusicTask
from .pixel_mnist import PixelMNISTTask
from .ptb_char import PTBCharTask

TASKS = {"copy": CopyTask, "adding": AddingTask, "pixel_mnist": PixelMNISTTask, "ptb_char": PTBCharTask,
         "music": MusicTask}


def build_task(cfg, seed: int, data_dir: str | None = None) -> Task:
    """cfg: the `task` config as a plain dict (enums as strings); its fields other than `name` are the constructor's keywords.
    Real-data tasks also get `data_dir` (the top-level config key; None: $KRUBENCH_DATA, else the per-user cache)."""
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    cls = TASKS[cfg["name"]]
    if cls.needs_data:
        kwargs["data_dir"] = data_dir
    return cls(seed=seed, **kwargs)


__all__ = ["AddingTask", "CopyTask", "MusicTask", "PTBCharTask", "PixelMNISTTask", "TASKS", "Task", "build_task"]
