"""The CUDA kernels of cuda/kru_cuda.cu, run without a GPU by the emulator (cuda/kru_emu.h: the kernel
bodies compiled as host C++, each CUDA thread a fiber that runs to its next __syncthreads(), shared memory
filled with NaN), against the pure-PyTorch reference: values and gradients of the KRU and LSTM+KRU recurrences, every thread order the emulator has, the >48 KB shared-memory (opt-in) path and its limit.

Planted bugs: every __syncthreads() of kru_cuda.cu is removed in turn (at run time, by its line) and the
results must then differ from the reference or the emulator must report a barrier error; the slow tests
rebuild the emulator from copies of the sources with a sign flipped and expect failures too.
"""
from __future__ import annotations

import math
import re
import shutil

import pytest
import torch

from krubench.ops import build, compiled
from krubench.ops.kron import kron_matvec_ref
from test_kernels import (assert_as_accurate, layer_input_outputs, layer_input_problem, recurrence_outputs,
                          recurrence_problem)

SOURCE = build.source_dir() / "kru_cuda.cu"
BARRIER_LINES = [i for i, line in enumerate(SOURCE.read_text().splitlines(), 1) if "__syncthreads()" in line]
ORDERS = {"ascending": 0, "descending": 1, "shuffled": 2}
DEFAULT_OPTIN = 227 * 1024


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    monkeypatch.setenv("KRUBENCH_POISON_OUTPUTS", "1")


@pytest.fixture(scope="module")
def emu():
    build.build("emu")
    lib = torch.ops.krubench_emu
    yield lib
    lib.configure(0, 0, -1, DEFAULT_OPTIN)


def configure(lib, order="ascending", seed=0, skip_barrier_line=-1, smem_optin=DEFAULT_OPTIN, tiled_entries=-1):
    """tiled_entries: the factor size from which the recurrence runs its tiled kernels (-1: the GPU's, 1024)."""
    lib.configure(ORDERS[order], seed, skip_barrier_line, smem_optin, tiled_entries)


def split_factor_grad(gw, shapes):
    sizes = [p * q for p, q in zip(shapes[0::2], shapes[1::2])]
    return [g.reshape(p, q) for g, p, q in zip(gw.split(sizes), shapes[0::2], shapes[1::2])]


def emu_recurrence(lib, factors, u, h0, bias, grad, nonlinearity, dtype):
    """H and the gradients (u, h0, *factors[, bias]) from the emulated forward and backward kernels."""
    w, shapes = compiled._pack(factors, dtype)
    real = dtype.to_real()
    b = torch.zeros(u.shape[-1], dtype=real) if bias is None else bias.to(real)
    u_, h0_ = u.to(dtype).contiguous(), h0.to(dtype).contiguous()
    H = lib.kru_recurrence(u_, h0_, w, shapes, nonlinearity, b)
    grad_u = torch.empty_like(H)
    gh0, gw, gb = lib.kru_recurrence_backward(grad.to(dtype).contiguous(), H, h0_, w, shapes, nonlinearity, b, grad_u)
    return [H, grad_u, gh0, *split_factor_grad(gw, shapes)] + ([gb] if bias is not None else [])


def regs_errors(lib, log_n, B, T, complex_, nonlinearity, seed=0):
    """The register-resident forward (2×2 factors) against the reference's H."""
    problem = recurrence_problem([2] * log_n, B, T, complex_, nonlinearity, seed)
    factors, u, h0, bias, _ = problem
    f32, f64 = (torch.complex64, torch.complex128) if complex_ else (torch.float32, torch.float64)
    ref64 = recurrence_outputs("reference", *problem, nonlinearity, f64)[0]
    ref32 = recurrence_outputs("reference", *problem, nonlinearity, f32)[0]
    w, shapes = compiled._pack(factors, f32)
    b = torch.zeros(u.shape[-1]) if bias is None else bias.float()
    H = lib.kru_recurrence_regs(u.to(f32).contiguous(), h0.to(f32).contiguous(), w, shapes, nonlinearity, b)
    return errors([H], [ref32], [ref64], ["H (register-resident)"])


