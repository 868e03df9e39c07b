"""Learning-curve plots for krubench-report: per benchmark setting, each row's training and validation loss
(mean over its seeds, validation with a min–max band) against the memoryless baseline, read back from the runs'
TensorBoard event files with TensorBoard's own reader, drawn with matplotlib's Agg canvas (no display needed)
into PNG files."""
from __future__ import annotations

from itertools import cycle
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

COLORS = {"kru": "tab:blue", "lstm_kru": "tab:purple", "lstm": "tab:green", "rnn": "tab:red", "urnn": "tab:orange",
          "fcurnn": "tab:brown", "eurnn": "tab:pink", "exprnn": "tab:olive"}


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


def plot_setting(setting: str, rows, path: Path) -> Path:
    """One PNG, in the paper's style: per row, the validation loss averaged over its runs (seeds) with a band
    from their min to max, the training loss averaged as a thin line of the same colour, and the memoryless
    baseline of the loss as a dashed line."""
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
        curves = [read_scalars(run.dir) for run in row.runs]
        steps, train, _, _ = mean_curve(curves, "train/loss")
        ax.plot(steps, train, color=color, lw=0.7, alpha=0.5)
        steps, val, low, high = mean_curve(curves, "val/loss")
        ax.plot(steps, val, color=color, marker="o", ms=2.5, lw=1.4, label=label)
        if n > 1:
            ax.fill_between(steps, low, high, color=color, alpha=0.2, lw=0)
        values = [*train, *low, *high]
        lowest = min([lowest, *(v for v in values if v > 0)])
        highest = max([highest, *values])
    baseline = rows[0].runs[0].results["baseline"]["loss"]
    ax.axhline(baseline, color="black", ls="--", lw=1.2, label=f"memoryless baseline {baseline:.4g}")
    if highest > 0 and highest / min(lowest, baseline) > 30:  # losses spanning decades (copy, adding) read on a log axis
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per step; the task's training loss)")
    ax.set_title(f"{setting}: validation loss (band: min–max over seeds), training loss thin", fontsize=10)
    fig.legend(loc="outside lower center", ncols=2, fontsize=7)  # below the axes: hides no curve
    fig.savefig(path, dpi=110)
    return path


def plot_settings(rows, folder: Path, stem: str) -> dict[str, Path]:
    """A plot per setting of `rows`, written as folder/<stem>_<setting>.png; returns {setting: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    settings: dict[str, list] = {}
    for row in rows:
        settings.setdefault(row.setting, []).append(row)
    return {setting: plot_setting(setting, group, folder / f"{stem}_{setting}.png") for setting, group in settings.items()}
