"""The Kronecker matrix-vector product: the pure-PyTorch reference that every backend must match.

`(F_0 ⊗ F_1 ⊗ … ⊗ F_{k-1}) x` is computed without forming the product: view `x` as a tensor of shape
`(q_0, …, q_{k-1})` (row-major, the `torch.kron` convention) and contract axis `f` with `F_f`, one factor
at a time. Work is `N·Σ p_f` multiply-adds instead of `N²`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch


def check_matvec(x: torch.Tensor, factors: Sequence[torch.Tensor]) -> None:
    if len(factors) == 0:
        raise ValueError("kron_matvec needs at least one factor; got an empty sequence")
    shapes = []
    for i, f in enumerate(factors):
        if f.dim() != 2:
            raise ValueError(f"kron_matvec: factor {i} must be a matrix (p, q), got shape {tuple(f.shape)}")
        shapes.append(tuple(f.shape))
    n_in = math.prod([q for _, q in shapes])  # a list: torch.compile cannot trace math.prod of a generator
    if x.dim() < 1 or x.shape[-1] != n_in:
        raise ValueError(
            f"kron_matvec: x has shape {tuple(x.shape)} but the factor shapes {shapes} need a last "
            f"dimension of prod(q_i) = {n_in}"
        )


def kron_matvec_ref(x: torch.Tensor, factors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Return `y = (F_0 ⊗ … ⊗ F_{k-1}) x` for every leading index of `x`.

    x: (..., N) real or complex, N = prod(q_i). factors: matrices F_i of shape (p_i, q_i).
    Returns (..., prod(p_i)), in the common dtype of `x` and the factors. Differentiable.
    """
    check_matvec(x, factors)
    dtype = x.dtype
    for f in factors:
        dtype = torch.promote_types(dtype, f.dtype)
    lead = x.shape[:-1]
    m = x.reshape(-1, x.shape[-1]).to(dtype)  # (M, N)
    # Stage f: axis f of the (q_0..q_{k-1}) tensor is contracted with F_f. Each stage moves the
    # contracted axis to the end, so after k stages the axes are back in order (now sized p_f).
    # (M, rest, q_f) @ F_f^T -> (M, rest, p_f), then rotate: the product axis goes last.
    for f in factors:
        p, q = f.shape
        m = m.reshape(m.shape[0], q, -1)  # (M, q_f, rest): axis f is the leading one still unprocessed
        m = torch.matmul(f.to(dtype), m)  # (M, p_f, rest)
        m = m.transpose(1, 2)  # (M, rest, p_f): processed axis rotates to the end
    return m.reshape(*lead, -1)


def kron_dense(factors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The materialised product `F_0 ⊗ … ⊗ F_{k-1}` (for tests and small-factor merging only)."""
    out = factors[0]
    for f in factors[1:]:
        out = torch.kron(out.contiguous(), f.contiguous())  # torch.kron needs contiguous inputs
    return out


def merge_factors(factors: Sequence[torch.Tensor], max_size: int) -> list[torch.Tensor]:
    """Group consecutive factors into their Kronecker products while each group stays at most
    `max_size` rows and columns. Same operator, fewer (larger) stages: two 2×2 stages cost the same
    flops as one 4×4 stage but half the per-stage overhead."""
    merged: list[torch.Tensor] = []
    for f in factors:
        last = merged[-1] if merged else None
        if last is not None and last.shape[0] * f.shape[0] <= max_size and last.shape[1] * f.shape[1] <= max_size:
            merged[-1] = kron_dense([last, f])
        else:
            merged.append(f)
    return merged


def factor_sizes(hidden_size: int, factor_size: int = 2, factors: Sequence[int] | None = None) -> list[int]:
    """Sizes of the square factors whose Kronecker product is `hidden_size` × `hidden_size`.

    With an explicit list `factors` it is checked and returned; otherwise `hidden_size` must be a
    power of `factor_size` (2 → log2 N factors of size 2×2).
    """
    if factors:
        sizes = [int(s) for s in factors]
        if any(s < 1 for s in sizes) or math.prod(sizes) != hidden_size:
            raise ValueError(
                f"model.factors={sizes} multiply to {math.prod(sizes)}, not model.hidden_size={hidden_size}: "
                f"give factor sizes whose product is {hidden_size}, or set model.factors=null to use model.factor_size"
            )
        return sizes
    if factor_size < 2:
        raise ValueError(f"model.factor_size={factor_size} must be at least 2 (2 gives log2 N factors of 2×2)")
    k = round(math.log(hidden_size, factor_size)) if hidden_size > 1 else 0
    if hidden_size < factor_size or factor_size**k != hidden_size:
        lo = factor_size ** max(1, math.floor(math.log(max(hidden_size, 1), factor_size)))
        hi = lo * factor_size
        hint = f"use model.hidden_size={lo} or {hi}"
        greedy = _greedy_factors(hidden_size, factor_size)
        if greedy:
            hint += f", or set model.factors={greedy}"
        raise ValueError(
            f"model.hidden_size={hidden_size} is not a power of model.factor_size={factor_size}: {hint}"
        )
    return [factor_size] * k


def _greedy_factors(n: int, largest: int) -> list[int] | None:
    """A factorisation of n into sizes ≤ largest (largest first), or None if n has a bigger prime."""
    out = []
    for s in range(largest, 1, -1):
        while n % s == 0:
            out.append(s)
            n //= s
    return out if n == 1 and len(out) > 1 else None