def errors(got, ref32, ref64, names):
    """What differs from the reference (the tolerance rule of tests/test_kernels.py), as messages."""
    found = []
    for name, g, r32, r64 in zip(names, got, ref32, ref64):
        if not torch.isfinite(g).all():
            found.append(f"{name}: not finite (NaN poison or shared-memory NaN reached it)")
            continue
        try:
            assert_as_accurate(g, r32, r64, name)
        except AssertionError as e:
            found.append(str(e))
    return found


def recurrence_errors(lib, sizes, B, T, complex_, nonlinearity, seed=0):
    problem = recurrence_problem(sizes, B, T, complex_, nonlinearity, seed)
    f32, f64 = (torch.complex64, torch.complex128) if complex_ else (torch.float32, torch.float64)
    ref64 = recurrence_outputs("reference", *problem, nonlinearity, f64)
    ref32 = recurrence_outputs("reference", *problem, nonlinearity, f32)
    got = emu_recurrence(lib, *problem, nonlinearity, f32)
    names = ["H", "grad u", "grad h0"] + [f"grad factor {i}" for i in range(len(sizes))] + ["grad bias"]
    return errors(got, ref32, ref64, names)


RECURRENCE_CASES = [  # (factor sizes, B, T): the stage shapes of the model's merges, and one odd size
    ([2, 2, 2], 3, 3),
    ([4, 4, 2], 2, 2),
    ([16, 2], 2, 2),
    ([3, 2], 2, 3),
    ([2, 32], 2, 3),  # a 32×32 factor: the tiled kernels; the last factor's gradient one matrix product after them
]


@pytest.mark.parametrize("order", ["ascending", "descending", "shuffled"])
@pytest.mark.parametrize("nonlinearity", ["modrelu", "relu", "tanh"])
@pytest.mark.parametrize("complex_", [True, False], ids=["complex", "real"])
@pytest.mark.parametrize("sizes,B,T", RECURRENCE_CASES, ids=lambda v: str(v).replace(" ", ""))
def test_emulated_recurrence_matches_reference(emu, order, nonlinearity, complex_, sizes, B, T):
    configure(emu, order, seed=B * 1000 + T)
    assert recurrence_errors(emu, sizes, B, T, complex_, nonlinearity, seed=len(sizes) + B) == []


@pytest.mark.parametrize("order", ["ascending", *(pytest.param(o, marks=pytest.mark.slow) for o in ("descending", "shuffled"))])
@pytest.mark.parametrize("nonlinearity", ["modrelu", "relu"])
@pytest.mark.parametrize("complex_", [True, False], ids=["complex", "real"])
@pytest.mark.parametrize("sizes,B,T,I", [([2, 2, 2], 3, 3, 3), ([4, 2], 2, 2, 1), ([3, 37], 3, 2, 2)],
                         ids=lambda v: str(v).replace(" ", ""))
def test_emulated_recurrence_with_the_input_map_inside_matches_reference(emu, order, nonlinearity, complex_, sizes, B,
                                                                         T, I):
    """kru_layer_input's forward kernel (u_t = U x_t + b_U computed per step, no u tensor; [3, 37]: the tiled one,
    two blocks) against the reference's H on u made in torch; its backward is kru_recurrence_backward's, tested
    above."""
    configure(emu, order, seed=B * 1000 + T)
    problem = layer_input_problem(sizes, B, T, I, complex_, nonlinearity, seed=len(sizes) + I)
    factors, x, uw, ub, h0, bias, _ = problem
    f32, f64 = (torch.complex64, torch.complex128) if complex_ else (torch.float32, torch.float64)
    ref64 = layer_input_outputs("reference", *problem, nonlinearity, f64)[0]
    ref32 = layer_input_outputs("reference", *problem, nonlinearity, f32)[0]
    w, shapes = compiled._pack(factors, f32)
    b = torch.zeros(h0.shape[-1]) if bias is None else bias.float()
    H = emu.kru_layer_input(x.float(), uw.float(), ub.float(), h0.to(f32).contiguous(), w, shapes, nonlinearity, b)
    assert errors([H], [ref32], [ref64], ["H (input map inside)"]) == []


