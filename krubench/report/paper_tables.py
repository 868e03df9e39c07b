"""The KRU paper's own tables and figures (the `paper:` entries of paper_numbers.yaml), row by row beside our runs
of each row's preset: ours − paper per cell and a verdict per row (reproduced / not reproduced / not run).

A run fills a paper row when its configuration is the row's preset (conf/experiment/paper/<preset>.yaml) up to
seed and incidental keys. Table cells: "valid" is the best-on-validation checkpoint on the whole validation split,
"test" and "train" the same checkpoint on those splits, whole; a run evaluated on a prefix (task.eval_limit) fills
no cell. Figure rows: the validation curve read at the end of the figure's x-axis.
"""
from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass, field
from pathlib import Path

REPRODUCED, NOT_REPRODUCED, NOT_RUN = "reproduced", "not reproduced", "not run"
CELL_SPLITS = {"valid": "val", "test": "test", "train": "train"}  # the paper's column -> results.json split


@functools.cache
def preset_config(name: str) -> dict | None:
    """The config `krubench experiment=paper/<name>` runs, or None if there is no such preset."""
    from hydra import compose, initialize_config_dir

    from ..config import config_dir, register_configs
    from ..train import resolve_config

    if not (Path(config_dir()) / "experiment" / "paper" / f"{name}.yaml").exists():
        return None
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment=paper/{name}"])
    return resolve_config(cfg)  # as a run stores it: the model's own defaults filled in


def runs_of_preset(runs, name: str, identity) -> list:
    """The runs whose identity (report.identity: seed and incidental keys left out) agrees with the preset's on
    every key both have: a run written before a key existed still counts, one with another value does not."""
    preset = preset_config(name) if name else None
    if preset is None:
        return []
    wanted = identity(preset)
    found = []
    for run in runs:
        have = identity(run.config)
        if all(have[k] == wanted[k] for k in have.keys() & wanted.keys()):
            found.append(run)
    return found


def cell(run, name: str, metric: str) -> float | None:
    """Our value of the paper's column `name` for one run; None where the run has none or read a prefix."""
    results = run.results
    if results["config"]["task"].get("eval_limit") is not None:
        return None  # a smoke run: its final evaluations read the first items only
    split = CELL_SPLITS[name]
    if split in results:
        return results[split][metric]
    if split == "val" and results["config"]["task"].get("val_limit") is None:
        return results["best_val"][metric]  # runs from before the final whole-split evaluation: validated on all
    return None


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


@dataclass
class PaperRow:
    setting: str
    spec: dict  # the paper_numbers.yaml row
    runs: list = field(default_factory=list)
    cells: dict = field(default_factory=dict)  # column -> (ours, paper)
    verdict: str = NOT_RUN
    note: str = ""

    @property
    def label(self) -> str:
        return self.spec.get("label", self.spec["model"].upper() if self.spec["model"] in ("kru", "rnn", "lstm")
                             else self.spec["model"])


def table_rows(setting: str, paper: dict, runs, identity, higher_is_better: bool) -> list[PaperRow]:
    """The rows of a paper table (cells valid/test/train) with our runs' means and the verdict on `verdict_on`."""
    metric, rows = paper["metric"], []
    for spec in paper["rows"]:
        row = PaperRow(setting, spec, runs_of_preset(runs, spec.get("preset"), identity))
        for name in paper["cells"]:
            row.cells[name] = (mean(cell(r, name, metric) for r in row.runs), spec.get(name))
        ours, theirs = row.cells[paper["verdict_on"]]
        if not row.runs:
            row.note = spec.get("why") or f"needs {spec.get('estimate', 'time not measured')}"
        elif ours is None:
            row.verdict, row.note = NOT_RUN, f"no whole-split {paper['verdict_on']} value in its runs"
        else:
            shortfall = (theirs - ours) if higher_is_better else (ours - theirs)
            row.verdict = REPRODUCED if shortfall <= paper["tolerance"] else NOT_REPRODUCED
        rows.append(row)
    return rows


