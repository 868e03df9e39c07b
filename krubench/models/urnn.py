"""Unitary evolution RNN (Arjovsky, Shah, Bengio 2016), the restricted-capacity uRNN:
`W = D_3 R_2 F^{-1} D_2 Π R_1 F D_1` with diagonal phase matrices D_k = diag(e^{iθ_k}), Householder
reflections R_k = I − 2 v_k v_k^H/‖v_k‖², the unitary FFT F, and a fixed random permutation Π.
7N real recurrent parameters, O(N log N) per step. Input map, read-out, h_0 and inits as in
amarshah/complex_RNN `models.py` (`complex_RNN`)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .unitary import UnitaryRNN, glorot_bound


def reflection(v: torch.Tensor):
    """h ↦ (I − 2 v v^H/‖v‖²) h for each row h of (B, N), with what does not depend on h computed once.
    The reference code reflects on conj(v): the same family of matrices, with v stored conjugated."""
    v_conj, scaled = v.conj(), (2 / v.abs().pow(2).sum()) * v
    return lambda h: h - (h @ v_conj).unsqueeze(-1) * scaled


def init_urnn_maps(model: UnitaryRNN, input_size: int, output_size: int) -> None:
    """The reference's input map (V_re, V_im: Glorot, no bias), modReLU bias U(±0.01), read-out (Glorot on
    [Re h; Im h], zero bias) and learned h_0 (U(±√2·√(3/2N))); the full-capacity uRNN keeps them."""
    N = model.hidden_size
    nn.init.uniform_(model.U.weight, -glorot_bound(input_size, N), glorot_bound(input_size, N))
    nn.init.uniform_(model.modrelu_bias, -0.01, 0.01)
    nn.init.uniform_(model.V.weight, -glorot_bound(2 * N, output_size), glorot_bound(2 * N, output_size))
    nn.init.zeros_(model.V.bias)
    model.learn_initial_state(math.sqrt(3.0 / N))


class URNN(UnitaryRNN):
    always_complex = True
    dense_upto = 64  # the hand-written backward is faster up to here (BENCHMARKS.md); the presets' N run autograd's loop

    def __init__(self, input_size: int, output_size: int, hidden_size: int = 128, recurrence: str = "auto"):
        super().__init__(input_size, output_size, hidden_size, complex_=True, recurrence=recurrence)
        N = hidden_size
        # The reference draws every matrix Glorot-uniform with its own shape: θ as 3 × N, the reflections 2 × 2N.
        self.theta = nn.Parameter(torch.empty(3, N).uniform_(-glorot_bound(3, N), glorot_bound(3, N)))
        b = glorot_bound(2, 2 * N)
        self.reflections = nn.Parameter(torch.complex(torch.empty(2, N).uniform_(-b, b), torch.empty(2, N).uniform_(-b, b)))
        self.register_buffer("permutation", torch.randperm(N))  # fixed, saved with the model
        init_urnn_maps(self, input_size, output_size)

    def recurrent_parameters(self):
        return [self.theta, self.reflections]

    def transition(self):
        d1, d2, d3 = torch.polar(torch.ones_like(self.theta), self.theta)  # (N,) each: e^{iθ_k}
        r1, r2 = (reflection(v) for v in self.reflections)
        perm = self.permutation

        def step(h):  # (B, N) -> (B, N), right to left through W's factors
            h = torch.fft.fft(d1 * h, norm="ortho")
            h = r1(h)[:, perm]  # (Π h)_j = h_{π(j)}, the reference's `input[:, index_permute]`
            h = torch.fft.ifft(d2 * h, norm="ortho")
            return d3 * r2(h)

        return step
