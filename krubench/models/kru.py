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
        """The factors as `backend` applies them (ops.stages)."""
        return ops.stages(self.factors, backend, self.merge_upto)

    def penalty(self) -> torch.Tensor:
        return unitary_penalty(list(self.factors))


class KRU(SequenceModel):
    # the factors at lr/10 by default: at the full lr they drift off unitary (adding T=100: penalty 0.36, no
    # learning; lr/10: 3 of 3 seeds learn, penalty <= 0.011) and pixel MNIST stays at chance (RESULTS.md)
    default_factor_lr_scale = 0.1
    penalised = True

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
        return ops.backend_for(self.kernel, device)

    def initial_state(self, batch: int, device) -> torch.Tensor:
        dtype = torch.complex64 if self.complex else torch.float32
        return torch.zeros(batch, self.hidden_size, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None, last_only: bool = False):
        h0 = self.initial_state(x.shape[0], x.device) if state is None else state
        return ops.kru_layer(x, h0, self.U, self.V, self.W.factors, self.nonlinearity, self.modrelu_bias,
                             self.complex, self.kernel, self.W.merge_upto, last_only)
