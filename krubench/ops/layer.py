"""The layers as operators, one entry point each: `kru_layer` (input map, recurrence and optionally read-out,
`y_t = V [Re h_t; Im h_t] + c` with `h_t = σ(W h_{t-1} + U x_t + b)`) and `lstm_kru_layer` (LSTM+KRU's input
map and recurrence). Each chooses the backend once per call, and `layer_path` alone chooses how the layer
runs on it: which compiled operator, on which layout (the C++ kernel's lanes on the CPU, (B, T, N)
elsewhere). A model hands its parameters and `kernel` and never sees layouts, merge limits or backend names.
The paths below `layer_path` choose nothing."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import compiled, lanes
from .dispatch import (at_least_fp32, backend_for, cuda_recurrence_kernel, kru_layer_input, kru_layer_lanes,
                       kru_recurrence, kru_recurrence_lanes, lstm_kru_recurrence, stages, without_autocast)

# Inputs up to this wide get LSTM+KRU's input map inside the C++ kernel: there it costs 3 · 4N · I multiply-adds
# a step (forward, recomputed, gradient) on 8 lanes, against one GEMM each way outside and a (B, T, 4N) tensor.
# Measured in BENCHMARKS.md ("LSTM+KRU's input map inside the kernel"): faster for pixel MNIST (I = 1), not for
# PTB (I = 50) or JSB (I = 88).
LSTM_INPUT_IN_KERNEL_UPTO = 16


def layer_path(layer: str, backend: str, x: torch.Tensor, readout: bool = True) -> str:
    """How `layer` ('kru' or 'lstm_kru') runs on `backend` for the input x (B, T, I); `readout`: whether the KRU
    layer has a read-out V. The one place where a layer's operator and layout are chosen. An x that needs a
    gradient (a layer on a trainable one) takes the unfused path, whose input map is a torch GEMM.

    kru: 'lanes_fused' (C++: input map, recurrence and read-out in one kernel, `kru_layer_lanes`), 'lanes' (C++,
    on its lanes layout: U and V as batched GEMMs around `kru_recurrence_lanes`), 'rows_input_inside' (CUDA:
    u_t = U x_t inside the kernel, `kru_layer_input`), 'rows' ((B, T, N) tensors: U, `kru_recurrence`, V).
    lstm_kru: 'input_inside' (C++ for inputs up to LSTM_INPUT_IN_KERNEL_UPTO wide: W_ih x_t + b inside the kernel,
    `lstm_kru_layer`) or 'gates' (one GEMM, then `lstm_kru_recurrence` on any backend)."""
    data = not x.requires_grad
    if layer == "kru":
        if backend == "cpp":
            return "lanes_fused" if readout and data else "lanes"
        return "rows_input_inside" if backend == "cuda" and data else "rows"
    if layer == "lstm_kru":
        return "input_inside" if backend == "cpp" and data and x.shape[-1] <= LSTM_INPUT_IN_KERNEL_UPTO else "gates"
    raise ValueError(f"layer={layer!r}: use 'kru' or 'lstm_kru'")


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
    path = layer_path("kru", backend, x, V is not None)
    if path == "lanes_fused":
        return _lanes_fused(x, h0, U, V, ws, nonlinearity, bias, complex_, last_only)
    if path == "lanes":
        return _lanes(x, h0, U, V, ws, nonlinearity, bias, complex_, last_only)
    return _rows(x, h0, U, V, ws, nonlinearity, bias, complex_, last_only, backend, path == "rows_input_inside")


def lstm_kru_layer(x, W_ih, b_ih, h0, c0, products: Sequence[Sequence[torch.Tensor]], kernel: str = "auto",
                   merge_upto: int = 16):
    """(H, C) of the LSTM+KRU layer from its input x (B, T, I): gates W_ih x + b_ih + W_hh h, W_hh the Kronecker
    products of `products` (G factor lists, as the model holds them: the backend's merging happens here, as in
    `kru_layer`). On the 'input_inside' path (layer_path) x gets no gradient and no (B, T, 4N) tensor is made."""
    x, h0, c0 = at_least_fp32(x), at_least_fp32(h0), at_least_fp32(c0)
    backend = backend_for(kernel, x.device)
    products = [stages(fs, backend, merge_upto) for fs in products]
    if layer_path("lstm_kru", backend, x) == "input_inside":
        with without_autocast(x.device):
            return compiled.lstm_kru_layer(x, at_least_fp32(W_ih), at_least_fp32(b_ih), h0, c0,
                                           [[at_least_fp32(f) for f in fs] for fs in products])
    return lstm_kru_recurrence(torch.nn.functional.linear(x, W_ih, b_ih), h0, c0, products, backend)


def _rows(x, h0, U, V, ws, nonlinearity, bias, complex_, last_only, backend, input_inside: bool):
    """kru_layer on (B, T, N) tensors. Complex: U's rows and V's columns reordered from [Re; Im] to (Re, Im)
    pairs (a copy of the small weights), so that u is a complex view of U's output and the read-out reads H as
    real pairs: no (B, T, 2N)-sized split, cat or copy of u and H and their gradients. `input_inside`: u_t is
    computed inside the kernel (`kru_layer_input`), no (B, T, C·N) u at all."""
    N = h0.shape[-1]
    uw, ub = U.weight, U.bias
    if complex_:
        uw, ub = _pairs(uw, N, 0), None if ub is None else _pairs(ub, N, 0)
    if input_inside:
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


def _lanes_fused(x, h0, U, V, ws, nonlinearity, bias, complex_, last_only):
    """kru_layer in the fused C++ kernel, on its own layout (lanes.py), which computes u_t and y_t step by
    step: neither u nor ∂L/∂H exists as a (B, T, C·N) tensor. [Re h; Im h] are its C planes."""
    B = x.shape[0]
    y, hT = kru_layer_lanes(lanes.batch_to_lanes(x), U.weight, U.bias, lanes.state_to_lanes(h0), ws, nonlinearity,
                            bias, V.weight, V.bias, last_only)
    return lanes.outputs_from_lanes(y, B), lanes.state_from_lanes(hT, B, complex_)


def _lanes(x, h0, U, V, ws, nonlinearity, bias, complex_, last_only):
    """kru_layer on the C++ kernel's lanes layout, which transposes nothing: U writes u in the layout and V
    reads H from it; without V, H is laid out as (B, T, N) (complex if `complex_`)."""
    B = x.shape[0]
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
