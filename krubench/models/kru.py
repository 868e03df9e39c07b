"""Kronecker Recurrent Unit: `h_t = σ(W h_{t-1} + U x_t + b)`, `W = W_0 ⊗ … ⊗ W_{F-1}`, `y_t = V h_t + c`."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .. import ops
from .base import SequenceModel

FACTOR_INITS = ("unitary", "identity")
MAP_INITS = ("glorot", "torch")  # input map and read-out: Glorot-uniform (uRNN), or nn.Linear's default


def random_unitary(n: int, complex_: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """A Haar-random unitary (complex) or orthogonal (real) n × n matrix: QR of a Gaussian with the
    phases of R's diagonal moved into Q (Mezzadri 2007)."""
    if complex_:
        a = torch.complex(torch.randn(n, n, generator=generator), torch.randn(n, n, generator=generator))
    else:
        a = torch.randn(n, n, generator=generator)
    q, r = torch.linalg.qr(a)
    d = torch.diagonal(r)
    return (q * (d / d.abs()).unsqueeze(0)).contiguous()  # LAPACK's Q is column-major


def init_factor(n: int, how: str, complex_: bool) -> torch.Tensor:
    if how == "unitary":
        return random_unitary(n, complex_)
    if how == "identity":
        return torch.eye(n, dtype=torch.complex64 if complex_ else torch.float32)
    raise ValueError(f"model.init={how!r} is not supported: use one of {FACTOR_INITS}")


