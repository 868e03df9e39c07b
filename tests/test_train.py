"""The training loop in-process: exact resume, non-finite losses, refusing to reuse a run directory."""
import json
import re

import pytest
import torch

from conftest import small_run_config
from krubench.runtime import checkpoint
from krubench.models.kru import unitary_penalty
from krubench.tasks.copy import CopyTask
from krubench.models import build_model
from krubench.optim import build_optimizer
from krubench.train import NonFiniteLoss, train


def final_weights(run_dir):
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


@pytest.mark.parametrize("model", ["kru", "lstm_kru"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, model):
    straight = small_run_config(tmp_path, f"model={model}", "model.hidden_size=16", "trainer.steps=12")
    train(straight, tmp_path / "straight")
    first = small_run_config(tmp_path, f"model={model}", "model.hidden_size=16", "trainer.steps=6")
    train(first, tmp_path / "resumed")
    train(straight, tmp_path / "resumed")  # same directory, more steps: continues from step 6
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra = json.loads((tmp_path / "straight" / "results.json").read_text())
    rb = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert ra["final_val"] == rb["final_val"] and rb["steps"] == 12


def test_non_finite_loss_keeps_the_last_checkpoint_and_a_lower_lr_continues_it(tmp_path, monkeypatch, caplog):
    """NaN at step 7, checkpoints every 5: last.pt stays the step-5 checkpoint (not the state at the NaN), and
    the rerun the message suggests, with a lower optim.lr, continues from it at that lr."""
    original = CopyTask.train_loss

    def poisoned(self, model, step, device):
        loss = original(self, model, step, device)
        return loss * float("nan") if step == 7 else loss

    monkeypatch.setattr(CopyTask, "train_loss", poisoned)
    run = tmp_path / "run"
    with caplog.at_level("ERROR", logger="krubench"), pytest.raises(NonFiniteLoss, match="non-finite at step 7") as stop:
        train(small_run_config(tmp_path), run)
    assert any(r.getMessage().startswith("run failed: NonFiniteLoss: the loss became non-finite at step 7")
               for r in caplog.records)  # the log file says why the run ended
    assert "the last checkpoint, from step 5" in str(stop.value) and f"hydra.run.dir={run}" in str(stop.value)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["step"] == 5
    train(small_run_config(tmp_path, "trainer.steps=5"), tmp_path / "five")
    five = final_weights(tmp_path / "five")
    assert all(torch.equal(ckpt["model"][k], five[k]) for k in five)
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and "non-finite" in status["error"]

    monkeypatch.setattr(CopyTask, "train_loss", original)
    with caplog.at_level("INFO", logger="krubench"):
        train(small_run_config(tmp_path, "optim.lr=0.0005", "optim.factor_lr_scale=0.5"), run)
    messages = [r.getMessage() for r in caplog.records]
    assert any("resumed from" in m and "at step 5" in m for m in messages)
    assert "optim.lr changed 0.001 -> 0.0005 on resume" in messages
    assert "optim.factor_lr_scale changed 0.1 -> 0.5 on resume" in messages  # from the KRU's default
    groups = torch.load(run / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([0.0005, 0.00025])
    assert json.loads((run / "status.json").read_text()) | {"updated": None} == {
        "status": "ok", "step": 10, "updated": None}


def test_a_non_finite_update_is_never_checkpointed(tmp_path, monkeypatch):
    """optim.lr=inf makes every parameter non-finite in one update: the stop names the parameters, and no
    last.pt holds them."""
    monkeypatch.setattr("krubench.train.validate", lambda config: None)  # it refuses optim.lr=inf
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLoss, match="parameters became non-finite at step 1, before any checkpoint"):
        train(small_run_config(tmp_path, "optim.lr=inf", "trainer.ckpt_every=1"), run)
    assert not (run / "last.pt").exists()


def test_resume_with_another_optimizer_is_refused(tmp_path):
    train(small_run_config(tmp_path, "trainer.steps=1"), tmp_path / "run")
    with pytest.raises(ValueError, match=r"optim.name=adam: it was trained with optim.name=rmsprop.*optim=rmsprop"):
        train(small_run_config(tmp_path, "optim=adam"), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "ok"


def test_rmsprop_resumed_with_momentum_starts_its_buffer(tmp_path):
    train(small_run_config(tmp_path, "trainer.steps=5"), tmp_path / "run")
    train(small_run_config(tmp_path, "optim.momentum=0.9"), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "results.json").read_text())["steps"] == 10


def test_resume_never_refuses_an_existing_run(tmp_path):
    train(small_run_config(tmp_path, "trainer.steps=1"), tmp_path / "run")
    with pytest.raises(FileExistsError, match="trainer.resume=never"):
        train(small_run_config(tmp_path, "trainer.resume=never"), tmp_path / "run")


def test_other_task_in_same_dir_is_refused_with_a_diff(tmp_path):
    train(small_run_config(tmp_path, "trainer.steps=1"), tmp_path / "run")
    cfg = small_run_config(tmp_path, "task=adding", "task.val_size=8")
    with pytest.raises(ValueError, match=r"task.name: 'copy' \(checkpoint\) -> 'adding' \(now\)"):
        train(cfg, tmp_path / "run")


def test_a_run_resumes_on_another_backend_and_from_a_checkpoint_older_than_the_key(tmp_path, caplog):
    """model.recurrence (and model.kernel) choose how the same math runs: a run resumes when only they differ,
    also from a checkpoint written before model.recurrence existed, and its log says which runs; another model
    size is still refused."""
    caplog.set_level("INFO", logger="krubench")
    peer = ["model=urnn", "trainer.steps=12"]
    train(small_run_config(tmp_path, *peer), tmp_path / "straight")
    train(small_run_config(tmp_path, *peer, "trainer.steps=6", "model.recurrence=dense"), tmp_path / "resumed")
    ckpt = checkpoint.load(tmp_path / "resumed" / "last.pt")
    del ckpt["config"]["model"]["recurrence"]  # as written before the key existed
    checkpoint.save(tmp_path / "resumed" / "last.pt", **ckpt)
    train(small_run_config(tmp_path, *peer, "model.recurrence=reference"), tmp_path / "resumed")
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)  # the same math, not the same rounding
    assert json.loads((tmp_path / "resumed" / "results.json").read_text())["steps"] == 12
    for how in ("the hand-written backward (model.recurrence=auto)",  # the uRNN's rule at N=16 ≤ 64
                "the hand-written backward (model.recurrence=dense)", "autograd through the loop (model.recurrence=reference)"):
        assert f"recurrent; recurrence: {how}; device: cpu" in caplog.text, how
    with pytest.raises(ValueError, match=r"model.hidden_size: 16 \(checkpoint\) -> 8 \(now\)"):
        train(small_run_config(tmp_path, *peer, "trainer.steps=13", "model.hidden_size=8"), tmp_path / "resumed")


