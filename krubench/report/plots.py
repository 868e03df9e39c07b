"""Learning-curve plots for krubench-report: per benchmark setting, each row's validation curve of the table's
metric in the table's unit (mean over its seeds with a min–max band; the training loss beside it where it is the
same quantity) against the memoryless baseline in that unit, read back from the runs'
TensorBoard event files with TensorBoard's own reader, drawn with matplotlib's Agg canvas (no display needed)
into PNG files."""
from __future__ import annotations

import logging
import math
from itertools import cycle
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ..models import MODELS

# a model's colour is its place in MODELS: the same colour in every figure, and a new model gets one
PALETTE = ("tab:blue", "tab:purple", "tab:green", "tab:red", "tab:orange", "tab:brown", "tab:pink", "tab:olive",
           "tab:cyan", "tab:gray")
COLORS = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(MODELS)}


class _ResumePurge(logging.Filter):
    """A resumed run's event file starts with a purge step on purpose (tb.py): TensorBoard's reader drops what the
    interrupted process logged after its checkpoint, and warns of a "TensorFlow restart" each time it does."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Detected out of order event.step")


logging.getLogger("tensorboard").addFilter(_ResumePurge())


def read_scalars(run_dir: Path, tags=("train/loss", "val/loss")) -> dict[str, tuple[list[int], list[float]]]:
    """(steps, values) of each tag present in run_dir/tb; tags the run did not log are left out."""
    acc = EventAccumulator(str(Path(run_dir) / "tb"), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    present = set(acc.Tags()["scalars"])
    return {tag: ([e.step for e in acc.Scalars(tag)], [e.value for e in acc.Scalars(tag)])
            for tag in tags if tag in present}


def mean_curve(curves: list[dict], tag: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """steps, mean, min, max of `tag` over the runs' curves, at the steps every run logged."""
    series = [dict(zip(*c.get(tag, ([], [])))) for c in curves]  # {step: value}; a resumed run's repeats keep the last
    steps = sorted(set.intersection(*(set(s) for s in series)))
    at = [[s[step] for s in series] for step in steps]
    return steps, [sum(v) / len(v) for v in at], [min(v) for v in at], [max(v) for v in at]


#: metrics that are the training loss in other units: the training curve is drawn converted (nats / ln 2 = bits)
TRAIN_LOSS_AS = {"loss": 1.0, "loss_bits": 1 / math.log(2), "bpc": 1 / math.log(2)}


def plot_setting(setting: str, rows, path: Path, in_samples: bool = False) -> Path:
    """draw_setting's figure as a PNG at `path`."""
    draw_setting(setting, rows, in_samples).savefig(path, dpi=110, bbox_inches="tight")  # long legends stay whole
    return path


def draw_setting(setting: str, rows, in_samples: bool = False) -> Figure:
    """A figure in the paper's style, of the table's metric in the table's unit: per row, the validation metric
    averaged over its runs (seeds) with a band from their min to max, the training loss averaged as a thin line
    of the same colour where it is the same quantity (loss, bits, BPC; not accuracy), and the memoryless
    baseline of that metric as a dashed line. `in_samples`: the x-axis counts training samples (steps × each
    row's batch size), as the paper's figure does (adding), else optimizer steps."""
    metric, unit, split = rows[0].metric, rows[0].unit, rows[0].split
    fig = Figure(figsize=(7, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    spare = cycle(("C7", "C9", "black", "gold"))  # colours no model uses
    used, lowest, highest = set(), float("inf"), 0.0
    for row in rows:
        color = next(spare) if row.model in used or row.model not in COLORS else COLORS[row.model]
        used.add(row.model)
        n, seeds = len(row.runs), row.seeds
        label = (f"{row.model} N={row.hidden_size} ({row.recurrent:,} rec. params), "
                 + (f"{n} seed{'s' * (n > 1)}" if seeds == n else f"{n} runs ({seeds} seeds)")
                 + (f"; {row.variant}" if row.variant else ""))
        curves = [read_scalars(run.dir, ("train/loss", f"val/{metric}")) for run in row.runs]
        per_step = row.config.get("task.batch_size", 1) if in_samples else 1
        train = []
        if metric in TRAIN_LOSS_AS:
            steps, train, _, _ = mean_curve(curves, "train/loss")
            train = [v * TRAIN_LOSS_AS[metric] for v in train]
            ax.plot([s * per_step for s in steps], train, color=color, lw=0.7, alpha=0.5)
        steps, val, low, high = mean_curve(curves, f"val/{metric}")
        steps = [s * per_step for s in steps]
        ax.plot(steps, val, color=color, marker="o", ms=2.5, lw=1.4, label=label)
        if n > 1:
            ax.fill_between(steps, low, high, color=color, alpha=0.2, lw=0)
        values = [*train, *low, *high]
        lowest = min([lowest, *(v for v in values if v > 0)])
        highest = max([highest, *values])
    baseline = rows[0].baseline
    ax.axhline(baseline, color="black", ls="--", lw=1.2, label=f"memoryless baseline {baseline:.4g}")
    if metric in TRAIN_LOSS_AS and highest > 0 and highest / min(lowest, baseline) > 30:
        ax.set_yscale("log")  # losses spanning decades (copy, adding) read on a log axis
    ax.set_xlabel("training samples seen" if in_samples else "optimizer step")
    ax.set_ylabel(f"{metric} ({unit})" if unit else metric)
    train_note = ", training loss thin" if metric in TRAIN_LOSS_AS else ""
    table_note = "; the table reports the test split" if split == "test" else ""
    ax.set_title(f"{setting}: validation {metric} (band: min–max over seeds){train_note}{table_note}", fontsize=9)
    fig.legend(loc="outside lower center", ncols=2, fontsize=7)  # below the axes: hides no curve
    return fig


def plot_settings(rows, folder: Path, stem: str, in_samples=frozenset(), paper_runs=frozenset()) -> dict[str, Path]:
    """A plot per setting of `rows`, written as folder/<stem>_<setting>.png, the settings `in_samples` over
    training samples; returns {title: path}. Where some rows of a setting are runs of the paper's presets (their
    folders in `paper_runs`), its plot draws those rows alone, as the paper's figure, and the setting's other rows
    (sweeps, earlier set-ups) go to a second plot, <stem>_<setting>_more.png, titled '<setting>, other set-ups':
    one plot of every row drew twenty curves for adding T=200."""
    folder.mkdir(parents=True, exist_ok=True)
    settings: dict[str, list] = {}
    for row in rows:
        settings.setdefault(row.setting, []).append(row)
    plots = {}
    for setting, group in settings.items():
        paper = [row for row in group if all(run.dir in paper_runs for run in row.runs)]
        other = [row for row in group if row not in paper]
        parts = [(setting, paper or other, ""), *([(f"{setting}, other set-ups", other, "_more")] if paper and other else [])]
        for title, part, suffix in parts:
            plots[title] = plot_setting(title, part, folder / f"{stem}_{setting}{suffix}.png", setting in in_samples)
    return plots