TWOS_CASES = [  # (log2 N, B, T, thread order, kernel): 1 to 4 register layouts a step (0 to 3 transposes each
    # way); one warp a sequence, 4 a block, with 1, 2 and 4 elements a lane (B = 5: a block with one warp at work)
    pytest.param(3, 2, 3, "ascending", "registers", id="N8"),
    pytest.param(4, 2, 3, "descending", "registers", id="N16"),
    pytest.param(5, 5, 3, "descending", "warp", id="N32"),
    pytest.param(6, 5, 2, "shuffled", "warp", id="N64"),
    pytest.param(7, 5, 3, "ascending", "warp", id="N128"),
    pytest.param(8, 1, 3, "shuffled", "registers", id="N256"),
    pytest.param(9, 2, 2, "ascending", "registers", id="N512"),
    pytest.param(10, 1, 2, "descending", "registers", id="N1024"),
]


def ran_kernels(lib) -> set[str]:
    """Which recurrence kernels ran since the last configure(), told by the barriers that ran."""
    lines = set(lib.barrier_lines())
    return {name for name, marks in KERNEL_BARRIERS.items() if lines & marks}


def _barriers_of(kernel: str) -> set[int]:
    """The source lines of the __syncthreads() in the body of `kernel` (to its closing brace at column 0)."""
    text = SOURCE.read_text().splitlines()
    start = next(i for i, line in enumerate(text) if f" {kernel}(" in line and "__global__" in text[i - 1] + line)
    end = next(i for i in range(start + 1, len(text)) if text[i] == "}")
    return {i + 1 for i in range(start, end) if "__syncthreads()" in text[i]}


KERNEL_BARRIERS = {"registers": _barriers_of("recurrence_backward_regs_kernel"),
                   "warp": _barriers_of("recurrence_backward_warp_kernel"),
                   "fused": _barriers_of("recurrence_backward_kernel"),
                   "tiled": _barriers_of("recurrence_backward_tiled_kernel")}
assert all(KERNEL_BARRIERS.values()), KERNEL_BARRIERS


@pytest.mark.parametrize("nonlinearity", ["modrelu", "relu", "tanh"])
@pytest.mark.parametrize("complex_", [True, False], ids=["complex", "real"])
@pytest.mark.parametrize("log_n,B,T,order,kernel", TWOS_CASES)
def test_emulated_recurrence_of_2x2_factors_matches_reference(emu, nonlinearity, complex_, log_n, B, T, order, kernel):
    """kru_recurrence with 2×2 factors dispatches to the warp (N = 32 ... 128) or register-resident forward and
    backward kernels: H and every gradient against the reference. Register-resident: layouts of 3 index bits
    each, the last overlapping its neighbour when 3 does not divide log2 N."""
    configure(emu, order, seed=log_n)
    dtype = torch.complex64 if complex_ else torch.float32
    assert emu.kru_recurrence_kernel([2] * (2 * log_n), dtype, DEFAULT_OPTIN) == kernel
    assert recurrence_errors(emu, [2] * log_n, B, T, complex_, nonlinearity, seed=log_n) == []
    assert ran_kernels(emu) == {kernel}


@pytest.mark.parametrize("complex_,nonlinearity", [(True, "modrelu"), (True, "tanh"), (False, "relu")],
                         ids=["complex-modrelu", "complex-tanh", "real-relu"])
