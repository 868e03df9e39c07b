"""What every krubench model offers the trainer: `forward(x, state) -> (y, state)` over a whole
sequence, and its parameter counts (total and recurrent-only)."""
from __future__ import annotations

import torch
from torch import nn


def count_real(params) -> int:
    """Number of real parameters: a complex entry counts as two."""
    return sum(p.numel() * (2 if p.is_complex() else 1) for p in params)


class SequenceModel(nn.Module):
    """x: (B, T, input_size) -> y: (B, T, output_size), plus the final recurrent state. With `last_only=True`
    y is the last step's output only, (B, 1, output_size): tasks scored at the last step (pixel MNIST, adding)
    then skip the read-out of the other T − 1 steps and its gradient."""

    default_factor_lr_scale = 1.0  # optim.factor_lr_scale when the config leaves it null
    penalised = False  # whether trainer.unitary_penalty acts on it (its unitary_penalty() has a gradient to follow)
    gates = 1  # hidden-sized vectors a step computes per unit of state (an LSTM's 4 gates): the memory estimate's width
    always_complex = False  # a complex state without a `complex` option (the uRNNs)

    # The `model` config's keys are the constructor's keywords after the sizes (config.constructor_options):
    # names, types and Python defaults in one place; conf/model/<name>.yaml holds the defaults users see.
    #: the accepted values of string keywords: the schema makes each a choice, refused at composition otherwise
    choices: dict[str, tuple[str, ...]] = {}
    #: keys that must be > 0 and keys that must be >= 0 (config.validate), each with what its bound means
    positive: dict[str, str] = {"hidden_size": ""}
    non_negative: dict[str, str] = {}

    @classmethod
    def state_width(cls, cfg: dict) -> int:
        """Hidden-sized values a time step keeps per sequence, for the memory estimate."""
        return cfg["hidden_size"] * cls.gates

    @classmethod
    def complex_state(cls, cfg: dict) -> bool:
        """Whether the `model` config `cfg` gives this model a complex state."""
        return cfg.get("complex", cls.always_complex)

    def recurrent_parameters(self) -> list[nn.Parameter]:
        """The hidden-to-hidden matrices (what the paper counts as recurrent parameters)."""
        raise NotImplementedError

    def factor_parameters(self) -> list[nn.Parameter]:
        """The parameters trained at lr × optim.factor_lr_scale: the Kronecker factors, the unitary peers' W
        (expRNN's paper trains it at lr/10); none for dense models."""
        return []

    def param_counts(self) -> dict[str, int]:
        return {"total": count_real(self.parameters()), "recurrent": count_real(self.recurrent_parameters())}

    def kron_backend(self, device) -> str:
        """The Kronecker backend (ops.BACKENDS) this model's forward runs on `device`; 'none' without factors."""
        return "none"

    def describe_compute(self, device) -> str:
        """How this model's recurrence runs on `device`, for the run's log."""
        return f"Kronecker backend: {self.kron_backend(device)}"

    def unitary_penalty(self) -> torch.Tensor:
        """Σ_f ‖W_f^H W_f − I‖²; zero for models without Kronecker factors."""
        return torch.zeros((), device=next(self.parameters()).device)
