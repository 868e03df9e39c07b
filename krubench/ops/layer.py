"""The KRU layer as one operator: input map, recurrence and (optionally) read-out, `y_t = V [Re h_t; Im h_t] + c`
with `h_t = σ(W h_{t-1} + U x_t + b)`. It chooses the backend once per call and lays the data out the way that
backend wants it (the C++ kernel's lanes on the CPU, (B, T, N) elsewhere), so a model hands it its
parameters and `kernel` and never sees layouts, merge limits or backend names."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import lanes
from .dispatch import (at_least_fp32, backend_for, cuda_recurrence_kernel, kru_layer_input, kru_layer_lanes,
                       kru_recurrence, kru_recurrence_lanes, stages)


def recurrence_stages(factors: Sequence[torch.Tensor], backend: str, merge_upto: int, dtype: torch.dtype) -> list:
    """`stages` for the KRU recurrence: on CUDA the factors stay unmerged where its register-resident or warp
    kernels take them (they need 2×2 factors, and a 2×2 stage in registers costs no memory traffic)."""
    if backend == "cuda" and cuda_recurrence_kernel(tuple(f.shape[0] for f in factors), dtype,
                                                    factors[0].device) in ("registers", "warp"):
        return list(factors)
    return stages(factors, backend, merge_upto)


def kru_layer(x: torch.Tensor, h0: torch.Tensor, U: nn.Linear, V: nn.Linear | None, factors: Sequence[torch.Tensor],
              nonlinearity: str, bias: torch.Tensor | None, complex_: bool, kernel: str = "auto",
              merge_upto: int = 16, last_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, T, in), h0 (B, N) -> outputs (B, T, out) and the last state h_T (B, N). U maps x to [Re u; Im u]
    (2N features) if `complex_`, else to u (N); V reads [Re h; Im h] (or h), at every step or, with
    `last_only`, at the last one only (outputs (B, 1, out)). Without V (None) the outputs are the states
    H (B, T, N) themselves, complex if `complex_`."""
    backend = backend_for(kernel, x.device)
    ws = recurrence_stages(factors, backend, merge_upto, at_least_fp32(factors[0]).dtype)
    if backend == "cpp":
        return _on_lanes(x, h0, U, V, ws, nonlinearity, bias, complex_, last_only)
    # Complex: U's rows and V's columns reordered from [Re; Im] to (Re, Im) pairs (a copy of the small weights),
    # so that u is a complex view of U's output and the read-out reads H as real pairs: no (B, T, 2N)-sized
    # split, cat or copy of u and H and their gradients.
    N = h0.shape[-1]
    uw, ub = U.weight, U.bias
    if complex_:
        uw, ub = _pairs(uw, N, 0), None if ub is None else _pairs(ub, N, 0)
    if backend == "cuda" and not x.requires_grad:  # u_t computed inside the kernel: no (B, T, C·N) u at all
        H = kru_layer_input(x, uw, ub, h0, ws, nonlinearity, bias)
    else:
        u = at_least_fp32(F.linear(x, uw, ub))  # fp16/bf16 under autocast, the recurrence fp32
        u = torch.view_as_complex(u.unflatten(-1, (N, 2))) if complex_ else u
        H = kru_recurrence(u, h0, ws, nonlinearity, bias, kernel=backend)  # (B, T, N)
    if V is None:
        return H, H[:, -1]
    read = H[:, -1:] if last_only else H
    vw = _pairs(V.weight, N, 1) if complex_ else V.weight
    return F.linear(torch.view_as_real(read).flatten(-2) if complex_ else read, vw, V.bias), H[:, -1]


def _pairs(w: torch.Tensor, N: int, dim: int) -> torch.Tensor:
    """`w`'s 2N entries along `dim`, ordered [Re 0..N-1; Im 0..N-1], reordered as (Re n, Im n) pairs."""
    w = w.movedim(dim, 0)
    return w.unflatten(0, (2, N)).transpose(0, 1).flatten(0, 1).movedim(0, dim)


def _on_lanes(x, h0, U, V, ws, nonlinearity, bias, complex_, last_only):
    """kru_layer on the C++ kernel's own layout (lanes.py), which transposes nothing; [Re h; Im h] are its
    C planes. Data inputs (no gradient wanted for x) go through the fused kernel, which computes u_t and y_t
    step by step: neither u nor ∂L/∂H exists as a (B, T, C·N) tensor. Otherwise U writes u in the layout
    and V reads H from it; without V, H is laid out as (B, T, N) (complex if `complex_`)."""
    B = x.shape[0]
    if V is not None and not x.requires_grad:
        y, hT = kru_layer_lanes(lanes.batch_to_lanes(x), U.weight, U.bias, lanes.state_to_lanes(h0), ws, nonlinearity,
                                bias, V.weight, V.bias, last_only)
        return lanes.outputs_from_lanes(y, B), lanes.state_from_lanes(hT, B, complex_)
    C, N, L = (2 if complex_ else 1), h0.shape[-1], lanes.width()
    u = lanes.linear(U.weight, U.bias, lanes.batch_to_lanes(x))  # (chunks, T, C·N, L)
    c, T = u.shape[:2]
    H = kru_recurrence_lanes(u.view(c, T, C, N, L), lanes.state_to_lanes(h0), ws, nonlinearity, bias)  # (c, T, C, N, L)
    if V is None:
        H = lanes.sequence_from_lanes(H, B, complex_)
        return H, H[:, -1]
    read = H[:, -1:] if last_only else H
    y = lanes.linear(V.weight, V.bias, read.reshape(c, read.shape[1], C * N, L))
    return lanes.outputs_from_lanes(y, B), lanes.state_from_lanes(H[:, -1], B, complex_)
