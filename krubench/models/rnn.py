"""Vanilla RNN with a dense N × N recurrent matrix: `h_t = σ(W h_{t-1} + U x_t + b)`, `y_t = V h_t + c`."""
from __future__ import annotations

import torch
from torch import nn

from .base import SequenceModel

RNN_INITS = ("default", "orthogonal", "identity")
RNN_NONLINEARITIES = ("tanh", "relu")  # nn.RNN's


class RNN(SequenceModel):
    choices = {"nonlinearity": RNN_NONLINEARITIES, "init": RNN_INITS}

    def __init__(self, input_size: int, output_size: int, hidden_size: int = 128,
                 nonlinearity: str = "tanh", init: str = "default"):
        super().__init__()
        if nonlinearity not in RNN_NONLINEARITIES:
            raise ValueError(f"model.nonlinearity={nonlinearity!r} is not supported by model=rnn: use tanh or relu")
        self.rnn = nn.RNN(input_size, hidden_size, nonlinearity=nonlinearity, batch_first=True)
        w = self.rnn.weight_hh_l0
        with torch.no_grad():
            if init == "orthogonal":
                nn.init.orthogonal_(w)
            elif init == "identity":  # IRNN (Le et al. 2015)
                w.copy_(torch.eye(hidden_size))
            elif init != "default":
                raise ValueError(f"model.init={init!r} is not supported by model=rnn: use one of {RNN_INITS}")
        self.V = nn.Linear(hidden_size, output_size)

    def recurrent_parameters(self):
        return [self.rnn.weight_hh_l0]

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None, last_only: bool = False):
        H, h = self.rnn(x, None if state is None else state.unsqueeze(0))  # (B, T, N), (1, B, N)
        return self.V(H[:, -1:] if last_only else H), h[0]