@pytest.mark.parametrize("log_n", [3, 4, 5])
def test_emulated_recurrence_of_2x2_factors_gradcheck(emu, complex_, nonlinearity, log_n):
    """torch.autograd.gradcheck in complex128/float64 of the register-resident (N = 8: one layout, 16: two) and warp
    (N = 32) kernels, emulated, wrapped in an autograd.Function: their backward is the derivative of their forward."""
    configure(emu)
    # fast mode (a random projection of the Jacobian) for the warp kernels, whose emulated shuffles are slow
    assert recurrence_gradcheck(emu, [2] * log_n, 2, 3, complex_, nonlinearity, seed=log_n, fast_mode=log_n == 5)
    assert ran_kernels(emu) == {"warp" if log_n == 5 else "registers"}


def recurrence_gradcheck(lib, sizes, B, T, complex_, nonlinearity, seed, fast_mode=False):
    """torch.autograd.gradcheck (complex128, float64) of the emulated forward and backward kernels, wrapped in an
    autograd.Function: their backward is the derivative of their forward."""
    factors, u, h0, bias, _ = recurrence_problem(sizes, B, T, complex_, nonlinearity, seed)
    w, shapes = compiled._pack(factors, factors[0].dtype)
    b = torch.zeros(u.shape[-1], dtype=torch.float64) if bias is None else bias

    class Recurrence(torch.autograd.Function):
        @staticmethod
        def forward(ctx, u, h0, w, b):
            H = lib.kru_recurrence(u, h0, w, shapes, nonlinearity, b)
            ctx.save_for_backward(h0, w, b, H)
            return H

        @staticmethod
        def backward(ctx, grad):
            h0, w, b, H = ctx.saved_tensors
            grad_u = torch.empty_like(H)
            gh0, gw, gb = lib.kru_recurrence_backward(grad.contiguous(), H, h0, w, shapes, nonlinearity, b, grad_u)
            return grad_u, gh0, gw, gb

    inputs = [t.clone().requires_grad_() for t in (u, h0, w, b)]
    return torch.autograd.gradcheck(Recurrence.apply, inputs, fast_mode=fast_mode)


def empty_sequence_errors(lib, log_n=4):
    """The backward of sequences of no steps (2×2 factors): ∂L/∂h0 and every gradient zero."""
    w, shapes = compiled._pack([torch.eye(2, dtype=torch.complex64)] * log_n, torch.complex64)
    N = 2 ** log_n
    H, h0, b = torch.empty(2, 0, N, dtype=torch.complex64), torch.randn(2, N, dtype=torch.complex64), torch.zeros(N)
    gh0, gw, gb = lib.kru_recurrence_backward(H, H, h0, w, shapes, "modrelu", b, torch.empty_like(H))
    return [f"{name} of an empty sequence is not zero" for name, g in (("grad h0", gh0), ("grad factors", gw),
                                                                        ("grad bias", gb)) if not torch.all(g == 0)]


@pytest.mark.parametrize("log_n,kernel", [(4, "registers"), (6, "warp")])
def test_the_backward_of_an_empty_sequence_is_zero(emu, log_n, kernel):
    configure(emu, "descending")
    assert empty_sequence_errors(emu, log_n) == []
    assert ran_kernels(emu) == {kernel}


PAPER_SHAPES = {  # the paper's KRUs: factor sizes, and the kernel the CUDA recurrence runs them on
    "copy/adding N=128": ([2] * 7, True, "warp"),
    "pixel MNIST N=512": ([2] * 9, True, "registers"),
    "N=1024": ([2] * 10, True, "registers"),
    "music N=100": ([2, 2, 5, 5], False, "fused"),
    "PTB N=411": ([3, 137], True, "tiled"),  # the 137×137 factor as a matrix product over a block's sequences
    "PTB N=993": ([3, 331], True, "tiled"),
}


@pytest.mark.parametrize("shape", list(PAPER_SHAPES))
def test_the_recurrence_runs_the_kernel_its_choice_names(emu, shape):
    """The pure function kru_recurrence_kernel (cuda/kru_plan.h) names the kernel for the paper's shapes, and the
    dispatching operator runs that one (the barriers that ran tell which), both directions, matching the
    reference."""
    sizes, complex_, expected = PAPER_SHAPES[shape]
    dtype = torch.complex64 if complex_ else torch.float32
    assert emu.kru_recurrence_kernel([s for n in sizes for s in (n, n)], dtype, DEFAULT_OPTIN) == expected
    configure(emu)
    assert recurrence_errors(emu, sizes, 1, 2, complex_, "modrelu", seed=len(sizes)) == []
    assert ran_kernels(emu) == {expected}


