"""expRNN (Lezcano-Casado & Martínez-Rubio 2019): a real orthogonal W = exp(A) with A skew-symmetric,
N(N−1)/2 parameters (the strict upper triangle of A), real state, modReLU `sign(z)·relu(|z| + b)`.
Static trivialization (the repository's `--mode exprnn`; its default `dtriv` also moves the base point every
K steps). Input map, read-out and inits as in Lezcano/expRNN `orthogonal.py`, `initialization.py`,
`1_copying.py`; its README: the orthogonal part trains best at a tenth of the others' learning rate."""
from __future__ import annotations

import math

import torch
from torch import nn

from .unitary import UnitaryRNN, skew

SKEW_INITS = ("henaff", "cayley")


def block_diagonal_skew(n: int, init: str) -> torch.Tensor:
    """The repository's initial A: 2 × 2 blocks [[0, s], [−s, 0]] on the diagonal (a zero row/column left
    over when n is odd). henaff: s ~ U(−π, π) (Henaff et al. 2016); cayley: s = −√((1−cos d)/(1+cos d)),
    d ~ U(0, π/2) (Helfrich et al. 2018's Cayley init)."""
    if init == "henaff":
        s = torch.empty(n // 2).uniform_(-math.pi, math.pi)
    elif init == "cayley":
        d = torch.empty(n // 2).uniform_(0.0, math.pi / 2)
        s = -torch.sqrt((1 - torch.cos(d)) / (1 + torch.cos(d)))
    else:
        raise ValueError(f"model.init={init!r} is not supported by model=exprnn: use one of {SKEW_INITS}")
    a = torch.zeros(n, n)
    idx = torch.arange(n // 2) * 2
    a[idx, idx + 1] = s
    return a - a.T


class ExpRNN(UnitaryRNN):
    dense_upto = math.inf  # W is a dense matrix: the hand-written backward is faster (BENCHMARKS.md)
    default_factor_lr_scale = 0.1  # expRNN's paper: the orthogonal part at lr/10
    choices = {**UnitaryRNN.choices, "init": SKEW_INITS}

    def __init__(self, input_size: int, output_size: int, hidden_size: int = 128, init: str = "henaff",
                 recurrence: str = "auto"):
        if hidden_size < 2:
            raise ValueError(f"model.hidden_size={hidden_size} must be at least 2 for model=exprnn (SO(1) is a point)")
        super().__init__(input_size, output_size, hidden_size, complex_=False, recurrence=recurrence)
        N = hidden_size
        rows, cols = torch.triu_indices(N, N, 1)
        self.theta = nn.Parameter(block_diagonal_skew(N, init)[rows, cols])  # (N(N−1)/2,)
        nn.init.kaiming_normal_(self.U.weight, nonlinearity="relu")  # the repository's input_kernel
        nn.init.uniform_(self.modrelu_bias, -0.01, 0.01)
        nn.init.kaiming_normal_(self.V.weight, nonlinearity="relu")  # 1_copying.py / 2_mnist.py `lin`
        nn.init.zeros_(self.V.bias)

    def recurrent_parameters(self):
        return [self.theta]

    def transition(self):
        B = torch.linalg.matrix_exp(skew(self.theta, self.hidden_size, complex_=False))  # (N, N)
        return lambda h: h @ B  # the repository's `input.matmul(B)`: W = B^T = exp(−A)
