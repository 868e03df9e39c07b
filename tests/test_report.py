"""krubench-report on the tiny committed runs in tests/data/runs (made by tests/data/make_runs.py): finished
runs grouped by configuration beside the paper's numbers, unfinished ones listed, CSV, and plots."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from krubench.report import plots as plots_module
from krubench.report.plots import draw_setting, plot_setting, plot_settings, read_scalars
from krubench.config import setting_key
from krubench.report.table import find_runs, group, load_paper_numbers, main, summary

RUNS = Path(__file__).resolve().parent / "data" / "runs"
COPY_KRU = RUNS / "sweep" / "0_copy_kru_seed=0"


def copy_run(dst: Path, src: Path = COPY_KRU, **changes) -> Path:
    """A copy of the committed run `src` whose config has the given flattened keys changed, e.g. seed=1 or
    optim__lr=0.01 (__ for the dot)."""
    shutil.copytree(src, dst)
    results = json.loads((dst / "results.json").read_text())
    for key, value in changes.items():
        *parents, last = key.split("__")
        node = results["config"]
        for part in parents:
            node = node[part]
        node[last] = value
    (dst / "results.json").write_text(json.dumps(results))
    return dst


def test_find_runs_skips_and_lists_unfinished_ones():
    runs, skipped = find_runs([RUNS])
    assert len(runs) == 5
    assert {folder.name: why for folder, why in skipped} == {
        "3_copy_rnn_seed=0": "failed: NonFiniteLoss: the loss became non-finite at step 3",
        "4_copy_rnn_seed=1": "running"}


DAMAGES = {
    "results_not_json": ("results.json", "{"), "results_empty": ("results.json", ""),
    "results_a_list": ("results.json", "[]"), "no_final_val": ("results.json", {"final_val": None}),
    "params_null": ("results.json", {"params": None}), "metric_missing": ("results.json", {"final_val": {}}),
    "status_garbage": ("status.json", "\x00garbage"), "status_a_string": ("status.json", '"ok"'),
    "results_a_folder": ("results.json", None),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_run_folder_is_skipped_with_one_line_naming_it(tmp_path, capsys, damage):
    shutil.copytree(RUNS, tmp_path / "runs")
    bad = copy_run(tmp_path / "runs" / "bad")
    name, change = DAMAGES[damage]
    if change is None:
        (bad / name).unlink()
        (bad / name / "x").mkdir(parents=True)
    elif isinstance(change, dict):
        (bad / name).write_text(json.dumps({**json.loads((bad / name).read_text()), **change}))
    else:
        (bad / name).write_text(change)
    assert main([str(tmp_path / "runs"), "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert len(list(csv.DictReader(io.StringIO(out)))) == 4  # the table of the other runs
    lines = [line for line in err.splitlines() if str(bad) in line]
    assert len(lines) == 1 and "Traceback" not in err, err


def test_a_running_run_whose_process_is_gone_is_listed_as_died(tmp_path):
    """A run killed without a word (SIGKILL, a scheduler's hard limit) leaves status.json at running and its
    lock file naming its pid; the report tells it from a live run by that pid (this host only)."""
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)  # a pid that has just ended
    here = socket.gethostname()
    for name, pid, host in (("dead", dead, here), ("alive", os.getpid(), here), ("elsewhere", dead, "another-host")):
        shutil.copytree(RUNS / "sweep" / "4_copy_rnn_seed=1", tmp_path / name)
        (tmp_path / name / ".lock").write_text(f"pid {pid} on host {host} since 2026-11-30T10:00:00+0000\n")
    why = {folder.name: why for folder, why in find_runs([tmp_path])[1]}
    assert why["alive"] == why["elsewhere"] == "running"
    assert why["dead"].startswith(f"died: status.json says running, but its process (pid {dead})")


def test_rows_group_seeds_and_carry_the_paper_numbers():
    runs, _ = find_runs([RUNS])
    rows = {(r.setting, r.model): r for r in group(runs, load_paper_numbers())}
    assert list(rows) == [("copy_T1000", "kru"), ("copy_T1000", "lstm"), ("adding_T100", "kru"), ("pixel_mnist", "kru")]
    copy = summary(rows["copy_T1000", "kru"])
    values = [json.loads((RUNS / "sweep" / f"{i}_copy_kru_seed={i}" / "results.json").read_text())["final_val"]["loss_bits"]
              for i in (0, 1)]
    assert copy["n"] == 2 and copy["mean"] == pytest.approx(sum(values) / 2)
    assert copy["metric"] == "val loss_bits" and copy["baseline"] == pytest.approx(10 * 3 / 1020)  # log2(8) = 3 bits
    assert copy["paper"] is None and copy["verified"] == "verified"  # Fig. 1: a curve, in its own table above
    mnist = summary(rows["pixel_mnist", "kru"])
    test = json.loads((RUNS / "pixel_mnist_kru" / "results.json").read_text())["test"]["accuracy"]
    assert mnist["metric"] == "test accuracy" and mnist["mean"] == pytest.approx(test) and mnist["std"] is None
    assert mnist["paper"] == 0.964 and mnist["verified"] == "verified"
    assert mnist["difference"] == pytest.approx(test - 0.964)
    assert (mnist["hidden_size"], mnist["recurrent_params"]) == (512, 72)


def test_runs_differing_only_in_seed_form_one_row(tmp_path):
    copy_run(tmp_path / "a", seed=0)
    copy_run(tmp_path / "b", seed=7, trainer__threads=2)  # threads are incidental too
    [row] = group(find_runs([tmp_path])[0], load_paper_numbers())
    assert summary(row)["n"] == 2 and row.variant == "" and row.seeds == 2


def earlier_form(run: Path) -> Path:
    """`run`'s results.json as an earlier krubench wrote it: before `setting`, schedules, early stopping and the CSV
    log, with the unitary penalty under model.penalty."""
    results = json.loads((run / "results.json").read_text())
    config = results["config"]
    del results["setting"], config["schedule"]
    for key in ("early_stop_patience", "early_stop_min_delta", "csv_log"):
        del config["trainer"][key]
    config["model"]["penalty"] = config["trainer"].pop("unitary_penalty")
    (run / "results.json").write_text(json.dumps(results))
    return run


def test_a_run_in_an_earlier_form_is_skipped_naming_the_migration_and_migrated_shares_the_row(tmp_path, capsys):
    from krubench.report import migrate

    today = copy_run(tmp_path / "today", seed=1)
    old = earlier_form(copy_run(tmp_path / "old", seed=0))
    runs, skipped = find_runs([tmp_path])
    assert [r.dir for r in runs] == [today]
    assert skipped == [(old, f"written by an earlier krubench: `python -m krubench.report.migrate {old}` rewrites "
                             "its results.json in today's form (once)")]
    migrate.main([str(tmp_path)])
    assert capsys.readouterr().out == f"{old / 'results.json'}\n"  # the run in today's form is left as it is
    assert json.loads((old / "results.json").read_text()) == {
        **json.loads((today / "results.json").read_text()), "seed": 0,
        "config": {**json.loads((today / "results.json").read_text())["config"], "seed": 0}}
    [row] = group(find_runs([tmp_path])[0], load_paper_numbers())
    assert row.seeds == 2 and row.variant == ""


def test_runs_differing_in_config_form_rows_labelled_by_the_difference(tmp_path, capsys):
    copy_run(tmp_path / "a", optim__lr=0.001)
    copy_run(tmp_path / "b", optim__lr=0.01, seed=1)
    copy_run(tmp_path / "c", optim__lr=0.01, seed=2)
    copy_run(tmp_path / "d", RUNS / "sweep" / "2_copy_lstm_seed=0", optim__lr=0.5)  # alone for its model: no variant
    assert main([str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "| copy_T1000 | kru (optim.lr=0.001) | 16 |" in text and "| copy_T1000 | kru (optim.lr=0.01) | 16 |" in text
    assert "| copy_T1000 | lstm | " in text and "Rows that" not in text
    assert main([str(tmp_path), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["model"], r["variant"], r["n"]) for r in rows] == [
        ("kru", "optim.lr=0.001", "1"), ("kru", "optim.lr=0.01", "2"), ("lstm", "", "1")]


def test_a_sweeps_rows_name_only_their_own_lever(tmp_path, capsys):
    """Beside a base, each lever's row names the key it moved, not every key that some row of the sweep moved."""
    copy_run(tmp_path / "base", optim__lr=0.001)
    copy_run(tmp_path / "lr", optim__lr=0.01)
    copy_run(tmp_path / "clip", optim__lr=0.001, trainer__grad_clip=0.0)
    copy_run(tmp_path / "alpha", optim__lr=0.001, optim__alpha=0.9)
    assert main([str(tmp_path), "--format", "csv"]) == 0
    variants = sorted(r["variant"] for r in csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert variants == ["", "optim.alpha=0.9", "optim.lr=0.01", "trainer.grad_clip=0.0"]


def test_a_repeated_seed_is_noted(tmp_path, capsys):
    copy_run(tmp_path / "a", seed=3)
    copy_run(tmp_path / "b", seed=3)
    assert main([str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "(2) |" in text and "- copy_T1000 kru N=16: 2 runs but only 1 distinct seeds" in text


def test_a_resumed_runs_scalars_are_its_last_process_and_read_without_a_warning(tmp_path, caplog):
    """A run logs steps 1–8, is resumed from its step-5 checkpoint (tb.open_writer's purge) and logs 6–10 again."""
    from krubench.runtime import tb
    from krubench.tasks.copy import CopyTask

    task = CopyTask(T=5, val_size=4)
    for start_step, values in ((0, {s: 1.0 for s in range(1, 9)}), (5, {s: 2.0 for s in range(6, 11)})):
        with tb.open_writer(tmp_path, start_step, task) as w:
            for step, v in values.items():
                w.add_scalar("val/loss", v, step)
    steps, values = read_scalars(tmp_path)["val/loss"]
    assert steps == list(range(1, 11)) and values == [1.0] * 5 + [2.0] * 5
    assert "out of order" not in caplog.text


def test_plot_of_a_row_of_seeds_draws_a_band(tmp_path):
    copy_run(tmp_path / "runs" / "a", seed=0)
    copy_run(tmp_path / "runs" / "b", RUNS / "sweep" / "1_copy_kru_seed=1")
    [row] = group(find_runs([tmp_path / "runs"])[0], load_paper_numbers())
    assert len(row.runs) == 2
    png = plot_setting(row.setting, [row], tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_settings_plot_draws_the_paper_presets_runs_and_the_other_rows_go_to_a_second_plot(tmp_path, monkeypatch):
    runs, _ = find_runs([RUNS])
    rows = [r for r in group(runs, load_paper_numbers()) if r.setting == "copy_T1000"]
    assert {r.model for r in rows} == {"kru", "lstm"}
    kru = next(r for r in rows if r.model == "kru")
    plots = plot_settings(rows, tmp_path, "R", paper_runs={run.dir for run in kru.runs})
    assert plots == {"copy_T1000": tmp_path / "R_copy_T1000.png",
                     "copy_T1000, other set-ups": tmp_path / "R_copy_T1000_more.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots.values())
    drawn = {}
    monkeypatch.setattr(plots_module, "plot_setting", lambda title, rows, path, _: drawn.setdefault(
        title, sorted(r.model for r in rows)) and path)
    plot_settings(rows, tmp_path, "R", paper_runs={run.dir for run in kru.runs})
    assert drawn == {"copy_T1000": ["kru"], "copy_T1000, other set-ups": ["lstm"]}
    drawn.clear()  # without runs of the paper's presets: one plot of every row
    assert list(plot_settings(rows, tmp_path, "R")) == ["copy_T1000"]
    assert drawn == {"copy_T1000": ["kru", "lstm"]}


def test_plots_draw_the_tables_metric_in_its_unit_with_the_baseline_in_that_unit():
    runs, _ = find_runs([RUNS])
    rows = {(r.setting, r.model): r for r in group(runs, load_paper_numbers())}
    copy = rows["copy_T1000", "kru"]
    ax = draw_setting("copy_T1000", [copy]).axes[0]
    assert ax.get_ylabel() == "loss_bits (bits per time step)" and copy.unit == "bits per time step"
    baseline, = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert baseline.get_ydata()[0] == pytest.approx(10 * 3 / 1020)  # bits, as the table's baseline
    val = [line for line in ax.get_lines() if line.get_marker() == "o"][0]
    bits = [read_scalars(run.dir, ("val/loss_bits",))["val/loss_bits"][1] for run in copy.runs]
    assert list(val.get_ydata()) == pytest.approx([sum(v) / len(v) for v in zip(*bits)])
    train = [line for line in ax.get_lines() if line.get_marker() != "o" and line is not baseline][0]
    nats = [read_scalars(run.dir)["train/loss"][1] for run in copy.runs]
    assert list(train.get_ydata()) == pytest.approx([sum(v) / len(v) / math.log(2) for v in zip(*nats)])
    fig = draw_setting("pixel_mnist", [rows["pixel_mnist", "kru"]])
    ax = fig.axes[0]
    assert ax.get_ylabel() == "accuracy (fraction correct)" and "test split" in ax.get_title()
    assert len(ax.get_lines()) == 2  # accuracy and its baseline: no training loss in nats on an accuracy axis
    assert ax.get_legend() is None and fig.legends  # the legend is the figure's, below the axes


def test_a_plot_counts_training_samples_where_the_papers_figure_does():
    """Fig. 2 (adding) is drawn over samples seen: the x values are the steps times the row's batch size."""
    runs, _ = find_runs([RUNS])
    copy = {(r.setting, r.model): r for r in group(runs, load_paper_numbers())}["copy_T1000", "kru"]
    steps = list(draw_setting("copy_T1000", [copy]).axes[0].get_lines()[1].get_xdata())
    ax = draw_setting("copy_T1000", [copy], in_samples=True).axes[0]
    assert ax.get_xlabel() == "training samples seen"
    batch = copy.config["task.batch_size"]
    assert batch > 1 and list(ax.get_lines()[1].get_xdata()) == [s * batch for s in steps]


def test_the_table_names_the_metrics_unit(capsys):
    assert main([str(RUNS)]) == 0
    text = capsys.readouterr().out
    assert "| val loss_bits (bits per time step) |" in text and "| test accuracy (fraction correct) |" in text
    assert "| val loss (MSE) |" in text


def test_setting_key_names_the_presets():
    assert setting_key({"name": "copy", "T": 2000}) == "copy_T2000"
    assert setting_key({"name": "adding", "T": 100, "placement": "uniform"}) == "adding_T100_uniform"
    assert setting_key({"name": "pixel_mnist", "permute": True}) == "permuted_mnist"
    assert setting_key({"name": "music", "dataset": "jsb"}) == "music_jsb"


def test_every_paper_number_has_a_source_and_a_verified_flag_and_every_paper_row_a_preset_or_a_reason():
    presets = {p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "experiment" / "paper").glob("*.yaml")}
    for setting, entry in load_paper_numbers().items():
        assert entry["metric"], setting
        for model, number in entry.get("peers", {}).items():
            assert set(number) == {"value", "source", "verified"}, (setting, model)
            assert number["source"] and isinstance(number["verified"], bool), (setting, model)
        if "paper" not in entry:
            continue
        paper = entry["paper"]
        assert paper["source"] and paper["verified"] is True, setting
        for row in paper["rows"]:
            assert row.get("preset") in presets or row.get("why"), (setting, row)  # runnable, or says why not
            if "figure" in paper:
                assert row["level"] in ("zero", "plateau", None), (setting, row)
            else:
                assert all(isinstance(row[c], float) for c in paper["cells"]), (setting, row)
                assert paper["verdict_on"] in paper["cells"]


def test_every_paper_row_of_results_md_not_run_says_the_time_it_needs_or_why():
    """The issue's bar for RESULTS.md: a cell without our number says what it would take (`estimate` or `why`)."""
    text = (Path(__file__).resolve().parents[1] / "RESULTS.md").read_text()
    not_run = [line for line in text.splitlines() if line.startswith("|") and "| not run |" in line]
    assert not_run  # the tables are there (rows not run yet: MNIST peers, PTB)
    for line in not_run:
        note = line.rstrip(" |").rsplit("|", 1)[1]
        assert "needs ≈" in note or "not a krubench model" in note or "no preset" in note, line


def test_markdown_table_plots_and_skipped_runs(tmp_path, capsys):
    out = tmp_path / "RESULTS.md"
    assert main([str(RUNS), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("## The paper's tables and figures, row by row")
    assert "\n| setting | model | N | recurrent params | total params | steps | metric |" in text
    assert "| pixel_mnist | kru | 512 | 72 | 12,882 |" in text and "0.964 (verified)" in text
    assert "Skipped 2 run(s)" in text and "3_copy_rnn_seed=0`: failed: NonFiniteLoss" in text
    for setting in ("copy_T1000", "adding_T100", "pixel_mnist"):
        png = tmp_path / f"RESULTS_{setting}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert f"]({png.name})" in text


def test_csv_to_stdout(capsys):
    assert main([str(RUNS), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["setting"], r["model"], r["n"]) for r in rows] == [
        ("copy_T1000", "kru", "2"), ("copy_T1000", "lstm", "1"), ("adding_T100", "kru", "1"), ("pixel_mnist", "kru", "1")]
    assert rows[3]["paper"] == "0.964" and rows[3]["verified"] == "verified" and rows[0]["paper"] == ""


def test_the_papers_tables_as_csv_a_line_per_cell(capsys):
    assert main([str(RUNS), "--format", "paper-csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    kru = {r["column"]: r for r in rows if r["setting"] == "pixel_mnist" and r["model"] == "KRU"}
    assert set(kru) == {"valid", "test"} and kru["test"]["paper"] == "0.964" and kru["valid"]["paper"] == "0.966"
    assert kru["test"]["source"] == "KRU paper Table 2" and kru["test"]["verdict"] in ("reproduced", "not reproduced",
                                                                                      "not run")
    if kru["test"]["ours"]:  # ours − paper where both are numbers
        assert float(kru["test"]["ours_minus_paper"]) == pytest.approx(float(kru["test"]["ours"]) - 0.964)
    adding = {r["column"] for r in rows if r["setting"] == "adding_T100" and r["model"] == "KRU"}
    assert adding == {"end", "baseline", "first_below_zero_level"}
    assert {r["setting"] for r in rows} >= {"copy_T1000", "adding_T750", "ptb_char", "music_jsb", "music_piano"}


def test_bad_format_and_no_runs_are_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(RUNS), "--format", "xlsx"])
    assert "--format xlsx is not supported: use one of md, csv, paper-csv" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 1
    assert "no finished run" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        main([str(tmp_path / "nope")])


def test_curves_are_read_with_tensorboards_reader():
    curves = read_scalars(RUNS / "sweep" / "0_copy_kru_seed=0")
    steps, values = curves["train/loss"]
    assert steps == list(range(1, 7)) and all(v > 0 for v in values)
    assert curves["val/loss"][0] == [2, 4, 6]


def test_a_row_gives_the_mean_wall_time_of_its_runs(tmp_path, capsys):
    """Over its runs that record one (resumed runs count every session: the trainer carries it in last.pt)."""
    for seed, wall in ((0, 600.0), (1, 1800.0), (2, None)):
        dst = copy_run(tmp_path / str(seed), seed=seed)
        results = json.loads((dst / "results.json").read_text())
        if wall is None:
            del results["wall_time_s"]  # a run from before the trainer recorded it
        else:
            results["wall_time_s"] = wall
        (dst / "results.json").write_text(json.dumps(results))
    [row] = group(find_runs([tmp_path])[0], load_paper_numbers())
    assert summary(row)["wall_time_s"] == 1200.0
    assert main([str(tmp_path)]) == 0
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| copy_T1000 | kru |")]
    assert line.endswith("| 20 min |")


@pytest.mark.slow  # a subprocess: the console script as installed
def test_installed_command(tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(RUNS, runs)
    script = Path(sys.executable).parent / "krubench-report"
    cmd = [str(script)] if script.exists() else [shutil.which("krubench-report")]
    proc = subprocess.run([*cmd, str(runs)], capture_output=True, text=True, check=True)
    assert "| copy_T1000 | kru | 16 |" in proc.stdout


def test_peer_rows_stand_beside_their_published_numbers(tmp_path, capsys):
    """A unitary peer's run (issue 14) gets its row, after KRU's, with the peer paper's number and its mark."""
    copy_run(tmp_path / "kru", RUNS / "pixel_mnist_kru")
    for model in ("fcurnn", "urnn"):
        dst = copy_run(tmp_path / model, RUNS / "pixel_mnist_kru", model__name=model)
        results = json.loads((dst / "results.json").read_text())
        (dst / "results.json").write_text(json.dumps({**results, "model": model}))
    rows = [summary(r) for r in group(find_runs([tmp_path])[0], load_paper_numbers())]
    assert [(r["model"], r["paper"], r["verified"]) for r in rows] == [
        ("kru", 0.964, "verified"), ("urnn", 0.975, "verified"), ("fcurnn", 0.969, "verified")]  # Table 2
    assert main([str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "| pixel_mnist | fcurnn | 512 |" in text and "0.969 (verified)" in text and "0.975 (verified)" in text
