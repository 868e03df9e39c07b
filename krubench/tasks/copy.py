"""Copy memory (Hochreiter & Schmidhuber; uRNN set-up). T = number of blanks between the 10 symbols
and the delimiter; sequence length T + 20.

input  = [x_0..x_9, blank × (T−1), delimiter, blank × 10]
target = [blank × (T+10), x_0..x_9]
Classes: 0 = blank, 1..8 = symbols, 9 = delimiter; inputs are one-hot over the 10 classes.
Memoryless baseline: predict blank, then uniform over the 8 symbols: 10·ln 8 / (T+20) nats per step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Task, config_value, evaluate_batches, seeded_generator

N_SYMBOLS, N_CLASSES, N_COPY = 8, 10, 10
BLANK, DELIMITER = 0, 9


def copy_baseline_nats(T: int) -> float:
    return N_COPY * math.log(N_SYMBOLS) / (T + 20)


def make_copy_batch(T: int, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Class ids: inputs (B, T+20), targets (B, T+20)."""
    symbols = torch.randint(1, N_SYMBOLS + 1, (batch, N_COPY), generator=generator)  # (B, 10)
    inputs = torch.full((batch, T + 20), BLANK, dtype=torch.long)
    targets = torch.full((batch, T + 20), BLANK, dtype=torch.long)
    inputs[:, :N_COPY] = symbols
    inputs[:, T + N_COPY - 1] = DELIMITER
    targets[:, -N_COPY:] = symbols
    return inputs, targets


class CopyTask(Task):
    name = "copy"
    positive = {"T": "", "batch_size": "", "val_size": ""}
    input_size = N_CLASSES
    output_size = N_CLASSES
    #: int64 ids, targets and one-hot (10 classes), then the float32 one-hot
    validation_bytes_per_step = 8 + 8 + 10 * 8 + 10 * 4
    units = {"loss": "nats per time step", "loss_bits": "bits per time step",
             "recall_accuracy": "fraction of recalled symbols"}

    @classmethod
    def sequence_length(cls, cfg: dict) -> tuple[int, str]:
        return cfg["T"] + 20, "task.T"

    @classmethod
    def setting(cls, cfg) -> str:
        return f"copy_T{config_value(cfg, 'T')}"

    def __init__(self, T: int = 100, batch_size: int = 20, val_size: int = 500, seed: int = 0):
        if T < 1:
            raise ValueError(f"task.T={T} must be at least 1 (the number of blanks)")
        self.T, self.batch_size, self.seed = T, batch_size, seed
        ids, targets = make_copy_batch(T, val_size, seeded_generator(seed, "copy/val"))
        self.val = (F.one_hot(ids, N_CLASSES).float(), targets)

    def train_batch(self, step):
        ids, targets = make_copy_batch(self.T, self.batch_size, seeded_generator(self.seed, "copy/train", step))
        return F.one_hot(ids, N_CLASSES).float(), targets  # (B, T+20, 10), (B, T+20)

    def loss(self, y, target):
        return F.cross_entropy(y.reshape(-1, N_CLASSES), target.reshape(-1))  # nats per time step

    def _recall(self, y, target):
        correct = (y[:, -N_COPY:].argmax(-1) == target[:, -N_COPY:]).float().mean().item()
        return {"recall_accuracy": correct}

    def evaluate(self, model, device, split="val", whole=False):  # one fixed validation set: always whole
        x, t = self.val
        batches = [(x[i:i + 256], t[i:i + 256]) for i in range(0, len(x), 256)]
        out = evaluate_batches(model, batches, self.loss, device, self._recall)
        out["loss_bits"] = out["loss"] / math.log(2)
        return out

    def baselines(self):
        nats = copy_baseline_nats(self.T)
        return {"loss": nats, "loss_bits": nats / math.log(2), "recall_accuracy": 1 / N_SYMBOLS}

    def describe(self):
        b = self.baselines()
        return (f"copy T={self.T}: memoryless baseline {b['loss']:.4f} nats = {b['loss_bits']:.4f} bits "
                f"per time step (cross-entropy), recall accuracy {b['recall_accuracy']:.3f}")
