"""Kronecker Recurrent Unit: `h_t = σ(W h_{t-1} + U x_t + b)`, `W = W_0 ⊗ … ⊗ W_{F-1}`, `y_t = V h_t + c`.

`KRULayer` is the recurrence alone (sequence in, states out) and `KRUCell` its single step, for use in other
models; `KRU`, the benchmarks' model, is a `KRULayer` with the read-out V on top."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .. import ops
from .base import SequenceModel

FACTOR_INITS = ("unitary", "identity")
MAP_INITS = ("glorot", "torch")  # input map and read-out: Glorot-uniform (uRNN), or nn.Linear's default
MERGE_UPTO = 16  # merge_upto's default: neighbouring factors multiplied out up to 16 × 16 (same W, fewer ops)


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

    def penalty(self) -> torch.Tensor:
        return unitary_penalty(list(self.factors))


def glorot_input_map_(U: nn.Linear, input_size: int, hidden_size: int) -> None:
    """uRNN's input map: the Re and Im halves each Glorot-uniform for in -> N, a zero bias."""
    bound = math.sqrt(6.0 / (input_size + hidden_size))
    nn.init.uniform_(U.weight, -bound, bound)
    if U.bias is not None:
        nn.init.zeros_(U.bias)


class KRULayer(nn.Module):
    """A Kronecker Recurrent Unit layer: `h_t = σ(W h_{t-1} + U x_t + b)` with `W = W_0 ⊗ … ⊗ W_{F-1}`,
    over a whole sequence, with no read-out: `forward(x, h0=None) -> (H, h_T)`.

    Args:
        input_size: features of x_t.
        hidden_size: N, the number of recurrent units; a power of `factor_size` unless `factors` is given.
        factor_size: the size of each square factor W_f when `factors` is None (2: log2 N factors of 2 × 2).
        factors: the factors' sizes, e.g. [4, 4, 8] for N = 128; their product must be `hidden_size`.
        complex: complex factors and a complex state (the paper's KRU); False for a real one.
        nonlinearity: σ: "modrelu" (the paper's, with a learned per-unit bias b), "relu" or "tanh"; on a complex
            state relu and tanh act on the real and imaginary parts separately.
        init: the factors' initialisation: "unitary" (Haar-random unitary/orthogonal) or "identity".
        merge_upto: neighbouring small factors are multiplied out up to this size before running (same W,
            fewer steps); 1 never merges.
        kernel: what runs the recurrence: "auto" (the C++ kernel on the CPU, the CUDA kernel on a GPU, the
            reference if neither builds), "cpp", "cuda", or "reference" (pure PyTorch, the specification).
        input_bias: whether U has a bias; None: only without modReLU (modReLU's b already adds one).
        input_init: "glorot" (uRNN: Glorot-uniform halves, zero bias) or "torch" (nn.Linear's default).
        modrelu_bias_init: modReLU's b starts uniform in ±this.
        return_complex (keyword only): for a complex layer, states as complex tensors (B, …, N) instead of real
            [Re h; Im h] (B, …, 2N).

    Shapes: x (B, T, input_size) -> H (B, T, S) all states and h_T (B, S) the last, S = `state_size`: 2N
    for a complex layer (the real features [Re h; Im h], what a following nn.Linear reads), N for a real
    one. With `return_complex`, H (B, T, N) and h_T (B, N) are complex. h0 (B, S) is the initial state,
    in the form h_T has (real pairs or complex; either is accepted); None starts from zeros. Gradients
    flow to x, h0 and every parameter on every kernel. Parameters: `W.factors` (the F factors), `U` (the
    input map, nn.Linear to C·N features, [Re; Im] halves if complex) and `modrelu_bias` (N,).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        factor_size: int = 2,
        factors: Sequence[int] | None = None,
        complex: bool = True,
        nonlinearity: str = "modrelu",
        init: str = "unitary",
        merge_upto: int = MERGE_UPTO,
        kernel: str = "auto",
        input_bias: bool | None = None,
        input_init: str = "glorot",
        modrelu_bias_init: float = 0.01,
        *,
        return_complex: bool = False,
    ):
        super().__init__()
        if nonlinearity not in ops.NONLINEARITIES:
            raise ValueError(f"model.nonlinearity={nonlinearity!r} is not supported: use one of {ops.NONLINEARITIES}")
        if input_init not in MAP_INITS:
            raise ValueError(f"model.input_init={input_init!r} is not supported: use one of {MAP_INITS}")
        if input_bias is None:  # modReLU has a bias of its own; an input bias would be added again at every step
            input_bias = nonlinearity != "modrelu"
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.complex = complex
        self.nonlinearity = nonlinearity
        self.kernel = kernel  # ops.KERNELS: which backend runs the recurrence
        self.return_complex = return_complex
        self.W = KronFactors(ops.factor_sizes(hidden_size, factor_size, factors), complex, init, merge_upto)
        self.U = nn.Linear(input_size, hidden_size * (2 if complex else 1), bias=input_bias)  # [Re; Im] if complex
        self.modrelu_bias = None
        if nonlinearity == "modrelu":  # uRNN: U(±0.01); 0 starts modReLU as the identity
            self.modrelu_bias = nn.Parameter(torch.empty(hidden_size).uniform_(-modrelu_bias_init, modrelu_bias_init))
        if input_init == "glorot":
            glorot_input_map_(self.U, input_size, hidden_size)

    @property
    def state_size(self) -> int:
        """The width S of H's and h_T's real features: 2N for a complex layer, N for a real one."""
        return self.hidden_size * (2 if self.complex else 1)

    def extra_repr(self) -> str:
        return (f"input_size={self.input_size}, hidden_size={self.hidden_size}, complex={self.complex}, "
                f"nonlinearity={self.nonlinearity!r}, kernel={self.kernel!r}")

    def factor_parameters(self) -> list[nn.Parameter]:
        """The Kronecker factors W_f (the paper trains them at a lower learning rate)."""
        return list(self.W.factors)

    def unitary_penalty(self) -> torch.Tensor:
        """Σ_f ‖W_f^H W_f − I‖_F²: a soft constraint keeping W unitary, to add to a loss."""
        return self.W.penalty()

    def kron_backend(self, device) -> str:
        """The backend (ops.BACKENDS) that runs the recurrence of tensors on `device`."""
        return ops.backend_for(self.kernel, device)

    def zero_state(self, batch: int, device) -> torch.Tensor:
        """h_0 = 0 as the recurrence holds it: (batch, N), complex for a complex layer, in the factors' precision."""
        return torch.zeros(batch, self.hidden_size, dtype=self.W.factors[0].dtype, device=device)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, input_size), h0 (B, S) or None -> (H (B, T, S), h_T (B, S)); see the class's docstring."""
        h0 = self.zero_state(x.shape[0], x.device) if h0 is None else self._state_in(h0)
        H, hT = self._run(x, h0)
        return self._state_out(H), self._state_out(hT)

    def _run(self, x, h0, readout: nn.Linear | None = None, last_only: bool = False):
        """ops.kru_layer with this layer's parameters: states (readout None) or the read-out's outputs, and h_T,
        on the recurrence's own (complex) state."""
        return ops.kru_layer(x, h0, self.U, readout, self.W.factors, self.nonlinearity, self.modrelu_bias,
                             self.complex, self.kernel, self.W.merge_upto, last_only)

    def _state_in(self, h: torch.Tensor) -> torch.Tensor:
        """A user's state (real [Re h; Im h] or complex) as the recurrence holds it."""
        if not self.complex or h.is_complex():
            return h
        return torch.complex(h[..., :self.hidden_size], h[..., self.hidden_size:])

    def _state_out(self, h: torch.Tensor) -> torch.Tensor:
        """The recurrence's state as this layer gives it out (real [Re h; Im h] unless return_complex)."""
        if not h.is_complex() or self.return_complex:
            return h
        return torch.cat([h.real, h.imag], dim=-1)


