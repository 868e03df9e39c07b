"""Polyphonic music (Boulanger-Lewandowski et al. 2012): JSB Chorales, Piano-midi.de, Nottingham,
MuseData. Each time step is an 88-key binary frame; the model reads frames 0..T-2 and predicts
frames 1..T-1 with 88 independent Bernoulli outputs (logits).

Loss and metric: NLL per time step, the Bernoulli NLL summed over the 88 keys, averaged over every
predicted frame of the split (nats). Sequences of different lengths are batched with padding at the
end and a mask, so padding never counts: causal models give a padded batch exactly the NLL of its
sequences taken one by one. Training batches are whole sequences, `batch_size` per step, in epochs.
Memoryless baseline: a Bernoulli per key with its frequency in the training frames, scored on
those frames (its NLL there is the sum over keys of the binary entropies, nats).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.music import KEYS, load_music
from ..data.roots import data_dir as resolve_data_dir
from ..data.sources import MUSIC
from .base import Task, config_value, epoch_batch

SPLIT_NAMES = {"train": "train", "val": "valid", "test": "test"}  # krubench split -> data set split


def pad_batch(rolls: list[torch.Tensor]):
    """Inputs (B, T, 88), next-frame targets (B, T, 88), mask (B, T) with T = longest length − 1."""
    T = max(len(r) for r in rolls) - 1
    x = torch.zeros(len(rolls), T, KEYS)
    target = torch.zeros(len(rolls), T, KEYS)
    mask = torch.zeros(len(rolls), T)
    for i, r in enumerate(rolls):
        n = len(r) - 1
        x[i, :n], target[i, :n], mask[i, :n] = r[:-1], r[1:], 1
    return x, target, mask


def frame_nll(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, T): Bernoulli NLL of each frame, summed over the keys."""
    return F.binary_cross_entropy_with_logits(y, target, reduction="none").sum(-1)


class MusicTask(Task):
    name = "music"
    choices = {"dataset": tuple(MUSIC)}
    positive = {"batch_size": "", "eval_batch_size": "", "eval_limit": ""}
    needs_data = True
    input_size = KEYS
    output_size = KEYS
    units = {"loss": "nats per frame"}
    splits = ("val", "test", "train")  # the paper's Table 4 gives train and test NLL

    @classmethod
    def setting(cls, cfg) -> str:
        return f"music_{config_value(cfg, 'dataset')}"

    def __init__(self, dataset: str = "jsb", batch_size: int = 8, eval_batch_size: int = 32,
                 eval_limit: int | None = None, val_limit: int | None = None, seed: int = 0,
                 data_dir: str | None = None):
        self.root = resolve_data_dir(data_dir)
        data = load_music(self.root, dataset)
        # a sequence of one frame has nothing to predict
        self.data = {ours: [r for r in data[theirs] if len(r) > 1] for ours, theirs in SPLIT_NAMES.items()}
        if batch_size > len(self.data["train"]):
            raise ValueError(f"task.batch_size={batch_size} exceeds the {len(self.data['train'])} training sequences")
        self.dataset, self.batch_size, self.eval_batch_size, self.eval_limit, self.seed = (
            dataset, batch_size, eval_batch_size, eval_limit, seed)
        self.val_limit = val_limit

    def train_batch(self, step):
        rolls = self.data["train"]
        idx = epoch_batch(self.seed, f"music/{self.dataset}/train", len(rolls), self.batch_size, step)
        return pad_batch([rolls[i] for i in idx.tolist()])

    def loss(self, y, target, mask):
        return (frame_nll(y, target) * mask).sum() / mask.sum()  # nats per predicted frame

    def train_loss(self, model, step, device):
        x, target, mask = (t.to(device) for t in self.train_batch(step))
        y, _ = model(x)
        return self.loss(y, target, mask)

    @torch.no_grad()
    def evaluate(self, model, device, split="val", whole=False):
        if split not in self.splits:
            raise ValueError(f"split={split!r} is not one of {self.splits}")
        rolls = sorted(self.data[split][:self.limit(whole)], key=len)  # similar lengths share a batch
        was_training = model.training
        model.eval()
        total, frames = 0.0, 0.0
        for i in range(0, len(rolls), self.eval_batch_size):
            x, target, mask = (t.to(device) for t in pad_batch(rolls[i:i + self.eval_batch_size]))
            y, _ = model(x)
            total += (frame_nll(y, target) * mask).sum().item()
            frames += mask.sum().item()
        model.train(was_training)
        return {"loss": total / frames}

    def baselines(self):
        frames = torch.cat(self.data["train"]).double()  # (all training frames, 88)
        p = frames.mean(0)  # (88,) per-key frequency
        entropy = -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p)).sum().item()
        return {"loss": entropy}

    def describe(self):
        sizes = "/".join(str(len(self.data[s])) for s in SPLIT_NAMES)
        return (f"music {self.dataset}: train/val/test {sizes} sequences, data from {self.root}: memoryless "
                f"baseline (per-key marginal Bernoulli) {self.baselines()['loss']:.4f} nats per time step "
                f"(random guessing: 61.0)")