def test_unitary_penalty_keeps_factors_unitary(tmp_path):
    """Same init, same data: with λ > 0 the factors end closer to unitary than without."""
    def penalty_after(weight):
        cfg = small_run_config(tmp_path, f"trainer.unitary_penalty={weight}", "optim.lr=0.03", "trainer.steps=10")
        train(cfg, tmp_path / f"run{weight}")
        factors = [v for k, v in final_weights(tmp_path / f"run{weight}").items() if k.startswith("W.factors")]
        return unitary_penalty(factors).item()

    free, constrained = penalty_after(0.0), penalty_after(10.0)
    assert free > 1e-3 and constrained < free / 3


@pytest.mark.parametrize("faulted_mb,hinted", [(500, True), (10, False)])
def test_a_cpu_run_that_faults_in_memory_at_every_step_gets_one_hint(tmp_path, monkeypatch, caplog, faulted_mb, hinted):
    """The page-fault count of steps 2..6 decides (faked here: a real run of this size faults little)."""
    import os
    from krubench.runtime import page_faults
    monkeypatch.delenv(page_faults.ENV, raising=False)
    pages = faulted_mb * 2**20 // os.sysconf("SC_PAGE_SIZE")
    counts = iter([1000, 1000 + 4 * pages])  # the counter at steps 2 and 6: `pages` per step between them
    monkeypatch.setattr(page_faults, "minor_faults", lambda: next(counts))
    with caplog.at_level("INFO", logger="krubench"):
        train(small_run_config(tmp_path, "trainer.steps=8"), tmp_path)
    hints = [r.getMessage() for r in caplog.records if "hint:" in r.getMessage()]
    assert len(hints) == (1 if hinted else 0), hints
    if hinted:
        assert f"about {faulted_mb} MB" in hints[0] and "MALLOC_MMAP_THRESHOLD_=2147483647" in hints[0]


def test_no_page_fault_hint_when_the_user_has_chosen(tmp_path, monkeypatch, caplog):
    from krubench.runtime import page_faults
    monkeypatch.setenv(page_faults.ENV, "33554432")
    monkeypatch.setattr(page_faults, "minor_faults", lambda: pytest.fail("faults counted though the user chose"))
    with caplog.at_level("INFO", logger="krubench"):
        train(small_run_config(tmp_path, "trainer.steps=8"), tmp_path)
    assert not [r for r in caplog.records if "hint:" in r.getMessage()]


