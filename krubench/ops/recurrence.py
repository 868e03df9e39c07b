"""The KRU recurrence over a whole sequence, `h_t = σ(W h_{t-1} + u_t)` with `W = ⊗ W_f`: the
reference (the specification for the compiled backends) and the nonlinearities it supports."""
from __future__ import annotations

from typing import Sequence

import torch

from .kron import kron_matvec_ref

NONLINEARITIES = ("modrelu", "relu", "tanh")


def modrelu(z: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
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