TILED_CASES = [  # (factor sizes, B, T, complex, nonlinearity, order, smem_optin KB, tiled_entries): blocks of
    # S sequences, S = the largest power of two up to 16 that shared memory holds and B reaches (the emulated
    # device has one multiprocessor)
    pytest.param([3, 37], 5, 2, True, "modrelu", "descending", 16, -1, id="3x37-S2-3blocks-2chunks"),
    pytest.param([3, 37], 1, 3, False, "tanh", "shuffled", 227, -1, id="3x37-B1-real"),
    pytest.param([5, 40], 3, 2, False, "relu", "ascending", 227, -1, id="5x40-S2-real"),
    pytest.param([37, 3], 3, 2, True, "relu", "ascending", 227, -1, id="37x3-first-factor-gradient-in-kernel"),
    pytest.param([70, 2, 2], 17, 2, True, "tanh", "descending", 227, -1, id="70x70-S16-2blocks-2column-passes"),
    pytest.param([4, 2, 2, 2, 2], 8, 2, True, "modrelu", "ascending", 227, 16, id="4x4-tiled-S8-2row-passes"),
    pytest.param([3, 4], 3, 2, False, "modrelu", "shuffled", 227, 9, id="3x4-every-factor-tiled"),
]


@pytest.mark.parametrize("sizes,B,T,complex_,nonlinearity,order,smem_kb,tiled_entries", TILED_CASES)
def test_emulated_tiled_recurrence_matches_reference(emu, sizes, B, T, complex_, nonlinearity, order, smem_kb,
                                                     tiled_entries):
    """The tiled pair (a block of S sequences, factors of tiled_entries entries or more as a matrix product with
    factor tiles in shared memory): H and every gradient against the reference, batches not a multiple of S (a
    partial last block), several chunks of a factor tile (a small shared memory), several row and column passes."""
    configure(emu, order, seed=B, smem_optin=smem_kb * 1024, tiled_entries=tiled_entries)
    assert recurrence_errors(emu, sizes, B, T, complex_, nonlinearity, seed=len(sizes) + B) == []
    assert ran_kernels(emu) == {"tiled"}


@pytest.mark.parametrize("complex_,nonlinearity", [(True, "modrelu"), (False, "tanh")], ids=["complex", "real"])
def test_emulated_tiled_recurrence_gradcheck(emu, complex_, nonlinearity):
    """gradcheck in complex128/float64 of the tiled pair: 3×3 and 4×4 factors, both tiled (tiled_entries 9), two
    blocks (S = 2, B = 3). Fast mode (a random projection of the Jacobian): each emulated launch of 256 fibers
    costs, and the full Jacobian takes ~300 of them (100 s)."""
    configure(emu, tiled_entries=9)
    assert recurrence_gradcheck(emu, [3, 4], 3, 2, complex_, nonlinearity, seed=3, fast_mode=True)
    assert ran_kernels(emu) == {"tiled"}


@pytest.mark.parametrize("complex_", [True, False], ids=["complex", "real"])
def test_the_fused_kernel_still_takes_large_factors(emu, complex_):
    """The fused pair on a factor of 1024 entries (the tiled kernels' threshold raised past it): factors in shared
    memory, or read from global memory when they do not fit (a small shared memory); the last factor's gradient
    one matrix product after the kernel."""
    for smem_kb in (227, 20):
        configure(emu, "descending", smem_optin=smem_kb * 1024, tiled_entries=1 << 30)
        assert recurrence_errors(emu, [2, 32], 2, 2, complex_, "modrelu", seed=2) == []
        assert ran_kernels(emu) == {"fused"}


