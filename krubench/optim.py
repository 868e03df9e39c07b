"""The optimizer (the `optim` config group), learning-rate schedules (the `schedule` group) and early stopping on
the validation metric.

The optimizer has two parameter groups: the model's factor_parameters() at lr × factor_lr_scale, the rest at lr.

A schedule scales every parameter group's configured lr (the Kronecker factors keep their lr × factor_lr_scale)
by warm-up × decay × plateau factors:
  warm-up  linear from lr/warmup_steps to lr over the first `warmup_steps` steps (any schedule; 0 = none)
  decay    constant: 1 | cosine: from 1 to min_lr_scale at trainer.steps | step: gamma every `every` steps
  plateau  reduce_on_plateau: × `factor` after `patience` validations without improvement of the task's
           metric (in the task's direction), down to lr × min_lr_scale
Warm-up and decay are functions of the step; the plateau state and early stopping's count live in the
checkpoint (`state_dict`), so a resumed run follows exactly the lrs of an uninterrupted one.
"""
from __future__ import annotations

import math

import torch

#: each optimizer (conf/optim/<name>.yaml) and the optim keys it reads beside lr and weight_decay; a key left null
#: takes torch's default
OPTIMIZERS = {"rmsprop": (torch.optim.RMSprop, ("alpha", "momentum", "eps")),
              "adam": (torch.optim.Adam, ("betas", "eps")),
              "sgd": (torch.optim.SGD, ("momentum",))}


def build_optimizer(cfg: dict, model) -> torch.optim.Optimizer:
    """Two parameter groups: the model's factor_parameters() (Kronecker factors, a peer's W) at lr × factor_lr_scale,
    and everything else at lr."""
    factors = {id(p) for p in model.factor_parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in factors]},
              {"params": model.factor_parameters(), "lr": cfg["lr"] * cfg["factor_lr_scale"]}]
    groups = [g for g in groups if g["params"]]
    optimizer, keys = OPTIMIZERS[cfg["name"]]
    options = {k: tuple(cfg[k]) if k == "betas" else cfg[k] for k in keys if cfg[k] is not None}
    return optimizer(groups, lr=cfg["lr"], weight_decay=cfg["weight_decay"], **options)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """The saved moments and step counts under the current config's hyperparameters (lr, weight decay, ...),
    so that an explicit optim.lr=... on resume applies instead of the checkpoint's value."""
    current = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, values in zip(optimizer.param_groups, current):
        group.update(values)
        for p in group["params"]:  # RMSprop resumed with momentum > 0 after none: start its buffer at zero
            s = optimizer.state.get(p)
            if s and isinstance(optimizer, torch.optim.RMSprop) and group["momentum"] > 0:
                s.setdefault("momentum_buffer", torch.zeros_like(p))


#: the schedule keys each schedule reads (besides name); the others are unused by it
USES = {"constant": ("warmup_steps",), "cosine": ("warmup_steps", "min_lr_scale"),
        "step": ("warmup_steps", "every", "gamma"),
        "reduce_on_plateau": ("warmup_steps", "factor", "patience", "threshold", "min_lr_scale")}


def unused_keys(config: dict) -> set[str]:
    """Flattened keys of `config` that its own choices make irrelevant: the schedule's keys its schedule does
    not read, early stopping's min_delta when early stopping is off."""
    schedule = config.get("schedule") or {}
    unused = {f"schedule.{k}" for k in schedule if k != "name" and k not in USES.get(schedule.get("name"), schedule)}
    if not config.get("trainer", {}).get("early_stop_patience"):
        unused.add("trainer.early_stop_min_delta")
    return unused


class Schedule:
    def __init__(self, cfg: dict, optimizer: torch.optim.Optimizer, total_steps: int, higher_is_better: bool):
        self.cfg, self.optimizer, self.total = cfg, optimizer, total_steps
        self.base = [g["lr"] for g in optimizer.param_groups]  # the configured lrs (lr, lr × factor_lr_scale)
        self.sign = 1.0 if higher_is_better else -1.0
        self.plateau_scale, self.plateau_best, self.plateau_bad = 1.0, None, 0

    def factor(self, step: int) -> float:
        """The lr multiplier of the update that makes step `step` (1-based: the first update is step 1)."""
        cfg, warmup = self.cfg, self.cfg["warmup_steps"]
        f = min(1.0, step / warmup) if warmup > 0 else 1.0
        if cfg["name"] == "cosine":
            progress = min(1.0, max(0.0, (step - warmup) / max(1, self.total - warmup)))
            f *= cfg["min_lr_scale"] + (1 - cfg["min_lr_scale"]) * 0.5 * (1 + math.cos(math.pi * progress))
        elif cfg["name"] == "step":
            f *= cfg["gamma"] ** ((step - 1) // cfg["every"])
        return f * self.plateau_scale

    def apply(self, step: int) -> None:
        """Set the lrs of the update that makes step `step`; call before optimizer.step()."""
        f = self.factor(step)
        for group, base in zip(self.optimizer.param_groups, self.base):
            group["lr"] = base * f

    def on_validation(self, value: float) -> None:
        """reduce_on_plateau: count validations without improvement by more than `threshold`; after
        `patience` of them, multiply the lr by `factor` (not below min_lr_scale) and start counting again."""
        cfg = self.cfg
        if cfg["name"] != "reduce_on_plateau":
            return
        if self.plateau_best is None or self.sign * (value - self.plateau_best) > cfg["threshold"]:
            self.plateau_best, self.plateau_bad = value, 0
            return
        self.plateau_bad += 1
        if self.plateau_bad >= cfg["patience"]:
            self.plateau_scale = max(self.plateau_scale * cfg["factor"], cfg["min_lr_scale"])
            self.plateau_bad = 0

    def state_dict(self) -> dict:
        return {"plateau_scale": self.plateau_scale, "plateau_best": self.plateau_best, "plateau_bad": self.plateau_bad}

    def load_state_dict(self, state: dict) -> None:
        self.plateau_scale = state.get("plateau_scale", 1.0)
        self.plateau_best, self.plateau_bad = state.get("plateau_best"), state.get("plateau_bad", 0)


class EarlyStopping:
    """Stop after `patience` validations (0 = never) in which the validation metric did not improve on the best
    so far by more than `min_delta`, in the task's direction."""

    def __init__(self, patience: int, min_delta: float, higher_is_better: bool):
        self.patience, self.min_delta = patience, min_delta
        self.sign = 1.0 if higher_is_better else -1.0
        self.best, self.stale, self.stopped = None, 0, False

    def on_validation(self, value: float) -> bool:
        """Record a validation; True when training should stop now."""
        if self.best is None or self.sign * (value - self.best) > self.min_delta:
            self.best, self.stale = value, 0
        else:
            self.stale += 1
        self.stopped = self.patience > 0 and self.stale >= self.patience
        return self.stopped

    def state_dict(self) -> dict:
        return {"best": self.best, "stale": self.stale, "stopped": self.stopped}

    def load_state_dict(self, state: dict) -> None:
        """A stopped run stays stopped only under a patience it has exhausted: rerun with a larger one (or 0,
        off) to train it on."""
        self.best, self.stale = state.get("best"), state.get("stale", 0)
        self.stopped = bool(state.get("stopped")) and 0 < self.patience <= self.stale