def unitary_penalty(factors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_f ‖W_f^H W_f − I‖_F²: zero exactly when every factor is unitary (orthogonal if real)."""
    total = 0.0
    for w in factors:
        gram = w.conj().transpose(-2, -1) @ w
        eye = torch.eye(w.shape[1], dtype=w.dtype, device=w.device)
        total = total + (gram - eye).abs().pow(2).sum()
    return total


class KronFactors(nn.Module):
    """Square factors W_f whose Kronecker product is the N × N recurrent matrix."""

    def __init__(self, sizes: Sequence[int], complex_: bool, init: str, merge_upto: int):
        super().__init__()
        self.sizes = list(sizes)
        self.merge_upto = merge_upto
        self.factors = nn.ParameterList([nn.Parameter(init_factor(s, init, complex_)) for s in self.sizes])

    def stages(self, backend: str = "reference") -> list[torch.Tensor]:
        """The factors as applied by `backend`: small neighbours merged up to `merge_upto`, capped at the
        size that backend runs fastest (same W, fewer ops)."""
        fs = list(self.factors)
        size = ops.merge_limit(backend, self.merge_upto)
        return ops.merge_factors(fs, size) if size > 1 else fs

    def penalty(self) -> torch.Tensor:
        return unitary_penalty(list(self.factors))


class KRU(SequenceModel):
    # the factors at lr/10 by default: at the full lr they drift off unitary (adding T=100: penalty 0.36, no
    # learning; lr/10: 3 of 3 seeds learn, penalty <= 0.011) and pixel MNIST stays at chance (RESULTS.md)
    default_factor_lr_scale = 0.1

    def __init__(
        self,
        input_size: int,
        output_size: int,
        hidden_size: int = 128,
        factor_size: int = 2,
        factors: Sequence[int] | None = None,
        complex: bool = True,
        nonlinearity: str = "modrelu",
        init: str = "unitary",
        merge_upto: int = 16,
        kernel: str = "auto",
        input_bias: bool | None = None,
        input_init: str = "glorot",
        modrelu_bias_init: float = 0.01,
        readout_init: str = "glorot",
    ):
        super().__init__()
        if nonlinearity not in ops.NONLINEARITIES:
            raise ValueError(f"model.nonlinearity={nonlinearity!r} is not supported: use one of {ops.NONLINEARITIES}")
        for key, value in (("input_init", input_init), ("readout_init", readout_init)):
            if value not in MAP_INITS:
                raise ValueError(f"model.{key}={value!r} is not supported: use one of {MAP_INITS}")
        if input_bias is None:  # modReLU has a bias of its own; an input bias would be added again at every step
            input_bias = nonlinearity != "modrelu"
        self.hidden_size = hidden_size
        self.complex = complex
        self.nonlinearity = nonlinearity
        self.kernel = kernel  # ops.KERNELS: which backend runs the recurrence
        self.W = KronFactors(ops.factor_sizes(hidden_size, factor_size, factors), complex, init, merge_upto)
        self.U = nn.Linear(input_size, hidden_size * (2 if complex else 1), bias=input_bias)  # [Re; Im] if complex
        self.modrelu_bias = None
        if nonlinearity == "modrelu":  # uRNN: U(±0.01); 0 starts modReLU as the identity
            self.modrelu_bias = nn.Parameter(torch.empty(hidden_size).uniform_(-modrelu_bias_init, modrelu_bias_init))
        self.V = nn.Linear(hidden_size * (2 if complex else 1), output_size)  # reads [Re h; Im h]
        if input_init == "glorot":  # uRNN: Re and Im halves each Glorot-uniform for in -> N
            bound = math.sqrt(6.0 / (input_size + hidden_size))
            nn.init.uniform_(self.U.weight, -bound, bound)
            if self.U.bias is not None:
                nn.init.zeros_(self.U.bias)
        if readout_init == "glorot":  # uRNN: Glorot-uniform on [Re h; Im h], zero bias
            nn.init.xavier_uniform_(self.V.weight)
            nn.init.zeros_(self.V.bias)

    def recurrent_parameters(self):
        return list(self.W.factors)

    def factor_parameters(self):
        return list(self.W.factors)

    def unitary_penalty(self):
        return self.W.penalty()

    def kron_backend(self, device) -> str:
        return ops.backend_name(device, self.kernel)

    def initial_state(self, batch: int, device) -> torch.Tensor:
        dtype = torch.complex64 if self.complex else torch.float32
        return torch.zeros(batch, self.hidden_size, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None):
        B, T, _ = x.shape
        h0 = self.initial_state(B, x.device) if state is None else state
        backend = ops.backend_name(x.device, self.kernel)
        if backend == "cpp":
            return self._forward_lanes(x, h0)
        u = ops.at_least_fp32(self.U(x))  # (B, T, N) or (B, T, 2N); fp16/bf16 under autocast, the recurrence fp32
        if self.complex:
            u = torch.complex(*u.chunk(2, dim=-1))  # (B, T, N) complex
        H = ops.kru_recurrence(u, h0, self.W.stages(backend), self.nonlinearity, self.modrelu_bias,
                               kernel=backend)  # (B, T, N)
        features = torch.cat([H.real, H.imag], dim=-1) if self.complex else H  # (B, T, 2N) or (B, T, N)
        return self.V(features), H[:, -1]

    def _forward_lanes(self, x: torch.Tensor, h0: torch.Tensor):
        """`forward` on the C++ kernel's own layout (ops.lanes): U writes u in it and V reads H from it,
        so the kernel transposes nothing. Same model, same parameters; [Re h; Im h] are its C planes."""
        lanes = ops.lanes
        C, N = (2 if self.complex else 1), self.hidden_size
        u = lanes.linear(self.U.weight, self.U.bias, lanes.batch_to_lanes(x))  # (chunks, T, C·N, LANES)
        c, T = u.shape[:2]
        H = ops.kru_recurrence_lanes(u.view(c, T, C, N, lanes.width()), lanes.state_to_lanes(h0), self.W.stages("cpp"),
                                     self.nonlinearity, self.modrelu_bias)  # (chunks, T, C, N, LANES)
        y = lanes.linear(self.V.weight, self.V.bias, H.view(c, T, C * N, lanes.width()))
        B = x.shape[0]
        return lanes.outputs_from_lanes(y, B), lanes.state_from_lanes(H[:, -1], B, self.complex)
