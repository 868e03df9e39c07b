"""The KRU recurrence over a whole sequence, `h_t = σ(W h_{t-1} + u_t)` with `W = ⊗ W_f`: the
reference (the specification for the compiled backends) and the nonlinearities it supports."""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .kron import kron_matvec_ref

NONLINEARITIES = ("modrelu", "relu", "tanh")
MODRELU_EPS = 1e-6  # in |z| + eps


def modrelu(z: torch.Tensor, bias: torch.Tensor, eps: float = MODRELU_EPS) -> torch.Tensor:
    """modReLU (Arjovsky et al.): keep the phase, shift the modulus: `z · relu(|z| + b) / |z|`. At z = 0
    exactly its gradient is 0, as in the compiled kernels and expRNN's `sign(z)·relu(|z| + b)`: the formula's
    own, relu(b)/eps, multiplies back through every all-zero input step (MNIST's leading black pixels from
    h_0 = 0) and overflows."""
    mod = z.abs()
    scale = torch.relu(mod + bias) / (mod + eps)
    return z * torch.where(mod > 0, scale, torch.zeros_like(scale))


def apply_nonlinearity(z: torch.Tensor, name: str, bias: torch.Tensor | None = None) -> torch.Tensor:
    """σ of the KRU. For complex `z`, relu and tanh act on the real and imaginary parts separately
    (a complex tanh has poles); modrelu acts on the modulus and needs the per-unit `bias` (N,)."""
    if name == "modrelu":
        return modrelu(z, bias)
    if name == "relu":
        return torch.complex(torch.relu(z.real), torch.relu(z.imag)) if z.is_complex() else torch.relu(z)
    if name == "tanh":
        return torch.complex(torch.tanh(z.real), torch.tanh(z.imag)) if z.is_complex() else torch.tanh(z)
    raise ValueError(f"nonlinearity={name!r} is not supported: use one of {NONLINEARITIES}")


def kru_recurrence_ref(
    u: torch.Tensor,
    h0: torch.Tensor,
    factors: Sequence[torch.Tensor],
    nonlinearity: str,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """All states of the KRU recurrence.

    u: (B, T, N) the precomputed input projection `U x_t + b`; h0: (B, N); factors: square matrices
    whose Kronecker product is N × N; bias: (N,) the modReLU bias (real). Returns H: (B, T, N).
    """
    h = h0
    states = []
    for u_t in u.unbind(1):  # not u[:, t]: each such slice's backward fills a zero tensor of u's size
        h = apply_nonlinearity(kron_matvec_ref(h, factors) + u_t, nonlinearity, bias)  # (B, N)
        states.append(h)
    if not states:
        return u.new_empty(u.shape)
    return torch.stack(states, dim=1)  # (B, T, N)


def lstm_kru_recurrence_ref(gx: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor,
                            products: Sequence[Callable[[torch.Tensor], torch.Tensor]]):
    """All hidden and cell states (H, C), each (B, T, N), of an LSTM whose hidden-to-hidden map is the
    products W_g (x ↦ W_g x, G of them: four N × N, one per gate, or one 4N × N), their outputs stacked
    gate-major (i, f, g, o) and their real part taken:
        a_t = gx_t + Re([W_0 h_{t-1}; …]),  c_t = σ(f) c_{t-1} + σ(i) tanh(g),  h_t = σ(o) tanh(c_t).
    gx (B, T, 4N) = W_ih x_t + b, h0 and c0 (B, N). The specification of the compiled kernel."""
    h, c, hs, cs = h0, c0, [], []
    for gx_t in gx.unbind(1):  # not gx[:, t]: each such slice's backward fills a zero tensor of gx's size
        out = products[0](h) if len(products) == 1 else torch.cat([W(h) for W in products], dim=-1)
        i, f, g, o = (gx_t + (out.real if out.is_complex() else out)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        hs.append(h)
        cs.append(c)
    return torch.stack(hs, dim=1), torch.stack(cs, dim=1)