def test_the_register_resident_forward_takes_2x2_factors_and_n_from_8(emu):
    configure(emu)
    with pytest.raises(RuntimeError, match="takes 2x2 factors"):
        emu.kru_recurrence_regs(torch.zeros(1, 1, 16), torch.zeros(1, 16), torch.zeros(32), [4, 4, 4, 4], "relu",
                                torch.zeros(16))
    with pytest.raises(RuntimeError, match="takes N = 8 to 8192, got 4"):
        emu.kru_recurrence_regs(torch.zeros(1, 1, 4), torch.zeros(1, 4), torch.zeros(8), [2, 2, 2, 2], "relu",
                                torch.zeros(4))


def test_sizes_beyond_48kb_of_shared_memory_take_the_opt_in_path(emu):
    """N = 2048 and 4096 (256 threads a block): up to 80 KB of shared memory (N = 4096, forward and backward),
    which a launch gets only after cudaFuncSetAttribute, up to the device's opt-in limit (emulated)."""
    configure(emu, "shuffled", seed=1)
    assert recurrence_errors(emu, [16, 16, 8], 1, 2, True, "modrelu") == []  # complex64: fwd 37 KB, bwd 44 KB
    assert recurrence_errors(emu, [16, 16, 16], 1, 1, False, "tanh") == []  # float32: fwd 72 KB, bwd 80 KB


def test_a_block_beyond_the_devices_opt_in_limit_is_refused_with_the_limit(emu):
    """The state (64 KB at N = 4096 in float32) must fit; the factors are read from global memory when they do not."""
    configure(emu, smem_optin=60 * 1024)
    with pytest.raises(RuntimeError, match=r"needs 65536 bytes of shared memory per block, more than this GPU's 61440;"):
        recurrence_errors(emu, [16, 16, 16], 1, 1, False, "tanh")


@pytest.mark.parametrize("order", ["ascending", "descending", "shuffled"])
@pytest.mark.parametrize("bit", range(5))
def test_emulated_warp_shuffles_apply_a_factor_to_a_lane_bit(emu, order, bit):
    """The emulator's __shfl_xor_sync (cuda/kru_emu.cpp's lane_stage_kernel: a 2×2 factor on one index bit
    of 32 elements held one per lane) against the reference; 3 rows, so one warp of the second block exits
    without shuffling."""
    configure(emu, order, seed=bit)
    g = torch.Generator().manual_seed(bit)
    x = torch.randn(3, 32, dtype=torch.complex64, generator=g)
    w = torch.randn(2, 2, dtype=torch.complex64, generator=g)
    factors = [torch.eye(2, dtype=torch.complex64)] * 5
    factors[4 - bit] = w  # lane bit 0 is the last (least significant) Kronecker axis
    torch.testing.assert_close(emu.lane_stage(x, w, bit), kron_matvec_ref(x, factors), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode,message", [
    (1, r"thread 5 exited while thread \d+ waits at the __syncthreads\(\)"),
    (2, r"threads wait at different barriers"),
    (3, r"lane 8 of warp 1 exited while lane \d+ waits at the warp operation"),
    (4, r"wrote past its 64 bytes of dynamic shared memory"),
], ids=["exit-at-barrier", "two-barriers", "exit-at-shuffle", "smem-overflow"])
def test_the_emulator_reports_what_hangs_or_corrupts_a_gpu(emu, mode, message):
    """cuda/kru_emu.cpp's misbehaving_kernel plants each fault; mode 0 (none) runs clean."""
    configure(emu)
    emu.misbehave(0)
    with pytest.raises(RuntimeError, match=message):
        emu.misbehave(mode)