def figure_rows(setting: str, paper: dict, runs, identity, read_scalars) -> list[PaperRow]:
    """The rows of a paper figure: each run's validation curve (`figure.tag`) at the end of the figure's x-axis,
    against the memoryless baseline, and the first validation below the "≈0" level."""
    fig = paper["figure"]
    until, zero, plateau = fig["until"], fig["zero_below"], fig["plateau_above"]
    baseline_key = fig["tag"].split("/", 1)[1]
    rows = []
    for spec in paper["rows"]:
        row = PaperRow(setting, spec, runs_of_preset(runs, spec.get("preset"), identity))
        ends, firsts, baselines = [], [], []
        for run in row.runs:
            steps, values = read_scalars(run.dir, (fig["tag"],)).get(fig["tag"], ([], []))
            curve = [(s, v) for s, v in zip(steps, values) if s <= until]
            if not curve:
                continue
            baseline = run.results["baseline"][baseline_key]
            ends.append(curve[-1][1])
            baselines.append(baseline)
            firsts.append(next((s for s, v in curve if v < zero * baseline), None))
        row.cells = {"end": (mean(ends), None), "baseline": (mean(baselines), None)}
        row.cells["reached"] = (firsts, spec.get("reach"))
        if not row.runs:
            row.note = spec.get("why") or f"needs {spec.get('estimate', 'time not measured')}"
        elif not ends:
            row.note = "its runs logged no validation curve"
        elif spec.get("level") is None:
            row.verdict, row.note = "—", "the paper's level is not read off the figure"
        else:
            level, base = mean(ends), mean(baselines)
            ok = level < zero * base if spec["level"] == "zero" else level >= plateau * base
            row.verdict = REPRODUCED if ok else NOT_REPRODUCED
        rows.append(row)
    return rows


def fmt(value) -> str:
    return "—" if value is None else f"{value:.4g}"


def diff(ours, theirs) -> str:
    return "—" if ours is None or theirs is None else f"{ours - theirs:+.3f}"


def counts(row: PaperRow) -> str:
    if not row.runs:
        return "—"
    p = row.runs[0].results["params"]
    return f"{p['total']:,} / {p['recurrent']:,}"


def table_markdown(title: str, paper: dict, rows: list[PaperRow], unit: str) -> list[str]:
    cells = paper["cells"]
    head = ["model", "n", "params, paper (total / recurrent)", "params, ours", "runs"]
    for name in cells:
        head += [f"{name}: ours", f"{name}: paper", "ours − paper"]
    head += ["verdict (on " + paper["verdict_on"] + f", tolerance {paper['tolerance']:g})", "note"]
    lines = [f"### {title}", "", f"{paper['source']}; metric {paper['metric']} ({unit}).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        out = [row.label, row.spec.get("n", "—"), row.spec.get("params", "—"), counts(row), len(row.runs)]
        for name in cells:
            ours, theirs = row.cells[name]
            out += [fmt(ours), fmt(theirs), diff(ours, theirs)]
        out += [f"**{row.verdict}**" if row.verdict == REPRODUCED else row.verdict, row.note or ""]
        lines.append("| " + " | ".join(str(c) for c in out) + " |")
    return lines


def reached_at(firsts: list, per: int) -> str:
    """Each run's first validation below the ≈0 level, in the figure's x unit (steps, or samples where a step
    holds `per` of them)."""
    return ", ".join("never" if s is None else (f"step {s:,}" if per == 1 else f"{s * per // 1000:,}K samples")
                     for s in firsts)


def figure_markdown(title: str, paper: dict, rows: list[PaperRow]) -> list[str]:
    fig = paper["figure"]
    until, per = fig["until"], fig["samples_per_step"]
    x = f"step {until:,}" if per == 1 else f"{until * per // 1000:,}K samples (step {until:,})"
    head = ["model", "runs", f"ours at {x} ({fig['unit']})", "memoryless baseline", "paper's level",
            f"ours: first validation below {fig['zero_below']:g} × baseline", "paper: reached", "verdict", "note"]
    lines = [f"### {title}", "", f"{paper['source']}; validation {fig['tag'].split('/')[1]} in {fig['unit']}: "
             f"≈0 means below {fig['zero_below']:g} × the memoryless baseline, the plateau at least "
             f"{fig['plateau_above']:g} × it.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        firsts, reach = row.cells.get("reached", ([], None))
        where = reached_at(firsts, per) or "—"
        level = {"zero": "≈0", "plateau": "plateau", None: "—"}[row.spec.get("level")]
        out = [row.label, len(row.runs), fmt(row.cells.get("end", (None,))[0]),
               fmt(row.cells.get("baseline", (None,))[0]), level, where, reach or "—",
               f"**{row.verdict}**" if row.verdict == REPRODUCED else row.verdict, row.note or ""]
        lines.append("| " + " | ".join(str(c) for c in out) + " |")
    return lines
