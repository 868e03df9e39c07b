"""TensorBoard output of a run: scalars, a custom-scalars chart that puts each loss next to its
memoryless baseline, the resolved config as text, and hyperparameters in the hparams view of the
same run (not the separate sub-run that `SummaryWriter.add_hparams` creates)."""
from __future__ import annotations

from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams


def open_writer(run_dir: Path, start_step: int, baseline_keys) -> SummaryWriter:
    """A writer on `run_dir/tb` that continues a run checkpointed at `start_step` (0: a fresh start).
    Its `purge_step` hides, in TensorBoard's reader, what earlier processes wrote after that checkpoint: the
    points of later steps (a resume logs them again), or everything on a fresh start. The checkpoint's own
    step keeps its points: they were flushed before the checkpoint was written and are never logged again."""
    purge_step = start_step + 1 if start_step > 0 else 0
    writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=purge_step)
    if start_step > 0:
        return writer  # the chart layout is in the events the fresh start wrote
    charts = {"loss vs memoryless baseline": ["Multiline", ["train/loss", "val/loss", "val/baseline"]]}
    for k in baseline_keys:
        if k != "loss":
            charts[f"{k} vs memoryless baseline"] = ["Multiline", [f"val/{k}", f"val/baseline_{k}"]]
    writer.add_custom_scalars({"krubench": charts})
    return writer


def log_baselines(writer: SummaryWriter, baselines: dict[str, float], step: int) -> None:
    """The baseline as its own scalar, logged at each validation so it draws as a flat line."""
    for k, v in baselines.items():
        writer.add_scalar("val/baseline" if k == "loss" else f"val/baseline_{k}", v, step)


def log_hparams(writer: SummaryWriter, flat_config: dict, metrics: dict[str, float], step: int) -> None:
    hp = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat_config.items()}
    for summary in hparams(hp, metrics):
        writer.file_writer.add_summary(summary)
    for k, v in metrics.items():
        writer.add_scalar(k, v, step)
