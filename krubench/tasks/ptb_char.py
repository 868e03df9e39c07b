"""Character-level Penn Treebank language modelling (Mikolov's char files): predict the next of 50
tokens (49 symbols + end of line), inputs one-hot.

Training walks the training stream cut into `batch_size` parallel columns (batchify, as in
pytorch/examples word_language_model) in segments of `bptt` steps, carrying the recurrent state
from one segment to the next, detached (truncated BPTT); the state starts at zero at each epoch.
Evaluation runs the whole valid/test stream the same way in `eval_batch_size` columns (the last
< eval_batch_size tokens are dropped). Metric: bits per character, BPC = mean NLL in nats / ln 2.
Memoryless baseline: the unigram entropy of the training characters.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data.roots import data_dir as resolve_data_dir
from ..data.ptb import load_ptb
from .base import Task


def batchify(ids: torch.Tensor, columns: int) -> torch.Tensor:
    """(n,) -> (columns, n // columns): column j is the j-th contiguous stretch of the stream."""
    length = len(ids) // columns
    return ids[:columns * length].reshape(columns, length)


def map_state(fn, state):
    """Apply fn to every tensor of a model's recurrent state (a tensor or a tuple of tensors)."""
    if state is None:
        return None
    return tuple(fn(s) for s in state) if isinstance(state, (tuple, list)) else fn(state)


class PTBCharTask(Task):
    name = "ptb_char"
    positive = {"bptt": "", "batch_size": "", "eval_batch_size": "", "eval_limit": ""}
    needs_data = True
    metric = "bpc"
    splits = ("val", "test")
    units = {"loss": "nats per character", "bpc": "bits per character"}

    @classmethod
    def sequence_length(cls, cfg: dict) -> tuple[int, str]:
        return cfg["bptt"], "task.bptt"

    def __init__(self, bptt: int = 150, batch_size: int = 128, eval_batch_size: int = 64,
                 eval_limit: int | None = None, val_limit: int | None = None, seed: int = 0,
                 data_dir: str | None = None):
        if bptt < 1:
            raise ValueError(f"task.bptt={bptt} must be at least 1")
        self.root = resolve_data_dir(data_dir)
        ids, self.vocab = load_ptb(self.root)
        self.input_size = self.output_size = len(self.vocab)
        self.train = batchify(ids["train"], batch_size)  # (B, L)
        self.segments = (self.train.shape[1] - 1) // bptt  # optimizer steps per epoch
        if self.segments < 1:
            raise ValueError(f"task.batch_size={batch_size} with task.bptt={bptt} leaves no full segment "
                             f"in {len(ids['train'])} training tokens: lower them")
        for key, limit in (("eval_limit", eval_limit), ("val_limit", val_limit)):
            if limit is not None and limit < 2 * eval_batch_size:
                raise ValueError(f"task.{key}={limit} must be at least 2 × task.eval_batch_size="
                                 f"{eval_batch_size} (each evaluation column needs two tokens), or null for all")
        self.eval_ids = {"val": ids["valid"], "test": ids["test"]}
        self.unigram = torch.bincount(ids["train"], minlength=len(self.vocab)).double() / len(ids["train"])
        self.bptt, self.eval_batch_size, self.eval_limit, self.seed = bptt, eval_batch_size, eval_limit, seed
        self.val_limit = val_limit
        self.state, self.next_step = None, None  # the carried state and the step it is meant for

    def segment(self, data: torch.Tensor, start: int, length: int):
        """One-hot inputs (B, t, V) and next-token targets (B, t) of data[:, start:start + t]."""
        t = min(length, data.shape[1] - 1 - start)
        x = F.one_hot(data[:, start:start + t], len(self.vocab)).float()
        return x, data[:, start + 1:start + 1 + t]

    def train_batch(self, step):
        return self.segment(self.train, (step % self.segments) * self.bptt, self.bptt)

    def loss(self, y, target):
        return F.cross_entropy(y.reshape(-1, y.shape[-1]), target.reshape(-1))  # nats per character

    def train_loss(self, model, step, device):
        x, target = (t.to(device) for t in self.train_batch(step))
        carried = step == self.next_step and step % self.segments != 0  # a new epoch starts from zero
        state = map_state(lambda s: s.to(device), self.state) if carried else None
        y, state = model(x, state)
        self.state, self.next_step = map_state(lambda s: s.detach(), state), step + 1
        return self.loss(y, target)

    def state_dict(self):
        return {"state": map_state(lambda s: s.cpu(), self.state), "next_step": self.next_step}

    def load_state_dict(self, state):
        self.state, self.next_step = state["state"], state["next_step"]

    @torch.no_grad()
    def evaluate(self, model, device, split="val", whole=False):
        if split not in self.eval_ids:
            raise ValueError(f"split={split!r} is not one of {self.splits}")
        data = batchify(self.eval_ids[split][:self.limit(whole)], self.eval_batch_size)  # (B, L)
        was_training = model.training
        model.eval()
        total, count, state = 0.0, 0, None
        for start in range(0, data.shape[1] - 1, self.bptt):
            x, target = (t.to(device) for t in self.segment(data, start, self.bptt))
            y, state = model(x, state)
            total += F.cross_entropy(y.reshape(-1, y.shape[-1]), target.reshape(-1), reduction="sum").item()
            count += target.numel()
        model.train(was_training)
        return {"loss": total / count, "bpc": total / count / math.log(2)}

    def baselines(self):
        p = self.unigram[self.unigram > 0]
        entropy = -(p * p.log()).sum().item()  # nats
        return {"loss": entropy, "bpc": entropy / math.log(2)}

    def describe(self):
        b = self.baselines()
        return (f"ptb_char: {len(self.vocab)} tokens, bptt {self.bptt}, {self.segments} steps per epoch, data from "
                f"{self.root}: memoryless baseline (unigram entropy) {b['bpc']:.4f} BPC = {b['loss']:.4f} nats")
