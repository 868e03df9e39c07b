"""Full-capacity uRNN (Wisdom, Powers, Hershey, Le Roux, Atlas 2016): the uRNN with W any N × N unitary
matrix (N² real degrees of freedom, the dimension of U(N)). Input map, read-out, h_0 and inits as the uRNN's
(Wisdom et al. built on its code).

Manifold method: the exponential map, `W = exp(S(θ)) W_0` with S(θ) skew-Hermitian (N² real θ, zero at
the start) and W_0 a fixed Haar-random unitary (how Wisdom et al. draw their initial W: unverified). Wisdom et al. instead keep W itself and step along the
Riemannian gradient with a Cayley retraction, `W ← (I + λ/2 A)^{-1}(I − λ/2 A) W`, `A = G W^H − W G^H`,
an update outside the optimiser (plain gradient, its own rate lr_natGrad). The trainer has one optimiser
for every model (RMSprop, with the recurrent part at lr × optim.factor_lr_scale); the exponential map lets
that optimiser train W while W stays unitary to float precision by construction (exp of a skew-Hermitian
matrix is unitary; exp maps onto all of U(N)), at one O(N³) matrix exponential per sequence, not per step.
It is expRNN's method (Lezcano-Casado & Martínez-Rubio 2019) on the complex manifold."""
from __future__ import annotations

import math

import torch
from torch import nn

from .kru import random_unitary
from .unitary import UnitaryRNN, skew, skew_size
from .urnn import init_urnn_maps


class FCURNN(UnitaryRNN):
    always_complex = True
    dense_upto = math.inf  # W is a dense matrix: the hand-written backward (measured about as fast)

    def __init__(self, input_size: int, output_size: int, hidden_size: int = 128, recurrence: str = "auto"):
        super().__init__(input_size, output_size, hidden_size, complex_=True, recurrence=recurrence)
        N = hidden_size
        self.theta = nn.Parameter(torch.zeros(skew_size(N, complex_=True)))  # exp(0) = I: W starts at W_0
        self.register_buffer("base", random_unitary(N, complex_=True))  # W_0, saved with the model
        init_urnn_maps(self, input_size, output_size)

    def recurrent_parameters(self):
        return [self.theta]

    def transition(self):
        W = torch.linalg.matrix_exp(skew(self.theta, self.hidden_size, complex_=True)) @ self.base  # (N, N)
        Wt = W.T
        return lambda h: h @ Wt  # rows: (W h)^T = h^T W^T
