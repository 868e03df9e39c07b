"""Adding problem (Hochreiter & Schmidhuber; Arjovsky et al. set-up). Inputs (T, 2): a U(0,1) number
and a marker; exactly two markers are 1. Target: the sum of the two marked numbers, read at the last
step. placement=halves puts one marker in each half (Arjovsky); uniform draws two distinct positions.
Memoryless baseline: always predict 1, MSE = Var(U1 + U2) = 1/6 in expectation. The validation losses are
compared with that rule's MSE on the validation set itself: with 500 sequences it ranges 0.158-0.186 over
seeds, and a model that learned nothing sits on it, not on 1/6.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Task, config_value, evaluate_batches, seeded_generator

PLACEMENTS = ("halves", "uniform")
ADDING_BASELINE_MSE = 1 / 6


def make_adding_batch(T: int, batch: int, placement: str, generator: torch.Generator):
    """inputs (B, T, 2), targets (B,)."""
    values = torch.rand(batch, T, generator=generator)
    if placement == "halves":
        half = T // 2
        first = torch.randint(0, half, (batch,), generator=generator)
        second = torch.randint(half, T, (batch,), generator=generator)
    else:
        pos = torch.rand(batch, T, generator=generator).argsort(dim=1)[:, :2]  # two distinct positions
        first, second = pos[:, 0], pos[:, 1]
    markers = torch.zeros(batch, T)
    rows = torch.arange(batch)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    targets = values[rows, first] + values[rows, second]
    return torch.stack([values, markers], dim=-1), targets


class AddingTask(Task):
    name = "adding"
    choices = {"placement": PLACEMENTS}
    positive = {"T": "", "batch_size": "", "val_size": ""}
    scores_last_step_only = True  # the sum is read at the last step
    input_size = 2
    output_size = 1
    units = {"loss": "MSE"}
    #: float32 values, markers and their stacked copy, and uniform placement's random keys and order
    validation_bytes_per_step = 4 + 4 + 8 + 4 + 8

    @classmethod
    def sequence_length(cls, cfg: dict) -> tuple[int, str]:
        return cfg["T"], "task.T"

    @classmethod
    def setting(cls, cfg) -> str:
        uniform = config_value(cfg, "placement") == "uniform"
        return f"adding_T{config_value(cfg, 'T')}" + ("_uniform" if uniform else "")

    def __init__(self, T: int = 100, placement: str = "halves", batch_size: int = 20, val_size: int = 500,
                 seed: int = 0):
        if placement not in PLACEMENTS:
            raise ValueError(f"task.placement={placement!r} is not supported: use one of {PLACEMENTS}")
        if T < 2:
            raise ValueError(f"task.T={T} must be at least 2 (two markers)")
        self.T, self.placement, self.batch_size, self.seed = T, placement, batch_size, seed
        self.val = make_adding_batch(T, val_size, placement, seeded_generator(seed, "adding/val"))
        self.val_baseline = F.mse_loss(torch.ones_like(self.val[1]), self.val[1]).item()  # always predict 1

    def train_batch(self, step):
        return make_adding_batch(self.T, self.batch_size, self.placement,
                                 seeded_generator(self.seed, "adding/train", step))

    def loss(self, y, target):
        return F.mse_loss(y[:, -1, 0], target)  # read the answer at the last step

    def evaluate(self, model, device, split="val", whole=False):  # one fixed validation set: always whole
        x, t = self.val
        return evaluate_batches(model, [(x[i:i + 256], t[i:i + 256]) for i in range(0, len(x), 256)], self.loss, device,
                                last_only=self.scores_last_step_only)

    def baselines(self):
        return {"loss": self.val_baseline}

    def describe(self):
        return (f"adding T={self.T} ({self.placement}): memoryless baseline (always predict 1) MSE "
                f"{self.val_baseline:.4f} on the validation set, {ADDING_BASELINE_MSE:.4f} in expectation")
