"""`krubench-report RUN_DIRS…`: collect the finished runs under the given folders, group them by configuration
(runs differing only in seed form a row), and print mean ± std over seeds beside the paper's numbers (Markdown
or CSV), with a learning-curve plot per setting (PNG) next to the table.

A run is a folder holding results.json (written when it finished) and status.json; runs that failed or
never finished are skipped and listed. The paper's numbers live in paper_numbers.yaml beside this file.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..runtime import rundir
from ..config import INCIDENTAL_KEYS, flatten
from ..runtime.files import read_json_object
from ..models import MODELS
from ..runtime.results import RESULTS, STATUS
from .migrate import needs_migration

PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.yaml")
MODEL_ORDER = tuple(MODELS)  # a model added to MODELS is listed without touching this file
#: config keys that do not change what a run measures: runs differing only in these are seeds of one row
INCIDENTAL = ("seed", *INCIDENTAL_KEYS)
#: the groups whose differences a row's variant names first
LISTED_FIRST = ("trainer.", "schedule.")
FORMATS = ("md", "csv", "paper-csv")
#: --out FILE with these lines: only what stands between them is rewritten (a hand-written RESULTS.md around it)
BEGIN, END = "<!-- krubench-report: begin -->", "<!-- krubench-report: end -->"


def load_paper_numbers(path: Path = PAPER_NUMBERS) -> dict:
    return yaml.safe_load(Path(path).read_text())


@dataclass
class Run:
    dir: Path
    results: dict

    @property
    def config(self) -> dict:
        return self.results["config"]


def find_runs(roots) -> tuple[list[Run], list[tuple[Path, str]]]:
    """The finished runs under `roots` (folders searched recursively), and (folder, why) for the others,
    damaged ones included: one unreadable file never stops the report."""
    folders = set()
    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is not a folder: pass run folders or folders holding them "
                                    "(e.g. outputs/ or multirun/)")
        for name in (RESULTS, STATUS):
            folders |= {p.parent for p in root.rglob(name)}
    runs, skipped = [], []
    for folder in sorted(folders):
        try:
            results = finished_results(folder)
        except ValueError as e:
            skipped.append((folder, str(e)))
        else:
            runs.append(Run(folder, results))
    return runs, skipped


#: what the table reads from a results.json, as key paths and their types ("{metric}": the run's own metric)
STRING, INTEGER, NUMBER = (str,), (int,), (int, float)
KIND_NAMES = {STRING: "a string", INTEGER: "an integer", NUMBER: "a number"}
RESULTS_FIELDS = ((("task",), STRING), (("model",), STRING), (("metric",), STRING), (("config", "task", "name"), STRING),
                  (("config", "model", "hidden_size"), INTEGER), (("config", "trainer", "steps"), INTEGER),
                  (("params", "recurrent"), INTEGER), (("params", "total"), INTEGER),
                  (("final_val", "{metric}"), NUMBER), (("baseline", "{metric}"), NUMBER))


def finished_results(folder: Path) -> dict:
    """The results.json of a finished run in `folder`. Raises ValueError saying why the folder is no such run:
    not finished (its status, or died), or a status.json or results.json that is damaged."""
    status = read_json_object(folder / STATUS) if (folder / STATUS).exists() else {"status": "ok"}
    if not isinstance(status.get("status"), str):
        raise ValueError(f"{folder / STATUS} has no status string (damaged?)")
    if status["status"] == "running" and (pid := rundir.dead_holder(folder)) is not None:
        raise ValueError(f"died: status.json says running, but its process (pid {pid}) has ended "
                         "without a word (killed?); rerun it to resume from its last checkpoint")
    if status["status"] != "ok":
        raise ValueError(status["status"] + (f": {status['error']}" if "error" in status else ""))
    if not (folder / RESULTS).exists():
        raise ValueError("no results.json")
    results = read_json_object(folder / RESULTS)
    for keys, kind in RESULTS_FIELDS:
        node = results
        for key in keys:
            node = node.get(key.format(metric=results.get("metric"))) if isinstance(node, dict) else None
        if not isinstance(node, kind) or isinstance(node, bool):
            raise ValueError(f"{folder / RESULTS} is damaged: {'.'.join(keys).format(metric=results.get('metric'))} "
                             f"is {node!r}, not {KIND_NAMES[kind]}")
    if needs_migration(results):
        raise ValueError(f"written by an earlier krubench: `python -m krubench.report.migrate {folder}` rewrites its "
                         "results.json in today's form (once)")
    return results


def identity(config: dict) -> dict:
    """The flattened config without its INCIDENTAL keys, the LISTED_FIRST groups' keys first (the order a row's
    variant names them in): runs with equal identities are seeds of one row."""
    flat = flatten(config)
    flat = {**{k: v for k, v in flat.items() if k.startswith(LISTED_FIRST)}, **flat}
    return {k: v for k, v in flat.items() if not k.startswith(INCIDENTAL)}


@dataclass
class Row:
    """One table row: the runs of one configuration, differing only in seed (and INCIDENTAL keys)."""
    setting: str
    model: str
    hidden_size: int
    recurrent: int
    total: int
    steps: int
    metric: str
    split: str
    config: dict
    runs: list[Run] = field(default_factory=list)
    paper: dict | None = None
    variant: str = ""  # key=value pairs telling this row from the other rows of its setting and model

    @property
    def values(self) -> list[float]:
        return [r.results[self.split][self.metric] for r in self.runs]

    @property
    def baseline(self) -> float:
        """The mean over the row's runs: adding's differs by seed (each validation set has its own)."""
        return statistics.fmean(r.results["baseline"][self.metric] for r in self.runs)

    @property
    def unit(self) -> str:
        return unit(self.runs[0].results["task"], self.metric)

    @property
    def label(self) -> str:
        return f"{self.model} ({self.variant})" if self.variant else self.model

    @property
    def seeds(self) -> int:
        """Distinct seeds among the runs (fewer than the runs when a seed was run twice)."""
        return len({repr(r.config.get("seed")) for r in self.runs})


def unit(task: str, metric: str) -> str:
    """The unit of `metric` as task `task` reports it (the task's `units`), e.g. bits per time step."""
    from ..tasks import TASKS

    return TASKS[task].units.get(metric, "") if task in TASKS else ""


def set_variants(rows: list[Row]) -> None:
    """Label each row by the config values in which it differs from the other rows of its setting and model: a
    key whose values differ is named where a row leaves the value most rows share (a sweep's rows name only their
    own lever), and in every row when no value is the most common."""
    families: dict[tuple, list[Row]] = {}
    for row in rows:
        families.setdefault((row.setting, row.model), []).append(row)
    for family in families.values():
        keys = dict.fromkeys(k for row in family for k in row.config)  # union, in config order
        common = {}  # key -> the value most rows share, for the keys whose values differ and have one
        for k in keys:
            counts = Counter(repr(row.config.get(k)) for row in family)
            if len(counts) > 1:
                (top, n), (_, second) = counts.most_common(2)
                common[k] = top if n > second else None
        for row in family:
            row.variant = ", ".join(f"{k}={row.config.get(k)}" for k, top in common.items()
                                    if repr(row.config.get(k)) != top)


def group(runs: list[Run], paper: dict) -> list[Row]:
    """A row per configuration, ordered as the settings in the paper-numbers file (others after), models as
    MODEL_ORDER, then by N, steps and variant."""
    rows: dict[tuple, Row] = {}
    for run in runs:
        r = run.results
        setting = r["setting"]
        metric = paper.get(setting, {}).get("metric", r["metric"])
        split = "test" if "test" in r else "final_val"
        config = {k: v for k, v in identity(run.config).items() if v is not None}  # None: as a key it predates
        key = (setting, r["model"], r["config"]["model"]["hidden_size"], r["params"]["recurrent"],
               r["params"]["total"], r["config"]["trainer"]["steps"], metric, split)
        full = (*key, repr(sorted(config.items())))  # repr: config values may be lists (unhashable)
        if full not in rows:
            rows[full] = Row(*key, config, paper=paper_number(paper.get(setting, {}), r["model"], key[2], split))
        rows[full].runs.append(run)
    set_variants(list(rows.values()))
    order = list(paper)
    return sorted(rows.values(), key=lambda row: (
        order.index(row.setting) if row.setting in order else len(order), row.setting,
        MODEL_ORDER.index(row.model) if row.model in MODEL_ORDER else len(MODEL_ORDER), row.hidden_size, row.steps,
        row.variant))


def paper_number(entry: dict, model: str, hidden_size: int, split: str) -> dict | None:
    """The number the all-runs table sets beside a row: the paper's own row of this model and N (its test cell),
    else another paper's number for the model (`peers`)."""
    paper = entry.get("paper", {})
    for spec in paper.get("rows", []):
        if spec["model"] == model and spec.get("n", hidden_size) == hidden_size:
            value = spec.get("test") if split == "test" else None
            return {"value": value, "verified": paper["verified"],
                    "source": f"{paper['source']}, {spec.get('label', model)}" + (f" n={spec['n']}" if "n" in spec else "")
                    + ("" if value is not None else " (see its table above)")}
    return entry.get("peers", {}).get(model)


def paper_rows(paper: dict, runs: list[Run]):
    """(setting, spec, rows, unit) for each of the KRU paper's tables and figures: its rows beside our runs of each
    row's preset (paper_tables)."""
    from . import paper_tables
    from .plots import read_scalars
    from ..tasks import TASKS

    for setting, entry in paper.items():
        if "paper" not in entry:
            continue
        spec = {**entry["paper"], "metric": entry["metric"]}
        if "figure" in spec:
            yield setting, spec, paper_tables.figure_rows(setting, spec, runs, identity, read_scalars), ""
        else:
            task = next((r.results["task"] for r in runs if r.results["setting"] == setting), None)
            higher = TASKS[task].higher_is_better if task in TASKS else spec["metric"] == "accuracy"
            yield (setting, spec, paper_tables.table_rows(setting, spec, runs, identity, higher),
                   unit(task, spec["metric"]) if task else "")


def paper_sections(paper: dict, runs: list[Run]) -> list[str]:
    """The KRU paper's tables and figures, row by row beside our runs of each row's preset, as Markdown."""
    from . import paper_tables

    lines = []
    for setting, spec, rows, unit_ in paper_rows(paper, runs):
        title = f"{setting}: {spec['source']}"
        lines += ["", *(paper_tables.figure_markdown(title, spec, rows) if "figure" in spec
                        else paper_tables.table_markdown(title, spec, rows, unit_))]
    return lines


def paper_csv(paper: dict, runs: list[Run]) -> str:
    """The same as CSV, a line per cell: a table's valid/test/train columns; a figure's value at the end of its
    x-axis (against the paper's level), our memoryless baseline and each run's first validation below the ≈0 level
    (in the figure's unit, against where the paper reached it)."""
    from . import paper_tables

    fields = ["setting", "source", "model", "n", "runs", "column", "ours", "paper", "ours_minus_paper", "verdict",
              "note"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for setting, spec, rows, _ in paper_rows(paper, runs):
        for row in rows:
            if "figure" in spec:
                firsts, reach = row.cells.get("reached", ([], None))
                level = {"zero": "≈0", "plateau": "plateau", None: None}[row.spec.get("level")]
                cells = {"end": (row.cells.get("end", (None,))[0], level),
                         "baseline": (row.cells.get("baseline", (None,))[0], None),
                         "first_below_zero_level": (paper_tables.reached_at(firsts, spec["figure"]["samples_per_step"])
                                                    or None, reach)}
            else:
                cells = row.cells
            for column, (ours, theirs) in cells.items():
                numbers = isinstance(ours, float) and isinstance(theirs, float)
                writer.writerow({"setting": setting, "source": spec["source"], "model": row.label,
                                 "n": row.spec.get("n", ""), "runs": len(row.runs), "column": column,
                                 "ours": "" if ours is None else ours, "paper": "" if theirs is None else theirs,
                                 "ours_minus_paper": ours - theirs if numbers else "", "verdict": row.verdict,
                                 "note": row.note})
    return out.getvalue()


def paper_preset_runs(paper: dict, runs: list[Run]) -> set[Path]:
    """The folders of the runs that fill a row of the paper's own tables and figures (runs of its presets)."""
    from .paper_tables import runs_of_preset

    return {run.dir for entry in paper.values() for spec in (entry.get("paper") or {}).get("rows", [])
            for run in runs_of_preset(runs, spec.get("preset"), identity)}


def splice(old: str, text: str) -> str:
    """`old` with what stands between its report markers replaced by `text` (all of it if it has no markers)."""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        return f"{head}{BEGIN}\n{text}{END}{rest.split(END, 1)[1]}"
    return text


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


def summary(row: Row) -> dict:
    """The numbers of a row, as printed."""
    values = row.values
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    paper_value = row.paper["value"] if row.paper else None
    walls = [r.results["wall_time_s"] for r in row.runs if "wall_time_s" in r.results]  # over resumes too
    return {
        "setting": row.setting, "model": row.model, "variant": row.variant, "hidden_size": row.hidden_size,
        "recurrent_params": row.recurrent, "total_params": row.total, "steps": row.steps,
        "metric": f"{'test' if row.split == 'test' else 'val'} {row.metric}", "unit": row.unit, "mean": mean, "std": std,
        "n": len(values), "baseline": row.baseline, "paper": paper_value,
        "paper_source": row.paper["source"] if row.paper else "",
        "verified": ("verified" if row.paper["verified"] else "unverified") if row.paper else "",
        "difference": None if paper_value is None else mean - paper_value,
        "wall_time_s": statistics.fmean(walls) if walls else None,
    }


def markdown(rows: list[Row], skipped: list[tuple[Path, str]], plots: dict[str, str], paper: list[str] = ()) -> str:
    """The paper's tables and figures beside ours (`paper`, paper_sections' lines), the table of every run, notes on
    repeated seeds, links to the plots ({setting: relative path}) and the skipped runs."""
    lines = ["## The paper's tables and figures, row by row", *paper, "", "## Every configuration run", ""] if paper else []
    head = ["setting", "model", "N", "recurrent params", "total params", "steps", "metric", "ours: mean ± std (n)",
            "memoryless baseline", "paper", "ours − paper", "paper's source", "wall time a run"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        s = summary(row)
        ours = f"{fmt(s['mean'])} ± {fmt(s['std'])} ({s['n']})" if s["n"] > 1 else f"{fmt(s['mean'])} (1)"
        paper = "—" if s["paper"] is None else f"{fmt(s['paper'])} ({s['verified']})"
        source = f"{s['paper_source']} ({s['verified']})" if row.paper and s["paper"] is None else s["paper_source"] or "—"
        metric = f"{s['metric']} ({s['unit']})" if s["unit"] else s["metric"]
        cells = [s["setting"], row.label, s["hidden_size"], f"{s['recurrent_params']:,}", f"{s['total_params']:,}",
                 f"{s['steps']:,}", metric, ours, fmt(s["baseline"]), paper, fmt(s["difference"]), source,
                 duration(s["wall_time_s"])]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    notes = [f"- {r.setting} {r.label} N={r.hidden_size}: {len(r.runs)} runs but only {r.seeds} distinct seeds"
             for r in rows if r.seeds < len(r.runs)]
    if notes:
        lines += ["", "Rows that repeat a seed (their std is not over independent seeds):", *notes]
    if plots:
        metrics = {row.setting: row.metric for row in rows}
        lines += ["", *(f"![{title}: validation {metrics[title.split(',')[0]]} vs memoryless baseline]({path})"
                        for title, path in plots.items())]
    if skipped:
        lines += ["", f"Skipped {len(skipped)} run(s) that did not finish:",
                  *(f"- `{folder}`: {why}" for folder, why in skipped)]
    return "\n".join(lines) + "\n"


def csv_table(rows: list[Row]) -> str:
    out = io.StringIO()
    fields = list(summary(rows[0])) if rows else []
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in summary(row).items()})
    return out.getvalue()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="krubench-report", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", type=Path, help="run folders, or folders holding them (searched recursively)")
    p.add_argument("--format", default="md", help="md (Markdown: the paper's tables and figures beside ours, then "
                   "every configuration run; default), csv (every configuration run) or paper-csv (the paper's tables "
                   "and figures beside ours, a line per cell)")
    p.add_argument("--out", type=Path, help="write the table to this file (plots go beside it) instead of stdout")
    p.add_argument("--plots", type=Path, help="folder for the PNG plots (default: beside --out; none without --out)")
    p.add_argument("--paper-numbers", type=Path, default=PAPER_NUMBERS, help="the paper's numbers (YAML)")
    args = p.parse_args(argv)
    if args.format not in FORMATS:
        p.error(f"--format {args.format} is not supported: use one of {', '.join(FORMATS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    runs, skipped = find_runs(args.run_dirs)
    if not runs:
        print(f"krubench-report: no finished run (results.json with status ok) under "
              f"{', '.join(map(str, args.run_dirs))}; {len(skipped)} unfinished", file=sys.stderr)
        for folder, why in skipped:
            print(f"  skipped {folder}: {why}", file=sys.stderr)
        return 1
    paper = load_paper_numbers(args.paper_numbers)
    rows = group(runs, paper)
    plot_dir = args.plots or (args.out.parent if args.out else None)
    plots = {}
    if plot_dir is not None:
        from .plots import plot_settings  # matplotlib and TensorBoard's reader load only when plotting

        stem = args.out.stem if args.out else "report"
        in_samples = {setting for setting, entry in paper.items()  # the paper's figure counts samples, not steps
                      if (entry.get("paper") or {}).get("figure", {}).get("samples_per_step", 1) > 1}
        plots = plot_settings(rows, Path(plot_dir), stem, in_samples, paper_preset_runs(paper, runs))
    if args.format == "md":
        base = args.out.parent if args.out else Path.cwd()  # plot links relative to the table's folder
        text = markdown(rows, skipped, {k: os.path.relpath(v, base) for k, v in plots.items()},
                        paper_sections(paper, runs))
    else:
        text = csv_table(rows) if args.format == "csv" else paper_csv(paper, runs)
        for folder, why in skipped:
            print(f"skipped {folder}: {why}", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(splice(args.out.read_text(), text) if args.out.exists() else text)
        print(f"wrote {args.out}" + (f" and {len(plots)} plot(s) in {plot_dir}" if plots else ""), file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
