"""The C++ kernel's own layout, "lanes": a batch cut into chunks of LANES sequences, each step held as
planes (C, N, LANES) — C = 2 for complex states (real plane, imaginary plane), 1 for real ones — so that
every stage of the recurrence is a vertical multiply-add across the LANES sequences of a chunk.

Given (B, T, N) rows, the kernel has to transpose u_t and h_t at every step, and more in the backward
pass (what that costs: BENCHMARKS.md).
The KRU model avoids that on the CPU: its input projection writes u straight
into this layout and its read-out reads H from it (`kru_recurrence_lanes`, the same recurrence as
`kru_recurrence_ref`, tested against it). The batch is zero-padded to whole chunks; padded sequences
are computed and dropped.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@torch.compiler.assume_constant_result  # a build constant: torch.compile takes the number, not an int-valued op
def width() -> int:
    """LANES, the sequences per chunk: cuda/cpu_layout.h's L, one SIMD vector of float in the build for this
    CPU (16 with AVX-512, 8 with AVX2). Asks the C++ library, which the lanes layout is for (built and loaded
    here if nothing has loaded it yet)."""
    return _width()


@functools.cache
def _width() -> int:
    from .dispatch import load  # here: dispatch imports this module

    if (reason := load("cpp")) is not None:
        raise RuntimeError(f"the lanes layout is the cpp backend's, which is unavailable: {reason}")
    return int(torch.ops.krubench.lanes_width())


def chunks(batch: int) -> int:
    return -(-batch // width())


def _pad_rows(x: torch.Tensor) -> torch.Tensor:
    """x (B, ...) with zero rows appended up to whole chunks."""
    extra = chunks(x.shape[0]) * width() - x.shape[0]
    return F.pad(x, (0, 0) * (x.dim() - 1) + (0, extra)) if extra else x


def batch_to_lanes(x: torch.Tensor) -> torch.Tensor:
    """(B, T, I) -> (chunks, T, I, LANES)."""
    B, T, I = x.shape
    return _pad_rows(x).view(chunks(B), width(), T, I).permute(0, 2, 3, 1).contiguous()


def sequence_to_lanes(u: torch.Tensor) -> torch.Tensor:
    """A sequence (B, T, N), complex or real -> (chunks, T, C, N, LANES) real."""
    planes = torch.view_as_real(u) if u.is_complex() else u.unsqueeze(-1)  # (B, T, N, C)
    B, T, N, C = planes.shape
    return _pad_rows(planes).view(chunks(B), width(), T, N, C).permute(0, 2, 4, 3, 1).contiguous()


def sequence_from_lanes(H: torch.Tensor, batch: int, complex_: bool) -> torch.Tensor:
    """(chunks, T, C, N, LANES) -> the sequence (batch, T, N), complex if `complex_`."""
    c, T, C, N, L = H.shape
    rows = H.permute(0, 4, 1, 3, 2).reshape(c * L, T, N, C)[:batch]
    return torch.view_as_complex(rows.contiguous()) if complex_ else rows[..., 0]


def state_to_lanes(h: torch.Tensor) -> torch.Tensor:
    """A state (B, N), complex or real -> (chunks, C, N, LANES) real: a sequence of one step."""
    return sequence_to_lanes(h.unsqueeze(1))[:, 0]


def state_from_lanes(h: torch.Tensor, batch: int, complex_: bool) -> torch.Tensor:
    """(chunks, C, N, LANES) -> the state (batch, N), complex if `complex_`."""
    return sequence_from_lanes(h.unsqueeze(1), batch, complex_)[:, 0]


def linear(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """nn.Linear on the lanes layout: (chunks, T, I, LANES) -> (chunks, T, O, LANES), one batched GEMM.
    The bias goes in through baddbmm rather than a separate add: one pass less over the output (BENCHMARKS.md,
    "Training runs with large tensors")."""
    c, T, I, L = x.shape
    n = c * T
    w, xs = weight.expand(n, *weight.shape), x.reshape(n, I, L)
    y = torch.bmm(w, xs) if bias is None else torch.baddbmm(bias[None, :, None].expand(n, -1, L), w, xs)
    return y.view(c, T, -1, L)


def outputs_from_lanes(y: torch.Tensor, batch: int) -> torch.Tensor:
    """(chunks, T, O, LANES) -> (batch, T, O)."""
    c, T, O, L = y.shape
    return y.permute(0, 3, 1, 2).reshape(c * L, T, O)[:batch]