def test_every_barrier_of_the_kernels_runs(emu):
    emu.configure(0, 0, -1, DEFAULT_OPTIN)
    recurrence_errors(emu, [4, 2], 2, 2, True, "modrelu")
    recurrence_errors(emu, [2] * 5, 1, 2, True, "modrelu")
    recurrence_errors(emu, [2] * 8, 1, 2, True, "modrelu")
    regs_errors(emu, 5, 1, 2, True, "modrelu")
    recurrence_errors(emu, [3, 37], 3, 2, True, "modrelu")  # tiled
    lstm_errors(emu, [(8, 2), (2, 2)], 1, 2, 2, True)
    assert set(BARRIER_LINES) <= set(emu.barrier_lines()), "a __syncthreads() of kru_cuda.cu never ran in the emulator"


@pytest.mark.slow  # a test of the tests (one emulator run per barrier): the full suite, not the edit-test loop
@pytest.mark.parametrize("line", BARRIER_LINES)
def test_removing_any_barrier_fails(emu, line):
    """A planted bug: the __syncthreads() on `line` does nothing. Some thread order must expose it."""
    exposed = []
    for order in ("ascending", "descending"):
        configure(emu, order, skip_barrier_line=line)
        try:
            exposed += recurrence_errors(emu, [4, 2, 2], 2, 2, True, "modrelu")
            exposed += regs_errors(emu, 7, 1, 3, True, "modrelu")
            exposed += recurrence_errors(emu, [2] * 7, 1, 3, True, "modrelu")  # one warp a sequence, both ways
            exposed += recurrence_errors(emu, [2] * 8, 1, 3, True, "modrelu")  # register-resident, both ways
            # tiled, two blocks of 2 and 1; first and last factors small: the first stage reads the state loaded or
            # written before it, the last factor's gradient and adjoint read ∂L/∂z_t first
            exposed += recurrence_errors(emu, [3, 37, 2], 3, 2, True, "modrelu")
            exposed += empty_sequence_errors(emu)
            exposed += lstm_errors(emu, [(8, 2), (2, 2)], 1, 2, 2, True)  # joint: gate rows cross threads
            exposed += lstm_errors(emu, [(2, 2), (4, 4)], 4, 2, 2, False)
        except RuntimeError as e:  # the emulator's barrier checks
            exposed.append(str(e))
    configure(emu)
    assert exposed, f"the kernels still match the reference without the __syncthreads() on line {line} of kru_cuda.cu"


SIGN_MUTANTS = {  # file, original, mutant: a sign of the complex arithmetic flipped
    "conj in the factor gradient": ("kru_cuda.cu", "redi[item] = ir - ri;", "redi[item] = ri - ir;"),
    "Re(a conj b) in the factor gradient": ("kru_cuda.cu", "redr[item] = rr + ii;", "redr[item] = rr - ii;"),
    "Re(a b) in a factor row": ("kron_math.h", "yr = rr - ii;", "yr = rr + ii;"),
    "conj in the register-resident adjoint": ("kru_cuda.cu", "di[e] = a00r * d0i - a00i * d0r", "di[e] = a00r * d0i + a00i * d0r"),
    "Re(conj(a) d) in the register-resident adjoint": ("kru_cuda.cu", "dr[e1] += a01i * d0i + a11i * d1i;",
                                                       "dr[e1] -= a01i * d0i + a11i * d1i;"),
    "conj(x) in the register-resident factor gradient": ("kron_math.h", "    im -= ar * bi;", "    im += ar * bi;"),
    "conj in the warp kernels' lane-bit adjoint": ("kru_cuda.cu", "di[e] = sr * d0i - si * d0r", "di[e] = sr * d0i + si * d0r"),
    "Re(a x) in the warp kernels' lane-bit stage": ("kru_cuda.cu", "xr[e] += -si * x0i - oi * pi;", "xr[e] += si * x0i - oi * pi;"),
    "conj in the tiled stage's factor tile": ("kru_cuda.cu", "? -mi[s.woff + k * s.p + c]", "? mi[s.woff + k * s.p + c]"),
    "Re(F x) in the tiled product": ("kru_cuda.cu", "accr[m][n] -= w_i[n] * x_i[m];", "accr[m][n] += w_i[n] * x_i[m];"),
}


