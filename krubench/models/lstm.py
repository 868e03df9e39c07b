"""LSTM (torch's) and LSTM+KRU: an LSTM whose hidden-to-hidden matrices are Kronecker-factored."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .. import ops
from .base import SequenceModel
from .kru import FACTOR_INITS, MERGE_UPTO, KronFactors, init_factor

FACTORISATIONS = ("per_gate", "joint")


class LSTM(SequenceModel):
    gates = 4

    def __init__(self, input_size: int, output_size: int, hidden_size: int = 128):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.V = nn.Linear(hidden_size, output_size)

    def recurrent_parameters(self):
        return [self.lstm.weight_hh_l0]

    def forward(self, x: torch.Tensor, state=None, last_only: bool = False):
        if state is not None:
            state = tuple(s.unsqueeze(0) for s in state)
        H, (h, c) = self.lstm(x, state)  # (B, T, N)
        return self.V(H[:, -1:] if last_only else H), (h[0], c[0])


class LSTMKRU(SequenceModel):
    """Gates `[i f g o] = W_ih x_t + b + W_hh h_{t-1}` with W_hh Kronecker-factored.

    factorisation=per_gate: four N × N products, one per gate. joint: one 4N × N product whose first
    factor is rectangular (4·q_0 × q_0). With complex factors the real part of `W_hh h` feeds the gates
    (the state stays real).
    """

    penalised = True
    gates = 4
    choices = {"init": FACTOR_INITS, "factorisation": FACTORISATIONS, "kernel": ops.KERNELS}
    positive = {**SequenceModel.positive, "merge_upto": "1 turns merging off"}

    def __init__(self, input_size: int, output_size: int, hidden_size: int = 128, factor_size: int = 2,
                 factors: Sequence[int] | None = None, complex: bool = False, init: str = "unitary",
                 factorisation: str = "per_gate", merge_upto: int = MERGE_UPTO, kernel: str = "auto"):
        super().__init__()
        sizes = ops.factor_sizes(hidden_size, factor_size, factors)
        self.hidden_size = hidden_size
        self.factorisation = factorisation
        self.kernel = kernel  # ops.KERNELS: which backend runs the recurrence
        self.W_ih = nn.Linear(input_size, 4 * hidden_size)
        if factorisation == "per_gate":
            self.W_hh = nn.ModuleList([KronFactors(sizes, complex, init, merge_upto) for _ in range(4)])
        elif factorisation == "joint":
            kf = KronFactors(sizes, complex, init, merge_upto)
            # Four stacked unitaries scaled by 1/2: orthonormal columns, so the unitary penalty starts at 0.
            first = 0.5 * torch.cat([init_factor(sizes[0], init, complex) for _ in range(4)], dim=0)  # (4 q0, q0)
            kf.factors[0] = nn.Parameter(first)
            self.W_hh = nn.ModuleList([kf])
        else:
            raise ValueError(f"model.factorisation={factorisation!r} is not supported: use one of {FACTORISATIONS}")
        self.V = nn.Linear(hidden_size, output_size)

    def recurrent_parameters(self):
        return [p for kf in self.W_hh for p in kf.factors]

    def factor_parameters(self):
        return self.recurrent_parameters()

    def unitary_penalty(self):
        return sum(kf.penalty() for kf in self.W_hh)

    def kron_backend(self, device) -> str:
        return ops.backend_for(self.kernel, device)

    def forward(self, x: torch.Tensor, state=None, last_only: bool = False):
        B, N = x.shape[0], self.hidden_size
        h, c = (x.new_zeros(B, N), x.new_zeros(B, N)) if state is None else state
        # the whole recurrence in one compiled call (C++ or CUDA); the reference loops over time
        H, C = ops.lstm_kru_layer(x, self.W_ih.weight, self.W_ih.bias, h, c, [list(kf.factors) for kf in self.W_hh],
                                  self.kernel, self.W_hh[0].merge_upto)
        return self.V(H[:, -1:] if last_only else H), (H[:, -1], C[:, -1])
