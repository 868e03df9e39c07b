"""Learning-rate schedules, early stopping and the CSV logger: their values, and a run that crashes and resumes
following exactly the lrs, stops and rows of an uninterrupted one."""
import csv
import json
import math

import pytest
import torch

from conftest import small_run_config
from krubench.optim import EarlyStopping, Schedule
from krubench.tasks.copy import CopyTask
from krubench.train import train


def lrs(cfg: dict, steps: int, total: int = 10) -> list[float]:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = Schedule({"warmup_steps": 0, "min_lr_scale": 0.0, "every": 1000, "gamma": 0.1, **cfg}, optimizer,
                        total, higher_is_better=False)
    out = []
    for step in range(1, steps + 1):
        schedule.apply(step)
        out.append(optimizer.param_groups[0]["lr"])
    return out


def test_warmup_then_cosine_to_the_floor():
    out = lrs({"name": "cosine", "warmup_steps": 4, "min_lr_scale": 0.1}, 10)
    assert out[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert out[-1] == pytest.approx(0.1) and all(a >= b for a, b in zip(out[3:], out[4:]))


def test_step_decay_and_constant():
    assert lrs({"name": "step", "every": 3, "gamma": 0.5}, 7) == pytest.approx([1, 1, 1, .5, .5, .5, .25])
    assert lrs({"name": "constant", "warmup_steps": 2}, 3) == pytest.approx([0.5, 1, 1])


def test_reduce_on_plateau_follows_the_tasks_direction():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    cfg = {"name": "reduce_on_plateau", "warmup_steps": 0, "factor": 0.5, "patience": 2, "threshold": 0.0,
           "min_lr_scale": 0.2}
    accuracy = Schedule(cfg, optimizer, 10, higher_is_better=True)
    for value in (0.5, 0.6, 0.6, 0.55, 0.7, 0.7, 0.7):  # improve, 2 stale (halve), improve, 2 stale (halve)
        accuracy.on_validation(value)
    assert accuracy.factor(1) == pytest.approx(0.25)  # halved after each 2 stale validations
    accuracy.on_validation(0.7), accuracy.on_validation(0.7)
    assert accuracy.factor(1) == pytest.approx(0.2)  # the floor, min_lr_scale


def test_early_stopping_counts_validations_without_improvement_by_min_delta():
    stop = EarlyStopping(patience=2, min_delta=0.1, higher_is_better=False)
    assert [stop.on_validation(v) for v in (1.0, 0.95, 0.5, 0.45, 0.44)] == [False, False, False, False, True]
    again = EarlyStopping(patience=3, min_delta=0.1, higher_is_better=False)
    again.load_state_dict(stop.state_dict())
    assert not again.stopped  # a larger patience lets the run train on
    off = EarlyStopping(patience=0, min_delta=0.0, higher_is_better=True)
    assert not any(off.on_validation(0.5) for _ in range(10))


def test_unused_keys_are_the_ones_the_runs_choices_do_not_read():
    from krubench.optim import unused_keys

    schedule = {"name": "step", "warmup_steps": 0, "min_lr_scale": 0.0, "every": 10, "gamma": 0.5, "factor": 0.5,
                "patience": 5, "threshold": 0.0}
    assert unused_keys({"schedule": schedule, "trainer": {"early_stop_patience": 0}}) == {
        "schedule.min_lr_scale", "schedule.factor", "schedule.patience", "schedule.threshold",
        "trainer.early_stop_min_delta"}
    assert unused_keys({"schedule": {**schedule, "name": "reduce_on_plateau"}, "trainer": {"early_stop_patience": 3}}) == {
        "schedule.every", "schedule.gamma"}


def crash_at(monkeypatch, crash_step: int):
    """Make the copy task raise at `crash_step` (a killed process: last.pt holds the last checkpoint)."""
    original = CopyTask.train_loss

    def crashing(self, model, step, device):
        if step == crash_step:
            raise KeyboardInterrupt
        return original(self, model, step, device)

    monkeypatch.setattr(CopyTask, "train_loss", crashing)
    return lambda: monkeypatch.setattr(CopyTask, "train_loss", original)


def rows(run_dir, drop=("train/steps_per_s",)):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["tag"] not in drop]


@pytest.mark.parametrize("schedule", [
    ["schedule=cosine", "schedule.warmup_steps=3", "schedule.min_lr_scale=0.1"],
    pytest.param(["schedule=reduce_on_plateau", "schedule.patience=1", "schedule.threshold=10"],
                 marks=pytest.mark.slow),  # halves at every validation
    pytest.param(["schedule=step", "schedule.every=4", "trainer.early_stop_patience=8",
                  "trainer.early_stop_min_delta=10"], marks=pytest.mark.slow),  # stops at 9
])
def test_a_crashed_run_resumes_exactly(tmp_path, monkeypatch, schedule):
    overrides = ["trainer.steps=12", "trainer.val_every=1", "trainer.ckpt_every=5", "trainer.csv_log=true",
                 "model.kernel=reference", *schedule]
    straight = train(small_run_config(tmp_path, *overrides), tmp_path / "straight")
    restore = crash_at(monkeypatch, 7)  # last.pt is from step 5
    with pytest.raises(KeyboardInterrupt):
        train(small_run_config(tmp_path, *overrides), tmp_path / "resumed")
    restore()
    resumed = train(small_run_config(tmp_path, *overrides), tmp_path / "resumed")
    assert resumed["final_val"] == straight["final_val"] and resumed["steps"] == straight["steps"]
    assert resumed["stopped_early"] == straight["stopped_early"] == ("trainer.early_stop_patience=8" in schedule)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert a["schedule"] == b["schedule"] and a["early_stopping"] == b["early_stopping"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert rows(tmp_path / "resumed") == rows(tmp_path / "straight")  # the CSV too: no rows twice
    lr = [float(r["value"]) for r in rows(tmp_path / "straight") if r["tag"] == "train/lr"]
    assert len(set(lr)) > 1  # the schedule did change the lr


def test_early_stopping_ends_the_run_and_a_rerun_re_reports(tmp_path):
    overrides = ["trainer.steps=12", "trainer.val_every=2", "trainer.early_stop_patience=2",
                 "trainer.early_stop_min_delta=100", "model.kernel=reference"]
    results = train(small_run_config(tmp_path, *overrides), tmp_path / "run")
    assert results["stopped_early"] and results["steps"] == 6  # validations at 2 (best), 4 and 6 (stale)
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "ok"
    assert train(small_run_config(tmp_path, *overrides), tmp_path / "run")["steps"] == 6  # stays stopped
    more = train(small_run_config(tmp_path, *overrides, "trainer.early_stop_patience=0"), tmp_path / "run")
    assert more["steps"] == 12 and not more["stopped_early"]  # patience off: trains on to trainer.steps


def test_csv_log_is_off_by_default(tmp_path):
    train(small_run_config(tmp_path, "trainer.steps=2", "model.kernel=reference"), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.csv").exists()


@pytest.mark.parametrize("override, message", [
    ("schedule.gamma=0", "schedule.gamma=0.0 must be positive"),
    ("schedule.min_lr_scale=2", r"schedule.min_lr_scale=2.0 must be in \[0, 1\]"),
    ("trainer.early_stop_patience=-1", "trainer.early_stop_patience=-1 must be >= 0"),
])
def test_bad_schedule_values_are_config_errors(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        train(small_run_config(tmp_path, override), tmp_path / "run")
