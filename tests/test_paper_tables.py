"""krubench-report's tables of the paper's own rows (paper_tables): runs fill the row of their preset only, cells
read whole-split values, ours − paper per cell, the verdict on the cell the YAML names, figure rows read the
validation curve at the end of the figure's x-axis; --out keeps a hand-written file around its markers."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from krubench.report import paper_tables
from krubench.report.table import BEGIN, END, Run, identity, load_paper_numbers, main, splice

PAPER = load_paper_numbers()


def run(preset: str, seed: int = 0, folder: str = "r", **results) -> Run:
    """A finished run of `preset` (its config as the trainer stores it) with the given results.json entries."""
    config = copy.deepcopy(paper_tables.preset_config(preset))
    config["seed"] = seed
    return Run(Path(folder), {"config": config, "task": config["task"]["name"], "params": {"total": 1, "recurrent": 1},
                              **results})


def spec(setting: str) -> dict:
    return {**PAPER[setting]["paper"], "metric": PAPER[setting]["metric"]}


def test_a_table_row_averages_its_presets_runs_cell_by_cell_and_judges_on_the_named_cell():
    runs = [run("music_jsb_kru", 0, val={"loss": 8.7}, test={"loss": 8.6}, train={"loss": 7.8}, best_val={"loss": 8.7}),
            run("music_jsb_kru", 1, val={"loss": 8.9}, test={"loss": 8.7}, train={"loss": 8.0}, best_val={"loss": 8.9}),
            run("music_jsb_lstm", 0, val={"loss": 9.5}, test={"loss": 9.4}, train={"loss": 9.0}, best_val={"loss": 9.5})]
    rows = {r.spec["model"]: r for r in paper_tables.table_rows("music_jsb", spec("music_jsb"), runs, identity, False)}
    kru = rows["kru"]
    assert len(kru.runs) == 2 and kru.cells["test"] == (pytest.approx(8.65), 8.59)
    assert kru.cells["train"] == (pytest.approx(7.9), 7.90)
    assert kru.verdict == "reproduced"  # 8.65 - 8.59 = 0.06 within the tolerance 0.1, judged on test (no valid)
    assert rows["lstm"].verdict == "not reproduced"  # 9.4 against 8.67
    assert rows["rnn"].verdict == "not run" and rows["rnn"].note.startswith("needs")


def test_a_run_of_another_configuration_or_on_a_prefix_fills_no_cell():
    other = run("music_jsb_kru", val={"loss": 1.0}, test={"loss": 1.0}, train={"loss": 1.0}, best_val={"loss": 1.0})
    other.results["config"]["optim"]["lr"] = 0.5  # not the preset's set-up
    prefix = run("music_jsb_kru", val={"loss": 1.0}, test={"loss": 1.0}, train={"loss": 1.0}, best_val={"loss": 1.0})
    prefix.results["config"]["task"]["eval_limit"] = 4  # a smoke run: evaluated on the first 4 sequences
    rows = paper_tables.table_rows("music_jsb", spec("music_jsb"), [other, prefix], identity, False)
    kru = next(r for r in rows if r.spec["model"] == "kru")
    assert kru.runs == [] and kru.verdict == "not run"
    assert paper_tables.cell(prefix, "test", "loss") is None  # nor would its numbers, matched or not
    prefix.results["config"]["task"]["eval_limit"] = None
    assert paper_tables.cell(prefix, "test", "loss") == 1.0


def test_a_run_older_than_a_key_still_fills_its_row_and_its_best_validation_is_the_valid_cell():
    old = run("pixel_mnist_kru", best_val={"accuracy": 0.97}, test={"accuracy": 0.96})
    del old.results["config"]["task"]["val_limit"]  # written before the key existed
    higher = True
    [kru] = [r for r in paper_tables.table_rows("pixel_mnist", spec("pixel_mnist"), [old], identity, higher)
             if r.spec["model"] == "kru"]
    assert kru.cells["valid"] == (0.97, 0.966) and kru.verdict == "reproduced"
    subsampled = run("pixel_mnist_kru", best_val={"accuracy": 0.99}, test={"accuracy": 0.96})
    subsampled.results["config"]["task"]["val_limit"] = 1000
    assert paper_tables.cell(subsampled, "valid", "accuracy") is None  # validated on 1,000 images: not Table 2's


def test_the_accuracy_verdict_allows_the_tolerance_below_the_paper_only():
    def verdict(acc):
        r = run("pixel_mnist_kru", val={"accuracy": acc}, test={"accuracy": acc}, best_val={"accuracy": acc})
        return next(x for x in paper_tables.table_rows("pixel_mnist", spec("pixel_mnist"), [r], identity, True)
                    if x.spec["model"] == "kru").verdict
    assert verdict(0.99) == verdict(0.957) == "reproduced" and verdict(0.95) == "not reproduced"


def test_a_figure_row_reads_the_curve_at_the_end_of_the_figures_x_axis():
    curves = {"a": ([100, 4900, 5000, 6000], [0.02, 0.0005, 0.0004, 0.5]),  # 0.5 after the figure's 5,000 steps
              "b": ([100, 5000], [0.0204, 0.0203])}
    runs = [run("copy_T1000_kru", folder="a", baseline={"loss": 0.0204}),
            run("copy_T1000_lstm", folder="b", baseline={"loss": 0.0204})]
    rows = {r.spec["model"]: r for r in paper_tables.figure_rows(
        "copy_T1000", spec("copy_T1000"), runs, identity, lambda d, tags: {tags[0]: curves[str(d)]})}
    assert rows["kru"].cells["end"][0] == 0.0004 and rows["kru"].cells["reached"][0] == [4900]
    assert rows["kru"].verdict == "reproduced" and rows["lstm"].verdict == "reproduced"  # ≈0 and the plateau
    assert rows["rnn"].verdict == "not run"
    curves["b"] = ([100, 5000], [0.0204, 0.01])  # half the baseline: neither ≈0 nor the plateau
    lstm = next(r for r in paper_tables.figure_rows("copy_T1000", spec("copy_T1000"), runs, identity,
                                                    lambda d, tags: {tags[0]: curves[str(d)]}) if r.spec["model"] == "lstm")
    assert lstm.verdict == "not reproduced"


def test_out_rewrites_only_what_stands_between_the_markers(tmp_path):
    assert splice(f"# by hand\n{BEGIN}\nold table\n{END}\nmore by hand\n", "new\n") == \
        f"# by hand\n{BEGIN}\nnew\n{END}\nmore by hand\n"
    assert splice("no markers", "new\n") == "new\n"
    runs = Path(__file__).resolve().parent / "data" / "runs"
    out = tmp_path / "RESULTS.md"
    out.write_text(f"# Results, by hand\n\n{BEGIN}\nstale\n{END}\n\n## Notes by hand\n")
    assert main([str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith(f"# Results, by hand\n\n{BEGIN}\n## The paper's tables and figures, row by row")
    assert "stale" not in text and text.endswith(f"{END}\n\n## Notes by hand\n")
    assert "| KRU | 512 | ≈11K / 72 |" in text  # Table 2's KRU row, not run: the fixture is no full-budget run