@pytest.mark.parametrize("model_name", ["kru", "lstm_kru"])
def test_factors_train_at_their_own_learning_rate(model_name):
    """optim.factor_lr_scale: the Kronecker factors move at lr × scale, every other parameter at lr."""
    torch.manual_seed(0)
    model = build_model({"name": model_name, "hidden_size": 16}, 3, 4)
    optim = {"name": "rmsprop", "lr": 1e-2, "weight_decay": 0.0, "alpha": 0.99, "momentum": 0.0, "eps": 1e-8,
             "factor_lr_scale": 0.01}
    optimizer = build_optimizer(optim, model)
    factors = {id(p) for p in model.factor_parameters()}
    assert [g["lr"] for g in optimizer.param_groups] == [1e-2, 1e-4]
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == factors
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(2, 5, 3))[0].square().mean().backward()
    optimizer.step()
    moved = {id(p): (p.detach() - b).abs().max().item() for p, b in zip(model.parameters(), before)}
    # RMSprop's first step moves every entry by about lr / sqrt(1 - alpha) = 10·lr
    assert max(moved[i] for i in factors) < 2e-3
    assert max(v for i, v in moved.items() if i not in factors) > 5e-2


def test_dense_models_have_one_parameter_group():
    optim = {"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "betas": None, "eps": 1e-8, "factor_lr_scale": 0.1}
    assert len(build_optimizer(optim, build_model({"name": "lstm", "hidden_size": 8}, 3, 4)).param_groups) == 1


@pytest.mark.parametrize("model_name,expected", [("kru", 0.1), ("rnn", 1.0), ("lstm_kru", 1.0), ("exprnn", 0.1)])
def test_a_null_factor_lr_scale_is_the_models_own_and_stored_resolved(tmp_path, model_name, expected):
    """optim.factor_lr_scale defaults to null: the model's default_factor_lr_scale, written into results.json as
    the number it ran with (the report and a resume compare numbers)."""
    cfg = small_run_config(tmp_path, f"model={model_name}", "model.hidden_size=16", "trainer.steps=2")
    assert cfg.optim.factor_lr_scale is None
    train(cfg, tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["optim"]["factor_lr_scale"] == expected


def test_results_name_the_setting_the_task_says_it_is(tmp_path):
    """results.json carries the task's own setting (Task.setting), which the report groups by."""
    cfg = small_run_config(tmp_path, "task=adding", "task.T=30", "task.placement=uniform", "model.hidden_size=16",
                           "trainer.steps=2")
    train(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "results.json").read_text())["setting"] == "adding_T30_uniform"


def test_step_lines_show_the_elapsed_time_and_an_eta(tmp_path, caplog, monkeypatch):
    """What a SLURM log shows of a run: how long it has run and how long it has to go, at every log line."""
    clock = iter(range(0, 10_000, 3))  # each time.time() call: 3 s later
    monkeypatch.setattr("krubench.train.time.time", lambda: float(next(clock)))
    with caplog.at_level("INFO", logger="krubench"):
        train(small_run_config(tmp_path, "trainer.steps=4", "trainer.log_every=2", "trainer.val_every=4"),
              tmp_path / "run")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step 2/4 loss")]
    assert len(lines) == 1
    elapsed, eta = re.search(r"steps/s, elapsed (\d+:\d\d:\d\d), ETA (\d+:\d\d:\d\d)$", lines[0]).groups()
    assert elapsed != "0:00:00" and eta == elapsed  # half the steps done at this pace: as long again to go


def test_clock_reads_as_hours_minutes_seconds():
    from krubench.train import clock

    assert clock(0) == "0:00:00" and clock(59.9) == "0:00:59" and clock(3 * 3600 + 61) == "3:01:01"


def test_a_key_the_checkpoint_predates_is_no_difference_while_it_is_null():
    """A run written before task.val_limit existed resumes (null: off, the behaviour it ran with); a value is a change."""
    from krubench.runtime.checkpoint import config_diff

    saved = {"task": {"name": "music", "dataset": "jsb"}, "seed": 0}
    assert config_diff(saved, {"task": {"name": "music", "dataset": "jsb", "val_limit": None}, "seed": 0}) == []
    assert config_diff(saved, {"task": {"name": "music", "dataset": "jsb", "val_limit": 5}, "seed": 0}) == [
        "  task.val_limit: '<absent>' (checkpoint) -> 5 (now)"]


def test_a_run_flushes_denormal_floats_to_zero(tmp_path):
    # denormals made adding T=400's LSTM 8x slower (BENCHMARKS.md "Denormal floats"); a run must turn them off
    torch.set_flush_denormal(False)
    tiny = torch.tensor([1e-39])  # below float32's smallest normal, 1.2e-38 (made after: flushing zeroes it)
    try:
        assert (tiny * 1.0).item() > 0
        train(small_run_config(tmp_path, "trainer.steps=2"), tmp_path)
        assert (tiny * 1.0).item() == 0
    finally:
        torch.set_flush_denormal(False)  # the process default again


def test_a_run_records_the_machine_it_ran_on(tmp_path, caplog):
    # a resumed run can change hosts between sessions: results.json names the last, the log every start
    with caplog.at_level("INFO", logger="krubench"):
        train(small_run_config(tmp_path, "trainer.steps=2"), tmp_path)
    host = json.loads((tmp_path / "results.json").read_text())["machine"]
    assert host["cpu"] and host["cores"] >= 1
    assert f"machine: {host['cpu']}, {host['cores']} cores" in caplog.text
