"""Synthetic tasks: data as defined in PAPER.md, seeded generation, and the memoryless baselines
checked against empirical estimates from generated data."""
import math

import pytest
import torch

from krubench.tasks import AddingTask, CopyTask
from krubench.tasks.adding import make_adding_batch
from krubench.tasks.base import evaluate_batches, seeded_generator
from krubench.tasks.copy import BLANK, DELIMITER, copy_baseline_nats, make_copy_batch


def test_copy_layout():
    T = 15
    inputs, targets = make_copy_batch(T, 64, seeded_generator(0, "t"))
    assert inputs.shape == targets.shape == (64, T + 20)
    symbols = inputs[:, :10]
    assert symbols.min() >= 1 and symbols.max() <= 8
    assert (inputs[:, 10:T + 9] == BLANK).all() and (inputs[:, T + 9] == DELIMITER).all()
    assert (inputs[:, T + 10:] == BLANK).all()
    assert (targets[:, :T + 10] == BLANK).all() and torch.equal(targets[:, -10:], symbols)


def test_copy_baseline_formula_and_units():
    assert copy_baseline_nats(1000) == pytest.approx(0.0204, abs=1e-4)
    assert copy_baseline_nats(1000) / math.log(2) == pytest.approx(0.0294, abs=1e-4)  # the paper's "0.03" bits
    b = CopyTask(T=2000, val_size=4).baselines()
    assert b["loss_bits"] == pytest.approx(0.0149, abs=1e-4)


@pytest.mark.parametrize("T", [5, 30])
def test_copy_baseline_matches_best_memoryless_predictor(T):
    """The best predictor without memory outputs, at each position, the marginal label distribution
    of that position; its cross-entropy, estimated from data, is the baseline."""
    _, targets = make_copy_batch(T, 20000, seeded_generator(1, "t"))
    ce = 0.0
    for pos in range(T + 20):
        p = torch.bincount(targets[:, pos], minlength=10).double() / targets.shape[0]
        ce += -(p[p > 0] * p[p > 0].log()).sum().item()
    assert ce / (T + 20) == pytest.approx(copy_baseline_nats(T), rel=0.01)


@pytest.mark.parametrize("placement", ["halves", "uniform"])
def test_adding_data_and_baseline(placement):
    T = 40
    x, target = make_adding_batch(T, 50000, placement, seeded_generator(0, "t"))
    assert x.shape == (50000, T, 2) and target.shape == (50000,)
    markers = x[..., 1]
    assert (markers.sum(1) == 2).all()
    if placement == "halves":
        assert (markers[:, :T // 2].sum(1) == 1).all()
    torch.testing.assert_close(target, (x[..., 0] * markers).sum(1))
    assert ((target - 1) ** 2).mean().item() == pytest.approx(1 / 6, rel=0.02)  # always predict 1
    assert target.var().item() == pytest.approx(1 / 6, rel=0.02)  # and no constant does better
    task = AddingTask(T=T, val_size=500, seed=0)  # the baseline: "always predict 1" on the validation set
    assert task.baselines()["loss"] == pytest.approx(((task.val[1] - 1) ** 2).mean().item())
    assert task.baselines()["loss"] == pytest.approx(1 / 6, abs=0.03) and task.baselines()["loss"] != 1 / 6


def test_batches_depend_only_on_seed_and_step():
    a, b = CopyTask(T=5, seed=3, val_size=4), CopyTask(T=5, seed=3, val_size=4)
    assert torch.equal(a.train_batch(7)[1], b.train_batch(7)[1])
    assert not torch.equal(a.train_batch(7)[1], a.train_batch(8)[1])
    assert not torch.equal(a.train_batch(7)[1], CopyTask(T=5, seed=4, val_size=4).train_batch(7)[1])
    assert torch.equal(a.val[1], b.val[1])


def test_task_errors():
    with pytest.raises(ValueError, match="task.placement='middle'"):
        AddingTask(placement="middle")
    with pytest.raises(ValueError, match="task.T=0"):
        CopyTask(T=0)


def test_evaluation_records_no_graph():
    """Evaluation runs without autograd: a model's graph over T=1000 steps of a validation batch (the uRNN's
    loop at N=470, 256 sequences) took 23 GB and was killed for memory."""
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x, last_only=False):
            seen.append(torch.is_grad_enabled())
            return x, None

    x = torch.randn(4, 3, 2)
    out = evaluate_batches(Probe(), [(x, x)], lambda y, t: (y - t).square().mean(), "cpu")
    assert seen == [False] and out["loss"] == 0.0
