"""What the unitary-RNN peers share (uRNN, full-capacity uRNN, EURNN, expRNN): the recurrence
`h_t = modReLU(W h_{t-1} + U x_t; b)` with a norm-preserving W, `y_t = V read(h_t) + c`, and the
skew-symmetric/-Hermitian matrices the exponential-map models build W from. Each model file says only
how it applies W and how its reference code initialises U, V and h_0."""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import SequenceModel
from .unitary_recurrence import Transition, recurrence, recurrence_ref

READOUTS = ("re_im", "real")  # V reads [Re h; Im h] (uRNN) or Re h only (EURNN); a real state is read as is
# `model.recurrence`: how the loop over time runs (the same math). auto: each model's measured rule (`dense_upto`);
# dense: the hand-written backward, W built densely once per sequence, at any N; reference: autograd through the
# per-step loop (`recurrence_ref`, the specification)
RECURRENCES = ("auto", "dense", "reference")


def skew(theta: torch.Tensor, n: int, complex_: bool) -> torch.Tensor:
    """The n × n skew-symmetric (real) or skew-Hermitian (complex) matrix whose free parameters are `theta`:
    real, n(n−1)/2 entries, the strict upper triangle row by row; complex, n² entries, the real then the
    imaginary parts of that triangle, then the imaginary diagonal. So the parameter count is the dimension of
    SO(n) or U(n), the papers' count."""
    rows, cols = torch.triu_indices(n, n, 1, device=theta.device)
    k = rows.numel()
    upper = torch.zeros(n, n, dtype=theta.dtype, device=theta.device).index_put((rows, cols), theta[:k])
    if not complex_:
        return upper - upper.T
    imag = torch.zeros_like(upper).index_put((rows, cols), theta[k:2 * k])
    imag = imag + imag.T + torch.diag(theta[2 * k:])
    return torch.complex(upper - upper.T, imag)


def skew_size(n: int, complex_: bool) -> int:
    """How many free parameters `skew` takes."""
    return n * n if complex_ else n * (n - 1) // 2


def unitarity_error(w: torch.Tensor) -> torch.Tensor:
    """‖W^H W − I‖_F²: zero exactly when W is unitary (orthogonal if real)."""
    eye = torch.eye(w.shape[-1], dtype=w.dtype, device=w.device)
    return (w.conj().T @ w - eye).abs().pow(2).sum()


def glorot_bound(fan_in: int, fan_out: int) -> float:
    """Glorot-uniform's half-width, the uRNN code's `initialize_matrix`."""
    return math.sqrt(6.0 / (fan_in + fan_out))


class UnitaryRNN(SequenceModel):
    """The shared recurrence, with modReLU as `ops.modrelu` (eps 1e-6 in |z| + eps; the references use 1e-5).
    Subclasses build W's parameters, initialise U, V and the modReLU bias as their reference code does, and
    define `transition()` (W's action, precomputed once per sequence) and `recurrent_parameters()` (W's
    parameters: they train at lr × optim.factor_lr_scale, the peers' own split where their papers use one)."""

    # `recurrence="auto"` runs the hand-written backward (`recurrence`, its loops stepping with W built densely once
    # per sequence) up to N = dense_upto, autograd's loop above: measured per model (BENCHMARKS.md "The unitary
    # peers' recurrence"); a model whose W is a dense matrix anyway (expRNN, FC-uRNN) sets it to infinity.
    dense_upto = 0
    choices = {"recurrence": RECURRENCES}

    def __init__(self, input_size: int, output_size: int, hidden_size: int, complex_: bool, readout: str = "re_im",
                 recurrence: str = "auto"):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout={readout!r} is not supported: use one of {READOUTS}")
        if recurrence not in RECURRENCES:
            raise ValueError(f"model.recurrence={recurrence!r} is not supported: use one of {RECURRENCES}")
        self.recurrence = recurrence
        self.hidden_size = hidden_size
        self.complex = complex_
        self.readout = readout
        width = 2 if complex_ and readout == "re_im" else 1
        self.U = nn.Linear(input_size, hidden_size * (2 if complex_ else 1), bias=False)  # [Re; Im] if complex
        self.modrelu_bias = nn.Parameter(torch.zeros(hidden_size))
        self.V = nn.Linear(hidden_size * width, output_size)
        self.h0 = None  # a learned initial state (uRNN), or zeros

    def learn_initial_state(self, bound: float) -> None:
        """A trained h_0, U(±bound) per real coordinate (uRNN's `h_0`)."""
        shape = (self.hidden_size, 2) if self.complex else (self.hidden_size,)
        self.h0 = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))

    def transition(self) -> Transition:
        raise NotImplementedError

    def runs_dense(self) -> bool:
        """Whether the hand-written backward runs (else autograd through the loop): `recurrence`, resolved."""
        return self.recurrence == "dense" or (self.recurrence == "auto" and self.hidden_size <= self.dense_upto)

    def describe_compute(self, device) -> str:
        how = "the hand-written backward" if self.runs_dense() else "autograd through the loop"
        return f"recurrence: {how} (model.recurrence={self.recurrence})"

    def factor_parameters(self):
        return self.recurrent_parameters()

    def recurrent_matrix(self) -> torch.Tensor:
        """The dense N × N W, from its action on the identity (tests and the unitarity diagnostic)."""
        eye = torch.eye(self.hidden_size, dtype=self.state_dtype(), device=self.modrelu_bias.device)
        return self.transition()(eye).T  # row i of the result is W e_i

    def unitary_penalty(self) -> torch.Tensor:
        """‖W^H W − I‖²: W is unitary by construction, so this is a diagnostic the trainer logs (float error)."""
        return unitarity_error(self.recurrent_matrix())

    def initial_state(self, batch: int, device) -> torch.Tensor:
        if self.h0 is not None:
            h0 = torch.view_as_complex(self.h0) if self.complex else self.h0
            return h0.expand(batch, -1)
        return torch.zeros(batch, self.hidden_size, dtype=self.state_dtype(), device=device)

    def state_dtype(self) -> torch.dtype:
        """The parameters' precision, complex if the state is."""
        real = self.modrelu_bias.dtype
        return torch.complex(torch.zeros((), dtype=real), torch.zeros((), dtype=real)).dtype if self.complex else real

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None, last_only: bool = False):
        h = self.initial_state(x.shape[0], x.device) if state is None else state  # (B, N)
        u = self.U(x)  # (B, T, N) or (B, T, 2N)
        if self.complex:
            u = torch.complex(*u.chunk(2, dim=-1))  # (B, T, N) complex
        step = self.transition()
        if self.runs_dense():
            H = recurrence(step, u, h, self.modrelu_bias, self.recurrent_parameters())
        else:
            H = recurrence_ref(step, u, h, self.modrelu_bias)  # (B, T, N)
        h = H[:, -1] if H.shape[1] else h
        if last_only:
            H = H[:, -1:]
        if not self.complex:
            features = H
        elif self.readout == "re_im":
            features = torch.cat([H.real, H.imag], dim=-1)  # (B, T, 2N)
        else:
            features = H.real  # (B, T, N)
        return self.V(features), h