@pytest.mark.slow
@pytest.mark.parametrize("mutant", list(SIGN_MUTANTS))
def test_a_flipped_sign_fails(tmp_path, mutant):
    """The emulator rebuilt from copies of cuda/ with one sign flipped (its own operator namespace) fails."""
    from torch.utils import cpp_extension

    file, original, mutated = SIGN_MUTANTS[mutant]
    src = tmp_path / "cuda"
    shutil.copytree(build.source_dir(), src)
    text = (src / file).read_text()
    assert text.count(original) == 1, f"{original!r} is not in {file} once: update SIGN_MUTANTS"
    (src / file).write_text(text.replace(original, mutated))
    lib_name = "krubench_emu_" + re.sub(r"\W", "_", mutant)
    flags = build._flags("emu", src)
    flags.update(name=lib_name, extra_cflags=flags["extra_cflags"] + [f"-DKRU_EMU_LIB={lib_name}"])
    (tmp_path / "build").mkdir()
    cpp_extension.load(build_directory=str(tmp_path / "build"), **flags)
    lib = getattr(torch.ops, lib_name)
    found = recurrence_errors(lib, [4, 2], 2, 2, True, "modrelu")
    found += recurrence_errors(lib, [2] * 4, 2, 2, True, "modrelu")  # register-resident
    found += recurrence_errors(lib, [2] * 6, 2, 2, True, "modrelu")  # one warp a sequence
    found += recurrence_errors(lib, [3, 37], 3, 2, True, "modrelu")  # tiled
    assert found, f"the kernels still match the reference with {mutant} flipped ({file}: {mutated})"


# ---- LSTM+KRU ----

LSTM_CASES = [  # (one product's factor shapes, products G, B, T)
    ([(2, 2), (4, 4)], 4, 2, 3),   # per gate: four N × N products
    ([(8, 2), (2, 2)], 1, 3, 2),   # joint: one 4N × N product
    ([(3, 3), (2, 2)], 4, 2, 2),   # an odd size
]


def lstm_errors(lib, shapes, G, B, T, complex_, seed=0):
    """The emulated LSTM+KRU forward and backward kernels against the reference (tests/test_lstm_kru_kernel.py)."""
    from test_lstm_kru_kernel import lstm_problem, outputs

    p = lstm_problem(shapes, G, B, T, complex_, seed)
    ref64, ref32 = outputs("reference", p, complex_, torch.float64), outputs("reference", p, complex_, torch.float32)
    fdtype = torch.complex64 if complex_ else torch.float32
    w, flat = compiled._pack([f for fs in p["products"] for f in fs], fdtype)
    flat = flat[:2 * len(shapes)]  # one product's shapes
    gx, h0, c0 = (p[k].float().contiguous() for k in ("gx", "h0", "c0"))
    H, C = lib.lstm_kru_recurrence(gx, h0, c0, w, flat)
    ggx, gh0, gc0, gw = lib.lstm_kru_recurrence_backward(p["grad_H"].float(), p["grad_C"].float(), gx, h0, c0, w, flat,
                                                          H, C)
    per_product = [g for part in gw.split(len(gw) // G) for g in split_factor_grad(part, flat)]
    names = ["H", "C", "grad gx", "grad h0", "grad c0"] + [f"grad product {g} factor {i}" for g in range(G)
                                                           for i in range(len(shapes))]
    return errors([H, C, ggx, gh0, gc0, *per_product], ref32, ref64, names)


@pytest.mark.parametrize("order", ["ascending", "descending", "shuffled"])
@pytest.mark.parametrize("complex_", [True, False], ids=["complex", "real"])
@pytest.mark.parametrize("shapes,G,B,T", LSTM_CASES, ids=lambda v: str(v).replace(" ", ""))
def test_emulated_lstm_kru_matches_reference(emu, order, complex_, shapes, G, B, T):
    configure(emu, order, seed=B * 1000 + T)
    assert lstm_errors(emu, shapes, G, B, T, complex_, seed=G) == []
