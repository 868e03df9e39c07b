"""Which implementation of the KRU and LSTM+KRU recurrences runs, and the dispatching functions.

`kernel` (the model's `model.kernel` option) is one of KERNELS: `auto` picks the fastest backend for the
tensors' device (`cpp` on the CPU, `cuda` on a GPU); `cpp`/`cuda` ask for one; `reference` is the
pure-PyTorch specification. A compiled backend is built and loaded on first use; if that fails, the
reference runs instead and one warning says why and how to fix it.

Under autocast (AMP) the Kronecker operators run in float32 (complex64): autocast is switched off inside
them and half-precision inputs (an fp16/bf16 input projection) are promoted. The recurrence compounds its
rounding over T steps and k factors, and no kernel takes half-precision data.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Sequence

import torch

from . import build, compiled
from .kron import kron_matvec_ref, merge_factors
from .recurrence import kru_recurrence_ref, lstm_kru_recurrence_ref

log = logging.getLogger("krubench")

KERNELS = ("auto", "cuda", "cpp", "reference")
BACKENDS = ("cuda", "cpp", "reference")
NATIVE = {"cpu": "cpp", "cuda": "cuda"}  # the compiled backend for each device type

MERGE_LIMIT = {"cpp": 4}  # measured: the C++ kernel runs 4×4 stages fastest (BENCHMARKS.md, "Merging factors")

_unavailable: dict[str, str | None] = {}  # backend -> None once loaded, else why it cannot load


def load(backend: str) -> str | None:
    """Build and load a compiled backend, once per process. Returns None if it works, else the reason."""
    if backend not in _unavailable:
        try:
            if backend == "cuda":
                build.build("cpp")  # the CPU library defines the operator schemas the CUDA one implements
            build.build(backend)
            compiled.register()
            _unavailable[backend] = None
        except build.BuildError as e:
            _unavailable[backend] = str(e)
            log.warning(f"the {backend} Kronecker backend is unavailable, using the reference instead: {e}. "
                        f"Set model.kernel=reference to skip it; `krubench-doctor` shows what works.")
    return _unavailable[backend]


# Under torch.compile the answer is taken as a constant of the graph: it depends on the arguments only (a backend
# is loaded, or found unavailable, once per process), and the build and its logging are not traced.
@torch.compiler.assume_constant_result
def backend_for(kernel: str, device) -> str:
    """The backend that runs for `kernel` on tensors on `device`: 'cuda', 'cpp' or 'reference'."""
    if kernel not in KERNELS:
        raise ValueError(f"model.kernel={kernel!r} is not supported: use one of {KERNELS}")
    if kernel == "reference":
        return "reference"
    device = torch.device(device)
    native = NATIVE.get(device.type)
    if kernel == "auto":
        if native is None:
            return "reference"
        kernel = native
    elif kernel != native:
        raise ValueError(f"model.kernel={kernel} cannot run tensors on {device}: cpp runs on the CPU, cuda on CUDA "
                         f"devices. Use model.kernel=auto, or trainer.device={'cpu' if kernel == 'cpp' else 'cuda'}")
    return kernel if load(kernel) is None else "reference"


HALF_PRECISION = {torch.float16: torch.float32, torch.bfloat16: torch.float32, torch.complex32: torch.complex64}


def at_least_fp32(t: torch.Tensor | None) -> torch.Tensor | None:
    """`t` promoted to float32 (complex64) if it is in a half precision, else `t` itself."""
    return t.to(HALF_PRECISION[t.dtype]) if t is not None and t.dtype in HALF_PRECISION else t


def without_autocast(device: torch.device):
    """A context in which autocast is off on `device`'s type (nothing to do where autocast does not exist)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def merge_limit(backend: str, merge_upto: int) -> int:
    """The largest merged factor size to give `backend`: the model's `merge_upto`, capped where a
    backend runs smaller stages faster."""
    return min(merge_upto, MERGE_LIMIT.get(backend, merge_upto))


# Constant per graph under torch.compile, as backend_for: a pure function of its arguments.
@torch.compiler.assume_constant_result
def cuda_recurrence_kernel(shapes: tuple[int, ...], dtype: torch.dtype, device) -> str:
    """The kernel the CUDA recurrence runs, both directions, for square factors of sizes `shapes` on `device`:
    'warp' (2×2 factors, N = 32 ... 128: one warp a sequence), 'registers' (other 2×2 factors, N = 8 ... 8192, if
    the device's shared memory holds them) or 'fused'. The operator makes this choice itself (cuda/kru_plan.h); it
    is asked here only so that factors those kernels take are not merged before the call."""
    limit = torch.cuda.get_device_properties(device).shared_memory_per_block_optin
    return torch.ops.krubench.kru_recurrence_kernel([s for n in shapes for s in (n, n)], dtype, limit)