class KRUCell(KRULayer):
    """One step of a `KRULayer`: `h_next = cell(x_t, h)` with x_t (B, input_size) and h (B, S) or None (zeros),
    for models that drive the recurrence step by step. Same arguments, parameters and state form as
    KRULayer (a layer's state_dict loads into a cell and back); T calls give the layer's T states."""

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """x_t (B, input_size), h (B, S) or None -> h_next (B, S)."""
        return super().forward(x.unsqueeze(1), h)[1]


class KRU(KRULayer, SequenceModel):
    """The benchmarks' KRU model: a `KRULayer` with the read-out `y_t = V [Re h_t; Im h_t] + c` on top
    (`forward(x, state, last_only) -> (y, h_T)`, the SequenceModel contract; `state` is the complex (B, N)
    h). It takes the layer's options (`layer_options`, see KRULayer) and `readout_init`: "glorot" (uRNN:
    Glorot-uniform on [Re h; Im h], zero bias) or "torch" (nn.Linear's default). Its parameters keep their names
    (W.factors.i, U, modrelu_bias, V), so checkpoints load across versions."""
    # the factors at lr/10 by default: at the full lr they drift off unitary and stop learning (RESULTS.md)
    default_factor_lr_scale = 0.1
    penalised = True
    choices = {"nonlinearity": ops.NONLINEARITIES, "init": FACTOR_INITS, "kernel": ops.KERNELS,
               "input_init": MAP_INITS, "readout_init": MAP_INITS}
    positive = {**SequenceModel.positive, "merge_upto": "1 turns merging off"}
    non_negative = {"modrelu_bias_init": "the half-width of the uniform range; 0 starts the bias at zero"}

    def __init__(self, input_size: int, output_size: int, hidden_size: int = 128, input_init: str = "glorot",
                 readout_init: str = "glorot", **layer_options):
        for key, value in (("input_init", input_init), ("readout_init", readout_init)):
            if value not in MAP_INITS:
                raise ValueError(f"model.{key}={value!r} is not supported: use one of {MAP_INITS}")
        # U's Glorot draw comes after V's construction below: the order of random draws that gives a seed its
        # initial weights
        super().__init__(input_size, hidden_size, input_init="torch", **layer_options)
        self.V = nn.Linear(self.state_size, output_size)  # reads [Re h; Im h]
        if input_init == "glorot":
            glorot_input_map_(self.U, input_size, hidden_size)
        if readout_init == "glorot":  # uRNN: Glorot-uniform on [Re h; Im h], zero bias
            nn.init.xavier_uniform_(self.V.weight)
            nn.init.zeros_(self.V.bias)

    def recurrent_parameters(self):
        return list(self.W.factors)

    def initial_state(self, batch: int, device) -> torch.Tensor:
        return self.zero_state(batch, device)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None, last_only: bool = False):
        h0 = self.initial_state(x.shape[0], x.device) if state is None else state
        return self._run(x, h0, self.V, last_only)
