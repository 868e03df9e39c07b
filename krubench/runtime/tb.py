"""TensorBoard output of a run: scalars, custom-scalars charts that put each quantity next to its memoryless
baseline (one chart per unit), the resolved config as text, and the run's hyperparameters for the HParams view.

Custom-scalars charts select tags by regular expression, so each tag is anchored (`^val/loss$`): unanchored,
`val/baseline` also matched `val/baseline_loss_bits` and a chart mixed nats, bits and accuracy. The charts of a
task form a category named after it ("krubench copy"): TensorBoard merges the layouts of all runs in a logdir,
and a chart draws its tags for every selected run, so with several tasks in one logdir, select one task's runs
(their names start with the setting, e.g. copy_T1000) to keep a chart in one unit.

HParams: each run writes its session (hyperparameters and status) but no experiment summary of its own. With
none in the logdir, TensorBoard builds the experiment from every run's session, as its hparams plugin
documents: the union of all runs' hyperparameters (so copy, adding and music runs in one logdir each get their
columns, and `differs` is computed over all of them) and every scalar tag, including the `hparam/...` results,
as a metric. Hyperparameters that do not change what a run computes (config.INCIDENTAL_KEYS) are left out."""
from __future__ import annotations

import re
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from ..config import flatten
from ..config import INCIDENTAL_KEYS
from ..optim import unused_keys


def baseline_tag(key: str) -> str:
    """The tag of the memoryless baseline of evaluation key `key`."""
    return "val/baseline" if key == "loss" else f"val/baseline_{key}"


def charts(task: str, baselines, units: dict[str, str]) -> dict[str, dict]:
    """The custom-scalars layout of a run of `task`: the loss (train, validation, baseline) in one chart, and
    each other quantity that has a baseline (bits, accuracy, ...) with its baseline in a chart of its own."""
    def exactly(*tags):
        return [f"^{re.escape(t)}$" for t in tags]

    loss_unit = units.get("loss", "nats")
    out = {f"loss ({loss_unit}) vs memoryless baseline": ["Multiline", exactly("train/loss", "val/loss", baseline_tag("loss"))]}
    for k in baselines:
        if k != "loss":
            out[f"{k} ({units.get(k, '?')}) vs memoryless baseline"] = ["Multiline", exactly(f"val/{k}", baseline_tag(k))]
    return {f"krubench {task}": out}


def open_writer(run_dir: Path, start_step: int, task) -> SummaryWriter:
    """A writer on `run_dir/tb` that continues a run checkpointed at `start_step` (0: a fresh start).
    Its `purge_step` hides, in TensorBoard's reader, what earlier processes wrote after that checkpoint: the
    points of later steps (a resume logs them again), or everything on a fresh start. The checkpoint's own
    step keeps its points: they were flushed before the checkpoint was written and are never logged again."""
    purge_step = start_step + 1 if start_step > 0 else 0
    writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=purge_step)
    if start_step > 0:
        return writer  # the chart layout is in the events the fresh start wrote
    writer.add_custom_scalars(charts(task.name, task.baselines(), task.units))
    return writer


def log_baselines(writer: SummaryWriter, baselines: dict[str, float], step: int) -> None:
    """The baseline as its own scalar, logged at each validation so it draws as a flat line."""
    for k, v in baselines.items():
        writer.add_scalar(baseline_tag(k), v, step)


def hparams_of(config: dict) -> dict:
    """The hyperparameters shown in the HParams view: the flattened config without incidental keys, unset
    (None) values and keys the run's own choices leave unused (schedule.unused_keys); lists as text."""
    unused = unused_keys(config)
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(config).items()
            if v is not None and not k.startswith(INCIDENTAL_KEYS) and k not in unused}


def log_hparams(writer: SummaryWriter, config: dict, metrics: dict[str, float], step: int) -> None:
    """The run's session (hyperparameters, then its end) in the run's own folder, and the final metrics as
    scalars; no experiment summary (see the module's docstring)."""
    _experiment, start, end = hparams(hparams_of(config), metrics)
    for summary in (start, end):
        writer.file_writer.add_summary(summary)
    for k, v in metrics.items():
        writer.add_scalar(k, v, step)