def stages(factors: Sequence[torch.Tensor], backend: str, merge_upto: int) -> list[torch.Tensor]:
    """The factors as `backend` applies them: small neighbours merged up to `merge_upto`, capped at the size
    that backend runs fastest (same W, fewer operations)."""
    size = merge_limit(backend, merge_upto)
    return merge_factors(list(factors), size) if size > 1 else list(factors)


def kru_recurrence(u, h0, factors, nonlinearity: str, bias=None, kernel: str = "auto") -> torch.Tensor:
    """All states of the KRU recurrence on the backend `kernel` selects; the contract is `kru_recurrence_ref`'s."""
    u, h0, bias, factors = at_least_fp32(u), at_least_fp32(h0), at_least_fp32(bias), [at_least_fp32(f) for f in factors]
    with without_autocast(u.device):
        if backend_for(kernel, u.device) == "reference":
            return kru_recurrence_ref(u, h0, factors, nonlinearity, bias)
        return compiled.kru_recurrence(u, h0, factors, nonlinearity, bias)


def kru_layer_input(x, uw, ub, h0, factors, nonlinearity: str, bias=None) -> torch.Tensor:
    """`kru_recurrence` of u = x uwᵀ + ub with the input map inside the compiled kernel (on CUDA no u tensor
    exists): x (B, T, I), uw (C·N, I) and ub (C·N,) or None with rows giving u's (Re, Im) pairs (C = 2 for
    complex h0). No gradient flows to x (data)."""
    x, uw, ub = at_least_fp32(x), at_least_fp32(uw), at_least_fp32(ub)
    h0, bias, factors = at_least_fp32(h0), at_least_fp32(bias), [at_least_fp32(f) for f in factors]
    with without_autocast(x.device):
        return compiled.kru_layer_input(x, uw, ub, h0, factors, nonlinearity, bias)


def lstm_kru_recurrence(gx, h0, c0, products: Sequence[Sequence[torch.Tensor]], kernel: str = "auto"):
    """(H, C) of the LSTM whose W_hh is the Kronecker products `products` (G factor lists) on the backend
    `kernel` selects: the whole recurrence in one compiled call (C++ or CUDA); the reference is a loop over time
    (`lstm_kru_recurrence_ref`, whose contract this is)."""
    gx, h0, c0 = at_least_fp32(gx), at_least_fp32(h0), at_least_fp32(c0)
    backend = backend_for(kernel, gx.device)
    if backend != "reference":
        with without_autocast(gx.device):
            return compiled.lstm_kru_recurrence(gx, h0, c0, [[at_least_fp32(f) for f in fs] for fs in products])
    products = [[at_least_fp32(f) for f in fs] for fs in products]
    return lstm_kru_recurrence_ref(gx, h0, c0, [lambda x, fs=fs: kron_matvec_ref(x, fs) for fs in products])


def kru_recurrence_lanes(u, h0, factors, nonlinearity: str, bias=None) -> torch.Tensor:
    """The recurrence on the C++ kernel's own layout (`ops.lanes`: u (chunks, T, C, N, LANES), h0 (chunks,
    C, N, LANES), real), which spares the kernel a transpose per step; CPU tensors only."""
    if u.device.type != "cpu":
        raise ValueError(f"kru_recurrence_lanes runs the C++ kernel on CPU tensors, got {u.device}; "
                         f"use kru_recurrence(..., kernel='auto') on other devices")
    reason = load("cpp")
    if reason is not None:
        raise RuntimeError(f"kru_recurrence_lanes needs the cpp backend, which is unavailable: {reason}")
    u, h0, bias, factors = at_least_fp32(u), at_least_fp32(h0), at_least_fp32(bias), [at_least_fp32(f) for f in factors]
    with without_autocast(u.device):
        return compiled.kru_recurrence_lanes(u, h0, factors, nonlinearity, bias)


def kru_layer_lanes(x, U_weight, U_bias, h0, factors, nonlinearity: str, bias, V_weight, V_bias, last_only: bool):
    """The KRU layer (input map, recurrence, read-out) fused into the C++ kernel, on its own layout
    (`ops.lanes`: x (chunks, T, I, LANES), h0 (chunks, C, N, LANES)); returns y (chunks, T or 1, O, LANES)
    and h_T. CPU tensors only; no gradient flows to x."""
    if x.device.type != "cpu":
        raise ValueError(f"kru_layer_lanes runs the C++ kernel on CPU tensors, got {x.device}")
    reason = load("cpp")
    if reason is not None:
        raise RuntimeError(f"kru_layer_lanes needs the cpp backend, which is unavailable: {reason}")
    tensors = [at_least_fp32(t) for t in (x, U_weight, U_bias, h0, bias, V_weight, V_bias)]
    x, U_weight, U_bias, h0, bias, V_weight, V_bias = tensors
    with without_autocast(x.device):
        return compiled.kru_layer_lanes(x, U_weight, U_bias, h0, [at_least_fp32(f) for f in factors], nonlinearity,
                                        bias, V_weight, V_bias, last_only)
