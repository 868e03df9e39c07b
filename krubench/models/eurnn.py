"""Efficient Unitary RNN (Jing, Shen, Dubček, Peurifoy, Skirlo, LeCun, Tegmark, Soljačić 2017): W is a
product of layers of 2 × 2 rotations on disjoint index pairs, times a diagonal of phases if complex.

Tunable style: `capacity` L layers alternating between the pairs (0,1)(2,3)… and (1,2)(3,4)…; L = N
spans all of U(N). FFT style: log2 N layers pairing j with j + N/2, then N/4, …, 1 (N a power of 2).
A pair's rotation is `[[cos θ, sin θ], [−e^{iφ} sin θ, e^{iφ} cos θ]]` (φ = 0 if real), θ, φ, ω ~ U(−π, π).
Parameter shapes, input map (U(±0.01), no bias), modReLU bias (0) and read-out (Re h only, N → out,
U(±√(6/(n_in + n_out))), bias 0.01) as in jingli9111/EUNN-tensorflow `EUNN.py`, `EURNN.py`,
`copying_task.py`. An index without a partner in its layer passes unchanged (the reference's real
tunable style zeroes it in even-N layers of the second kind, a bug that would break orthogonality)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .unitary import UnitaryRNN


def layer_pairs(n: int, offset: int = 0, stride: int = 1) -> torch.Tensor:
    """(P, 2) index pairs (j, j + stride) of one layer: tunable layers pair from `offset` with stride 1;
    FFT layers pair every j whose `stride` bit is 0 with j + stride."""
    if stride == 1:
        a = torch.arange(offset, n - 1, 2)
    else:
        a = torch.tensor([j for j in range(n) if not j & stride])
    return torch.stack([a, a + stride], dim=1)


def angles(shape) -> nn.Parameter:
    """Rotation angles or phases, U(−π, π) as the reference's theta_phi_initializer."""
    return nn.Parameter(torch.empty(shape).uniform_(-math.pi, math.pi))


def check_options(hidden_size: int, capacity: int | None, fft: bool) -> int:
    """The number of rotation layers, or a ValueError naming the bad value."""
    if hidden_size < 2:
        raise ValueError(f"model.hidden_size={hidden_size} must be at least 2 for model=eurnn (rotations act on pairs)")
    if fft:
        depth = round(math.log2(hidden_size))
        if 2**depth != hidden_size:
            raise ValueError(f"model.hidden_size={hidden_size} is not a power of 2, which model.fft=true needs: "
                             f"use {2 ** math.floor(math.log2(hidden_size))} or {2 ** math.ceil(math.log2(hidden_size))}, "
                             "or model.fft=false (tunable style, any N)")
        if capacity not in (None, depth):
            raise ValueError(f"model.capacity={capacity} does not apply with model.fft=true, which has log2 N = {depth} "
                             "layers: set model.capacity=null")
        return depth
    capacity = 2 if capacity is None else capacity
    if capacity < 1:
        raise ValueError(f"model.capacity={capacity} must be at least 1 (layers of rotations; the EURNN paper uses 2 "
                         f"to N = {hidden_size}), or null for 2")
    return capacity


class EURNN(UnitaryRNN):
    dense_upto = 128  # the hand-written backward is faster up to here (BENCHMARKS.md)

    def __init__(self, input_size: int, output_size: int, hidden_size: int = 128, capacity: int | None = None,
                 fft: bool = False, complex: bool = True, recurrence: str = "auto"):
        L = check_options(hidden_size, capacity, fft)
        super().__init__(input_size, output_size, hidden_size, complex_=complex, readout="real", recurrence=recurrence)
        N, self.depth = hidden_size, L
        self.fft = fft
        if fft:
            kinds = [layer_pairs(N, stride=N >> (i + 1)) for i in range(L)]  # one kind per layer
            shapes = [(L, N // 2)]
        else:
            kinds = [layer_pairs(N, offset=0), layer_pairs(N, offset=1)]  # alternating
            shapes = [((L + 1) // 2, N // 2), (L // 2, (N - 1) // 2)]
        for k, pairs in enumerate(kinds):
            self.register_buffer(f"pairs{k}", pairs, persistent=False)
        self.theta = nn.ParameterList([angles(s) for s in shapes])
        self.phi = nn.ParameterList([angles(s) for s in shapes]) if complex else None
        self.omega = angles(N) if complex else None
        nn.init.uniform_(self.U.weight, -0.01, 0.01)
        nn.init.zeros_(self.modrelu_bias)
        bound = math.sqrt(6.0 / (output_size + input_size))
        nn.init.uniform_(self.V.weight, -bound, bound)
        nn.init.constant_(self.V.bias, 0.01)

    def recurrent_parameters(self):
        return [*self.theta, *(self.phi or []), *([self.omega] if self.omega is not None else [])]

    def layers(self):
        """Per layer, right to left: (pairs (P, 2), θ (P,), φ (P,) or None)."""
        for layer in range(self.depth):
            # FFT: layer i has pair pattern i and row i of the one angle table; tunable: they alternate
            kind, group, row = (layer, 0, layer) if self.fft else (layer % 2, layer % 2, layer // 2)
            phi = self.phi[group][row] if self.phi is not None else None
            yield getattr(self, f"pairs{kind}"), self.theta[group][row], phi

    def transition(self):
        N = self.hidden_size
        stages = []  # y = diag · h + off · h[:, partner], one (diag, off, partner) per layer
        for pairs, theta, phi in self.layers():
            a, b = pairs[:, 0], pairs[:, 1]
            c, s = torch.cos(theta), torch.sin(theta)
            if phi is not None:
                e = torch.polar(torch.ones_like(phi), phi)  # e^{iφ}
                c, s, ec, es = c.to(e.dtype), s.to(e.dtype), e * c, e * s
            else:
                ec, es = c, s
            diag = torch.ones(N, dtype=c.dtype, device=c.device).index_put((a,), c).index_put((b,), ec)
            off = torch.zeros(N, dtype=c.dtype, device=c.device).index_put((a,), s).index_put((b,), -es)
            partner = torch.arange(N, device=c.device).index_put((a,), b).index_put((b,), a)
            stages.append((diag, off, partner))
        phases = torch.polar(torch.ones_like(self.omega), self.omega) if self.omega is not None else None

        def step(h):  # (B, N) -> (B, N)
            for diag, off, partner in stages:
                h = diag * h + off * h[:, partner]
            return h * phases if phases is not None else h

        return step
