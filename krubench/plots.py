"""Learning-curve plots for krubench-report: per benchmark setting, each run's training and validation loss
against the memoryless baseline, read back from the runs' TensorBoard event files with TensorBoard's own
reader, drawn with matplotlib's Agg canvas (no display needed) into PNG files."""
from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

COLORS = {"kru": "tab:blue", "lstm_kru": "tab:purple", "lstm": "tab:green", "rnn": "tab:red"}


def read_scalars(run_dir: Path, tags=("train/loss", "val/loss")) -> dict[str, tuple[list[int], list[float]]]:
    """(steps, values) of each tag present in run_dir/tb; tags the run did not log are left out."""
    acc = EventAccumulator(str(Path(run_dir) / "tb"), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    present = set(acc.Tags()["scalars"])
    return {tag: ([e.step for e in acc.Scalars(tag)], [e.value for e in acc.Scalars(tag)])
            for tag in tags if tag in present}


def plot_setting(setting: str, rows, path: Path) -> Path:
    """One PNG: every run of every row of `setting`, train loss (thin) and validation loss (dots), one colour
    per model, and the memoryless baseline of the loss as a dashed line."""
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    seen, lowest, highest = set(), float("inf"), 0.0
    for i, row in enumerate(rows):
        color = COLORS.get(row.model, f"C{4 + i}")
        label = f"{row.model} N={row.hidden_size} ({row.recurrent:,} recurrent params)"
        for run in row.runs:
            curves = read_scalars(run.dir)
            for tag, style in (("train/loss", dict(lw=0.8, alpha=0.6)), ("val/loss", dict(marker=".", ls="none"))):
                if tag not in curves:
                    continue
                steps, values = curves[tag]
                name = f"{label}, {tag.split('/')[0]}"
                ax.plot(steps, values, color=color, label=None if name in seen else name, **style)
                seen.add(name)
                positive = [v for v in values if v > 0]
                lowest, highest = min([lowest, *positive]), max([highest, *values])
    baseline = rows[0].runs[0].results["baseline"]["loss"]
    ax.axhline(baseline, color="black", ls="--", lw=1.2, label=f"memoryless baseline {baseline:.4g}")
    if highest > 0 and highest / min(lowest, baseline) > 30:  # losses spanning decades (copy, adding) read on a log axis
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (the task's training loss)")
    ax.set_title(f"{setting}: loss vs memoryless baseline")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path


def plot_settings(rows, folder: Path, stem: str) -> dict[str, Path]:
    """A plot per setting of `rows`, written as folder/<stem>_<setting>.png; returns {setting: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    settings: dict[str, list] = {}
    for row in rows:
        settings.setdefault(row.setting, []).append(row)
    return {setting: plot_setting(setting, group, folder / f"{stem}_{setting}.png") for setting, group in settings.items()}
