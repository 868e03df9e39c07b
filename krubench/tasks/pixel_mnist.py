"""Pixel MNIST (Le et al. 2015) and its permuted variant: classify a digit read one pixel per step,
784 steps in scan-line order, pixels scaled to [0, 1]; the class is read at the last step.

permute=true applies one fixed permutation of the 784 positions, numpy's
`RandomState(permutation_seed).permutation(784)`; the default seed 92916 is the uRNN/expRNN one.
Splits: train = the first 60000 − val_size training images, val = the last val_size (5000) training
images, test = the 10000 test images (never used for selection).
Memoryless baseline: the label marginal of the training split: predict the majority class
(accuracy = its frequency) with the marginal as probabilities (cross-entropy = label entropy, nats).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.mnist import load_mnist
from ..data.roots import data_dir as resolve_data_dir
from .base import Task, config_value, epoch_batch, evaluate_batches

PIXELS, CLASSES, MNIST_TRAIN = 784, 10, 60000


def mnist_permutation(seed: int) -> torch.Tensor:
    """(784,) the fixed pixel order of permuted MNIST."""
    return torch.from_numpy(np.random.RandomState(seed).permutation(PIXELS))


class PixelMNISTTask(Task):
    name = "pixel_mnist"
    positive = {"val_size": "", "batch_size": "", "eval_batch_size": "", "eval_limit": ""}
    scores_last_step_only = True  # the class is read at the last step
    needs_data = True
    input_size = 1
    output_size = CLASSES
    metric = "accuracy"
    higher_is_better = True
    splits = ("val", "test")
    units = {"loss": "nats per image", "accuracy": "fraction correct"}

    @classmethod
    def sequence_length(cls, cfg: dict) -> tuple[int, str]:
        return 784, "task (pixel_mnist: 784 steps)"

    @classmethod
    def setting(cls, cfg) -> str:
        return "permuted_mnist" if config_value(cfg, "permute") else "pixel_mnist"

    def __init__(self, permute: bool = False, permutation_seed: int = 92916, val_size: int = 5000,
                 batch_size: int = 100, eval_batch_size: int = 100, eval_limit: int | None = None,
                 val_limit: int | None = None, seed: int = 0, data_dir: str | None = None):
        if not 0 < val_size < MNIST_TRAIN:
            raise ValueError(f"task.val_size={val_size} must be between 1 and {MNIST_TRAIN - 1} "
                             "(the last val_size training images form the validation split)")
        if batch_size > MNIST_TRAIN - val_size:
            raise ValueError(f"task.batch_size={batch_size} exceeds the {MNIST_TRAIN - val_size} training images")
        self.root = resolve_data_dir(data_dir)
        data = load_mnist(self.root)
        images, labels = data["train"]  # (60000, 28, 28) uint8, (60000,)
        n = MNIST_TRAIN - val_size
        self.data = {"train": (images[:n], labels[:n]), "val": (images[n:], labels[n:]), "test": data["test"]}
        self.permutation = mnist_permutation(permutation_seed) if permute else None
        self.permute, self.permutation_seed = permute, permutation_seed
        self.batch_size, self.eval_batch_size, self.eval_limit, self.seed = batch_size, eval_batch_size, eval_limit, seed
        self.val_limit = val_limit

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        x = images.reshape(len(images), PIXELS).float() / 255  # (B, 784) in [0, 1]
        if self.permutation is not None:
            x = x[:, self.permutation]
        return x.unsqueeze(-1)  # (B, 784, 1)

    def train_batch(self, step):
        images, labels = self.data["train"]
        idx = epoch_batch(self.seed, "pixel_mnist/train", len(labels), self.batch_size, step)
        return self.inputs(images[idx]), labels[idx]  # (B, 784, 1), (B,)

    def loss(self, y, target):
        return F.cross_entropy(y[:, -1], target)  # the class is read at the last step

    @staticmethod
    def _accuracy(y, target):
        return {"accuracy": (y[:, -1].argmax(-1) == target).float().mean().item()}

    def evaluate(self, model, device, split="val", whole=False):
        if split not in self.splits:
            raise ValueError(f"split={split!r} is not one of {self.splits}")
        images, labels = (t[:self.limit(whole)] for t in self.data[split])
        size = self.eval_batch_size
        batches = ((self.inputs(images[i:i + size]), labels[i:i + size]) for i in range(0, len(labels), size))
        return evaluate_batches(model, batches, self.loss, device, self._accuracy,
                                last_only=self.scores_last_step_only)

    def baselines(self):
        p = torch.bincount(self.data["train"][1], minlength=CLASSES).double() / len(self.data["train"][1])
        entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
        return {"loss": entropy, "accuracy": p.max().item()}

    def describe(self):
        order = f"permuted (permutation_seed={self.permutation_seed})" if self.permute else "scan-line order"
        b = self.baselines()
        sizes = "/".join(str(len(self.data[s][1])) for s in ("train", "val", "test"))
        return (f"pixel_mnist, {order}, train/val/test {sizes}, data from {self.root}: memoryless baseline "
                f"(label marginal) accuracy {b['accuracy']:.4f}, cross-entropy {b['loss']:.4f} nats")
