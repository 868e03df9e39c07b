"""What a task offers the trainer. A task knows nothing about models beyond `forward(x) -> (y, state)`.

Synthetic tasks draw batch `s` from a generator seeded by (seed, "train", s), so the data of a step
does not depend on what ran before it: a resumed run sees exactly the batches it would have seen.
"""
from __future__ import annotations

import hashlib

import torch


def seeded_generator(seed: int, stream: str, index: int = 0) -> torch.Generator:
    """An independent CPU generator per (seed, stream, index)."""
    digest = hashlib.sha256(f"{seed}/{stream}/{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def epoch_batch(seed: int, stream: str, n: int, batch_size: int, step: int) -> torch.Tensor:
    """Indices (batch_size,) of batch `step` of a walk over n examples in epochs, each epoch in its own
    order drawn from (seed, stream, epoch); an epoch's last partial batch is dropped."""
    epoch, i = divmod(step, n // batch_size)
    order = torch.randperm(n, generator=seeded_generator(seed, stream, epoch))  # (n,)
    return order[i * batch_size:(i + 1) * batch_size]


class Task:
    name: str
    input_size: int
    output_size: int
    #: the headline validation metric (a key of `evaluate`) and its direction, used to pick best.pt
    metric: str = "loss"
    higher_is_better: bool = False
    #: the unit of each key of `evaluate` (and of the training loss, "loss"): axis labels and chart titles
    units: dict[str, str] = {"loss": "nats"}

    #: splits `evaluate` accepts; the trainer validates on "val" and, at the end, evaluates the best
    #: checkpoint on every split (e.g. "val" and "test"), whole
    splits: tuple[str, ...] = ("val",)
    #: evaluate on the first eval_limit items of a split only, the final evaluations too (smoke runs; None: all)
    eval_limit: int | None = None
    #: validate during training on the first val_limit items only; the final validation and test read all
    val_limit: int | None = None

    #: real-data tasks take the data root as the constructor keyword `data_dir` (None: the default root)
    needs_data: bool = False
    #: the loss and metrics read the model's output at the last step only: the model then computes only that one
    scores_last_step_only: bool = False

    # The `task` config's keys are the constructor's keywords less seed and data_dir (config.constructor_options).
    #: the accepted values of string keywords: the schema makes each a choice, refused at composition otherwise
    choices: dict[str, tuple[str, ...]] = {}
    #: keys that must be > 0 when set (config.validate), each with what its bound means
    positive: dict[str, str] = {"batch_size": ""}
    non_negative: dict[str, str] = {}

    #: bytes per time step of one validation sequence that a synthetic task draws up front and holds for the
    #: whole run (the memory estimate); 0: none held
    validation_bytes_per_step: int = 0

    @classmethod
    def sequence_length(cls, cfg: dict) -> tuple[int, str] | None:
        """Time steps of one training sequence of the `task` config `cfg` and the key that sets them, for the
        memory estimate; None where the data decides."""
        return None

    @classmethod
    def setting(cls, cfg) -> str:
        """The benchmark setting a `task` config (a dict or the composed node) describes, e.g. copy_T1000,
        permuted_mnist, music_jsb: the prefix of its presets conf/experiment/paper/<setting>_<model>.yaml, the
        report's grouping key, the start of run folder names, and `setting` in results.json. From the config
        alone, since run folders are named before a task is built. Tasks with variants override it."""
        return cls.name

    def train_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs (B, T, input_size), targets) for optimizer step `step`."""
        raise NotImplementedError

    def loss(self, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training loss from the model's outputs y: (B, T, output_size)."""
        raise NotImplementedError

    def train_loss(self, model, step: int, device) -> torch.Tensor:
        """Loss of optimizer step `step`. Tasks that carry state across steps (truncated BPTT) or need
        masks override this."""
        x, target = (t.to(device) for t in self.train_batch(step))
        y, _ = model(x, last_only=self.scores_last_step_only)
        return self.loss(y, target)

    def evaluate(self, model, device, split: str = "val", whole: bool = False) -> dict[str, float]:
        """Metrics on a fixed split (`whole`: the final evaluations, without val_limit); always contains "loss"."""
        raise NotImplementedError

    def limit(self, whole: bool) -> int | None:
        """How many items of a split `evaluate` reads (None: all): eval_limit, and val_limit unless `whole`."""
        limits = [n for n in (self.eval_limit, None if whole else self.val_limit) if n is not None]
        return min(limits, default=None)

    def state_dict(self) -> dict:
        """Task state a resumed run needs (e.g. a carried hidden state); saved in checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def baselines(self) -> dict[str, float]:
        """What the best model without memory achieves, for each key of `evaluate` that has one."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the log: the task and its memoryless baseline."""
        return f"{self.name}: memoryless baseline " + ", ".join(f"{k}={v:.4g}" for k, v in self.baselines().items())


def config_value(cfg, key: str, default=None):
    """A task config's value, an Enum choice (the composed config's) by its value."""
    v = cfg.get(key, default)
    return getattr(v, "value", v)


@torch.no_grad()  # no graph: evaluation at T=1000 with autograd's loop would hold every step's tensors
def evaluate_batches(model, batches, loss_fn, device, extra=None, last_only=False) -> dict[str, float]:
    """Average `loss_fn` (and the per-batch `extra` metrics) over (x, target) batches, weighted by batch size;
    `last_only`: the model's outputs at the last step only (tasks scored there)."""
    sums: dict[str, float] = {}
    count = 0
    was_training = model.training
    model.eval()
    for x, target in batches:
        x, target = x.to(device), target.to(device)
        y, _ = model(x, last_only=last_only)
        metrics = {"loss": loss_fn(y, target).item(), **(extra(y, target) if extra else {})}
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v * x.shape[0]
        count += x.shape[0]
    model.train(was_training)
    return {k: v / count for k, v in sums.items()}
