"""The compiled Kronecker backends against the pure-PyTorch reference (the specification).

Fresh random inputs; values and gradients w.r.t. u, h0, the factors and the modReLU bias; complex and
real; several N, factor sizes, B (including 1) and T (including 1). The tolerance rule of STYLE.md: the
kernel's float32 error against a float64 reference is at most ~2× the float32 reference's own error.
Outputs are poisoned with NaN before every call (KRUBENCH_POISON_OUTPUTS), so an element a kernel
forgets to write fails the comparison. The cuda rows skip without a GPU.
"""
from __future__ import annotations

import math

import pytest
import torch

from krubench import ops
from krubench.models.kru import random_unitary
from krubench.ops import dispatch
from krubench.ops.recurrence import kru_recurrence_ref

BACKENDS = [
    pytest.param("cpp", "cpu", id="cpp"),
    pytest.param("cuda", "cuda", id="cuda",
                 marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    monkeypatch.setenv("KRUBENCH_POISON_OUTPUTS", "1")


def loaded(backend: str) -> None:
    reason = dispatch.load(backend)
    assert reason is None, f"the {backend} backend must build and load here: {reason}"


def assert_as_accurate(got, ref32, ref64, what: str) -> None:
    """The kernel's error vs float64 is at most 2× that of the float32 reference (plus float32 resolution)."""
    err = (got.detach().cpu().to(ref64.dtype) - ref64).abs().max().item()
    base = (ref32.detach().to(ref64.dtype) - ref64).abs().max().item()
    floor = 1e-6 * ref64.abs().max().item()
    assert err <= 2 * base + floor, f"{what}: kernel error {err:.3g} > 2 × float32 reference error {base:.3g} (+{floor:.2g})"


def recurrence_problem(sizes, B, T, complex_, nonlinearity, seed):
    """float64/complex128 inputs of a KRU recurrence with near-unitary factors and an upstream gradient."""
    g = torch.Generator().manual_seed(seed)
    dtype = torch.complex128 if complex_ else torch.float64
    N = math.prod(sizes)
    # the perturbation's norm (≈ 2·scale·√s) the same at every size (at 0.05 for every size, the 19×19 case's
    # factor gradients reached 5·10³ over 37 steps, and float32 rounding with them)
    factors = [(random_unitary(s, complex_, g) + 0.05 * math.sqrt(2 / s) * torch.randn(s, s, generator=g)).to(dtype)
               for s in sizes]
    u = torch.randn(B, T, N, dtype=dtype, generator=g)
    h0 = torch.randn(B, N, dtype=dtype, generator=g)
    # b <= 0: with b > 0 modReLU jumps at z = 0 (h -> b·z/|z|), where float32 rounding decides the side
    bias = -0.3 * torch.rand(N, dtype=torch.float64, generator=g) if nonlinearity == "modrelu" else None
    grad = torch.randn(B, T, N, dtype=dtype, generator=g)
    return factors, u, h0, bias, grad


def recurrence_outputs(kernel, factors, u, h0, bias, grad, nonlinearity, dtype, device="cpu"):
    """H and the gradients w.r.t. (u, h0, *factors[, bias]) in `dtype` on `device`."""
    real = dtype.to_real()
    leaves = [u.to(device, dtype), h0.to(device, dtype), *(f.to(device, dtype) for f in factors)]
    if bias is not None:
        leaves.append(bias.to(device, real))
    leaves = [t.requires_grad_() for t in leaves]
    u_, h0_, *rest = leaves
    fs, b = (rest[:-1], rest[-1]) if bias is not None else (rest, None)
    if kernel == "lanes":  # the C++ kernel on its own layout
        H = lanes_recurrence(u_, h0_, fs, nonlinearity, b)
    else:
        H = ops.kru_recurrence(u_, h0_, fs, nonlinearity, b, kernel=kernel)  # (B, T, N)
    grads = torch.autograd.grad((H * grad.to(device, dtype).conj()).real.sum(), leaves)
    return [H.detach().cpu(), *(gr.cpu() for gr in grads)]


RECURRENCE_CASES = [  # (factor sizes, B, T)
    ([2, 2, 2, 2], 1, 1),
    ([2] * 5, 5, 9),
    ([4, 4, 8], 17, 9),
    ([8], 16, 2),
    ([16, 16, 2], 3, 4),
    ([3, 2], 2, 3),  # a size without an unrolled path
    ([2, 32], 3, 4),  # CUDA: the last factor's gradient one matrix product after the kernel
    ([3, 19], 10, 37),  # C++: a large factor (stage_large), its gradient over blocks of 16 steps, the last partial
    ([19, 3], 3, 5),  # C++: a large factor that is not the last (post = 3)
]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("nonlinearity", ops.NONLINEARITIES)
@pytest.mark.parametrize("complex_", [True, False], ids=["complex", "real"])
@pytest.mark.parametrize("sizes,B,T", RECURRENCE_CASES, ids=lambda v: str(v).replace(" ", ""))
def test_recurrence_matches_reference(backend, device, nonlinearity, complex_, sizes, B, T):
    loaded(backend)
    problem = recurrence_problem(sizes, B, T, complex_, nonlinearity, seed=hash((tuple(sizes), B, T)) % 2**31)
    f32 = torch.complex64 if complex_ else torch.float32
    f64 = torch.complex128 if complex_ else torch.float64
    ref64 = recurrence_outputs("reference", *problem, nonlinearity, f64)
    ref32 = recurrence_outputs("reference", *problem, nonlinearity, f32)
    got = recurrence_outputs(backend, *problem, nonlinearity, f32, device)
    names = ["H", "grad u", "grad h0"] + [f"grad factor {i}" for i in range(len(sizes))] + ["grad bias"]
    for name, g, r32, r64 in zip(names, got, ref32, ref64):
        assert torch.isfinite(g).all(), f"{name}: some elements were not written (NaN poison left)"
        assert_as_accurate(g, r32, r64, name)


@pytest.mark.parametrize("complex_,nonlinearity", [(True, "modrelu"), (False, "tanh")], ids=["complex", "real"])
def test_cpp_results_do_not_depend_on_the_thread_count(complex_, nonlinearity):
    """The suite runs on one thread (conftest); the C++ kernel splits the batch into chunks over threads
    (at::parallel_for) and sums the factor gradients per chunk: on three threads it must give the same values
    and gradients, bit for bit (B=41: six chunks, the last one partial)."""
    loaded("cpp")
    problem = recurrence_problem([4, 2, 2, 2], 41, 6, complex_, nonlinearity, seed=11)
    dtype = torch.complex64 if complex_ else torch.float32
    one = recurrence_outputs("cpp", *problem, nonlinearity, dtype)
    torch.set_num_threads(3)
    three = recurrence_outputs("cpp", *problem, nonlinearity, dtype)
    for i, (a, b) in enumerate(zip(one, three)):
        assert torch.equal(a, b), f"output {i} differs between one and three threads"


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("nonlinearity", ops.NONLINEARITIES)
@pytest.mark.parametrize("complex_", [True, False], ids=["complex", "real"])
@pytest.mark.parametrize("sizes,T", [([2, 4], 3), ([2, 17], 17)], ids=["small", "large-factor"])
def test_recurrence_gradcheck(backend, device, nonlinearity, complex_, sizes, T):
    loaded(backend)
    factors, u, h0, bias, _ = recurrence_problem(sizes, 2, T, complex_, nonlinearity, seed=7)
    leaves = [t.to(device).requires_grad_() for t in (u, h0, *factors)]
    b = bias.to(device).requires_grad_() if bias is not None else None

    def f(u, h0, a, c, *bias):
        return ops.kru_recurrence(u, h0, [a, c], nonlinearity, bias[0] if bias else None, kernel=backend)
    assert torch.autograd.gradcheck(f, (*leaves, *([b] if b is not None else [])))


def lanes_recurrence(u, h0, factors, nonlinearity, bias=None):
    """kru_recurrence_lanes with (B, T, N) in and out: the layout conversions are part of what is tested."""
    lanes = ops.lanes
    H = ops.kru_recurrence_lanes(lanes.sequence_to_lanes(u), lanes.state_to_lanes(h0), factors, nonlinearity, bias)
    return lanes.sequence_from_lanes(H, u.shape[0], u.is_complex())


@pytest.mark.parametrize("nonlinearity", ops.NONLINEARITIES)
@pytest.mark.parametrize("complex_", [True, False], ids=["complex", "real"])
@pytest.mark.parametrize("sizes,B,T", RECURRENCE_CASES, ids=lambda v: str(v).replace(" ", ""))
def test_lanes_layout_matches_reference(nonlinearity, complex_, sizes, B, T):
    """The C++ kernel on its own layout (what the KRU model runs on the CPU), batches padded to whole chunks."""
    loaded("cpp")
    problem = recurrence_problem(sizes, B, T, complex_, nonlinearity, seed=hash((tuple(sizes), B, T, 1)) % 2**31)
    f32 = torch.complex64 if complex_ else torch.float32
    f64 = torch.complex128 if complex_ else torch.float64
    ref64 = recurrence_outputs("reference", *problem, nonlinearity, f64)
    ref32 = recurrence_outputs("reference", *problem, nonlinearity, f32)
    got = recurrence_outputs("lanes", *problem, nonlinearity, f32)
    names = ["H", "grad u", "grad h0"] + [f"grad factor {i}" for i in range(len(sizes))] + ["grad bias"]
    for name, g, r32, r64 in zip(names, got, ref32, ref64):
        assert torch.isfinite(g).all(), f"{name}: some elements were not written (NaN poison left)"
        assert_as_accurate(g, r32, r64, name)


@pytest.mark.parametrize("nonlinearity", ops.NONLINEARITIES)
@pytest.mark.parametrize("complex_", [True, False], ids=["complex", "real"])
@pytest.mark.parametrize("sizes,T", [([2, 4], 3), ([2, 17], 17)], ids=["small", "large-factor"])
def test_lanes_layout_gradcheck(nonlinearity, complex_, sizes, T):
    loaded("cpp")
    factors, u, h0, bias, _ = recurrence_problem(sizes, 2, T, complex_, nonlinearity, seed=8)
    leaves = [t.requires_grad_() for t in (u, h0, *factors)]
    b = [bias.requires_grad_()] if bias is not None else []

    def f(u, h0, a, c, *bias):
        return lanes_recurrence(u, h0, [a, c], nonlinearity, bias[0] if bias else None)
    assert torch.autograd.gradcheck(f, (*leaves, *b))


def layer_input_problem(sizes, B, T, I, complex_, nonlinearity, seed):
    """A recurrence problem whose u = x uwᵀ + ub comes from data x (B, T, I): uw (C·N, I) and ub (C·N,) in u's
    (Re, Im) pair order (C = 2 for complex)."""
    factors, _, h0, bias, grad = recurrence_problem(sizes, B, T, complex_, nonlinearity, seed)
    g = torch.Generator().manual_seed(seed + 1)
    rows = math.prod(sizes) * (2 if complex_ else 1)
    x = torch.randn(B, T, I, dtype=torch.float64, generator=g)
    uw = torch.randn(rows, I, dtype=torch.float64, generator=g) / math.sqrt(I)
    ub = 0.1 * torch.randn(rows, dtype=torch.float64, generator=g)
    return factors, x, uw, ub, h0, bias, grad


def layer_input_outputs(kernel, factors, x, uw, ub, h0, bias, grad, nonlinearity, dtype, device="cpu"):
    """H and the gradients w.r.t. (uw, ub, h0, *factors[, bias]): the reference makes u in torch, the compiled
    backends compute it inside the recurrence (`kru_layer_input`)."""
    real = dtype.to_real()
    leaves = [uw.to(device, real), ub.to(device, real), h0.to(device, dtype), *(f.to(device, dtype) for f in factors)]
    if bias is not None:
        leaves.append(bias.to(device, real))
    leaves = [t.requires_grad_() for t in leaves]
    uw_, ub_, h0_, *rest = leaves
    fs, b = (rest[:-1], rest[-1]) if bias is not None else (rest, None)
    x_ = x.to(device, real)
    if kernel == "reference":
        u = x_ @ uw_.t() + ub_
        u = torch.view_as_complex(u.unflatten(-1, (h0.shape[-1], 2))) if dtype.is_complex else u
        H = ops.kru_recurrence(u, h0_, fs, nonlinearity, b, kernel="reference")
    else:
        H = dispatch.kru_layer_input(x_, uw_, ub_, h0_, fs, nonlinearity, b)
    grads = torch.autograd.grad((H * grad.to(device, dtype).conj()).real.sum(), leaves)
    return [H.detach().cpu(), *(gr.cpu() for gr in grads)]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("nonlinearity", ["modrelu", "tanh"])
@pytest.mark.parametrize("complex_", [True, False], ids=["complex", "real"])
@pytest.mark.parametrize("sizes,B,T,I", [([2, 2, 2], 3, 4, 3), ([4, 2], 2, 5, 1), ([2] * 4, 17, 3, 10)],
                         ids=lambda v: str(v).replace(" ", ""))
def test_recurrence_with_the_input_map_inside_matches_reference(backend, device, nonlinearity, complex_, sizes, B, T,
                                                                I):
    """kru_layer_input (what the KRU layer runs on CUDA: u_t computed in the kernel from x, no u tensor):
    H and the gradients of U, b_U, h0, the factors and the bias against the reference on u = x Uᵀ + b_U."""
    loaded(backend)
    problem = layer_input_problem(sizes, B, T, I, complex_, nonlinearity, seed=len(sizes) + B)
    f32, f64 = (torch.complex64, torch.complex128) if complex_ else (torch.float32, torch.float64)
    ref64 = layer_input_outputs("reference", *problem, nonlinearity, f64)
    ref32 = layer_input_outputs("reference", *problem, nonlinearity, f32)
    got = layer_input_outputs(backend, *problem, nonlinearity, f32, device)
    names = ["H", "grad U", "grad b_U", "grad h0"] + [f"grad factor {i}" for i in range(len(sizes))] + ["grad bias"]
    for name, g, r32, r64 in zip(names, got, ref32, ref64):
        assert torch.isfinite(g).all(), f"{name}: some elements were not written (NaN poison left)"
        assert_as_accurate(g, r32, r64, name)


@pytest.mark.parametrize("complex_", [True, False], ids=["complex", "real"])
def test_recurrence_with_the_input_map_inside_gradcheck(complex_):
    loaded("cpp")
    factors, x, uw, ub, h0, bias, _ = layer_input_problem([2, 2], 2, 3, 2, complex_, "modrelu", seed=5)
    leaves = [t.requires_grad_() for t in (uw, ub, h0, *factors, bias)]

    def f(uw, ub, h0, a, c, b):
        return dispatch.kru_layer_input(x, uw, ub, h0, [a, c], "modrelu", b)
    assert torch.autograd.gradcheck(f, leaves)


@pytest.mark.parametrize("kernel", ["cpp", "lanes"])
def test_factors_that_widen_the_state_between_stages_are_refused_and_narrowing_ones_run(kernel):
    """4×2 ⊗ 2×4 is 8×8, but its state is 16 wide between the stages: the kernels' buffers hold N = 8, and the C++
    kernel wrote past them (its H off by 2.8). Refused by name; 2×4 ⊗ 4×2 (narrower between) matches the reference."""
    loaded("cpp")
    g = torch.Generator().manual_seed(3)
    u, h0 = torch.randn(3, 5, 8, dtype=torch.complex128, generator=g), torch.zeros(3, 8, dtype=torch.complex128)
    widen = [torch.randn(4, 2, dtype=torch.complex128, generator=g), torch.randn(2, 4, dtype=torch.complex128, generator=g)]
    with pytest.raises(RuntimeError, match=r"shapes \[p0, q0, p1, q1, ...\] = \[4, 2, 2, 4\], whose widest stage has 16 "
                                           r"elements: use square factors, or kernel='reference'"):
        recurrence_outputs(kernel, widen, u, h0, None, u, "tanh", torch.complex64)
    narrow = [f.t().contiguous() for f in widen]  # 2×4 ⊗ 4×2
    got = recurrence_outputs(kernel, narrow, u, h0, None, u, "tanh", torch.complex64)
    ref64 = recurrence_outputs("reference", narrow, u, h0, None, u, "tanh", torch.complex128)
    ref32 = recurrence_outputs("reference", narrow, u, h0, None, u, "tanh", torch.complex64)
    for name, a, r32, r64 in zip(["H", "grad u", "grad h0", "grad factor 0", "grad factor 1"], got, ref32, ref64):
        assert_as_accurate(a, r32, r64, name)


def test_the_input_map_refuses_mismatched_shapes_naming_them():
    loaded("cpp")
    factors, x, uw, ub, h0, bias, _ = layer_input_problem([2, 2], 2, 3, 2, True, "modrelu", seed=5)
    with pytest.raises(RuntimeError, match=r"uw must be \(C·N, I\) = \(8, 2\)"):
        dispatch.kru_layer_input(x, uw[:, :1], ub, h0, factors, "modrelu", bias)
    with pytest.raises(RuntimeError, match=r"ub must be \(C·N,\) = \(8,\)"):
        dispatch.kru_layer_input(x, uw, ub[:4], h0, factors, "modrelu", bias)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_tanh_is_float_accurate_and_keeps_nan(backend, device):
    """The kernels' own float tanh (kron_math.h: the CPU's is not libm's, so that it vectorises), seen
    through a one-step recurrence with an identity factor: H = tanh(u) within 2 ulp of the exact value on
    the CPU, ±1 at large |u|, NaN in -> NaN out. On the GPU the kernel calls CUDA's tanhf, documented at
    2 ulp from the *correctly rounded* result (CUDA C++ Programming Guide, Mathematical Functions,
    single-precision table), so up to 2.5 ulp from the exact value: that is the GPU row's bound."""
    loaded(backend)
    x = torch.cat([torch.linspace(-12, 12, 200_003, dtype=torch.float64), torch.logspace(-30, 1.2, 5_000, dtype=torch.float64),
                   torch.tensor([0.0, -0.0, 0.625, -0.625, 9.5, 50.0, -50.0, math.inf, -math.inf])]).float()
    u = x.view(1, 1, -1)[..., : x.numel() // 2 * 2].reshape(-1, 1, 2).to(device)  # N = 2: rows of two values
    eye = torch.eye(2, device=device)
    H = ops.kru_recurrence(u, torch.zeros_like(u[:, 0]), [eye], "tanh", kernel=backend).flatten().cpu()
    exact = torch.tanh(u.flatten().cpu().double())
    ulp = torch.ldexp(torch.ones_like(exact), torch.frexp(exact.abs().clamp_min(2.0**-126))[1] - 24)  # float's, at exact
    err = (H.double() - exact).abs() / ulp
    bound = 2.5 if device == "cuda" else 2.0
    assert err.max() <= bound, f"tanh is {err.max():.2f} ulp off at u = {u.flatten()[err.argmax()].item()}"
    nan = ops.kru_recurrence(torch.tensor([[[math.nan, 1.0]]], device=device), torch.zeros(1, 2, device=device), [eye],
                             "tanh", kernel=backend)
    assert nan[0, 0, 0].isnan() and nan[0, 0, 1].item() == pytest.approx(math.tanh(1.0))


@pytest.mark.parametrize("kernel,device", [*BACKENDS, pytest.param("lanes", "cpu", id="lanes")])
@pytest.mark.parametrize("complex_", [True, False], ids=["complex", "real"])
def test_modrelu_backward_is_finite_where_the_modulus_is_below_eps(kernel, device, complex_):
    """modReLU with a positive bias b and |z| far below its eps (1e-6): h = z (|z| + b) / (|z| + eps) is on,
    with |h| < b. The backward recovers |z| from |h| as the positive root of a quadratic whose textbook form
    cancels there (kron_math.h, nl_backward): in float32 it gave |z| = 0 and NaN gradients, and an adding T=400
    run died of it at step 16,978 (results/sweeps/adding_T400_kru_steps20k_s0). Values and gradients against
    the reference."""
    loaded("cpp" if kernel == "lanes" else kernel)
    g = torch.Generator().manual_seed(0)
    dtype64 = torch.complex128 if complex_ else torch.float64
    scale = torch.logspace(-12, -6.5, 16, dtype=torch.float64)  # |u| per element, all below eps
    u = (torch.randn(3, 2, 16, dtype=dtype64, generator=g) * scale)
    h0 = torch.zeros(3, 16, dtype=dtype64)
    eye = [torch.eye(4, dtype=dtype64), torch.eye(4, dtype=dtype64)]
    bias = torch.full((16,), 0.01, dtype=torch.float64)
    grad = torch.randn(3, 2, 16, dtype=dtype64, generator=g)
    problem = (eye, u, h0, bias, grad, "modrelu")
    f32 = torch.complex64 if complex_ else torch.float32
    got = recurrence_outputs(kernel, *problem, f32, device)
    ref32, ref64 = recurrence_outputs("reference", *problem, f32), recurrence_outputs("reference", *problem, dtype64)
    for name, a, r32, r64 in zip(["H", "grad u", "grad h0", "grad factor 0", "grad factor 1", "grad bias"], got, ref32,
                                 ref64):
        assert torch.isfinite(a).all(), f"{name} is not finite"
        assert_as_accurate(a, r32, r64, name)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_backward_overwrites_only_a_gradient_it_owns(backend, device, monkeypatch):
    """∂L/∂u reuses the memory of ∂L/∂H when nothing else refers to it (the training step's peak memory),
    and never touches a gradient the caller still holds."""
    from krubench.ops import compiled
    loaded(backend)
    factors, u, h0, bias, grad = recurrence_problem([4, 4, 2], 3, 5, True, "modrelu", seed=11)
    args = [t.to(device, torch.complex64) for t in (u, h0, *factors)]
    u32, h032, *f32 = [t.requires_grad_() for t in args]
    b32 = bias.to(device, torch.float32)
    owned = []
    monkeypatch.setattr(compiled, "sole_owner", lambda t, real=compiled.sole_owner: owned.append(real(t)) or owned[-1])

    def grad_u(upstream: str):
        u32.grad = None
        H = ops.kru_recurrence(u32, h032, f32, "modrelu", b32, kernel=backend)
        g = grad.to(device, torch.complex64)
        if upstream == "held":
            kept = g.clone()
            H.backward(g)  # the caller holds g: it must come back unchanged
            assert torch.equal(g, kept), "the backward pass overwrote a gradient its caller holds"
        elif upstream == "view":  # ∂L/∂H arrives as a view of a real buffer: left alone
            (torch.view_as_real(H) * torch.view_as_real(g)).sum().backward()
        else:
            (H * g.conj()).real.sum().backward()  # autograd's own plain ∂L/∂H: free to reuse
        return u32.grad.clone()

    expected = grad_u("held")
    torch.testing.assert_close(grad_u("view"), expected)
    torch.testing.assert_close(grad_u("owned"), expected)
    assert owned[:2] == [False, False], owned  # never a gradient the caller holds, never a view
    if device == "cpu":
        # the reuse itself: on the CPU with the pinned torch. On an H200 with torch 2.11 (BENCHMARKS.md, GPU)
        # autograd's ∂L/∂H was never the sole owner of its storage: the backward then allocates, still correct
        assert owned[2], owned


def test_without_torch_use_counts_the_backward_allocates_and_says_so_once(monkeypatch, caplog):
    """sole_owner asks private torch APIs; if a torch release drops them the fused backward stays correct
    (∂L/∂u in a new tensor) and one warning says what it costs."""
    from krubench.ops import compiled
    loaded("cpp")
    monkeypatch.delattr(torch._C, "_storage_Use_Count")
    monkeypatch.setattr(compiled, "_use_counts_missing", False)
    factors, u, h0, bias, grad = recurrence_problem([4, 2], 2, 3, True, "modrelu", seed=12)
    leaves = [t.to(torch.complex64).requires_grad_() for t in (u, h0, *factors)]
    b = bias.float()
    with caplog.at_level("WARNING", logger="krubench"):
        grads = []
        for kernel in ("cpp", "cpp", "reference"):
            H = ops.kru_recurrence(leaves[0], leaves[1], leaves[2:], "modrelu", b, kernel=kernel)
            grads.append(torch.autograd.grad((H * grad.to(torch.complex64).conj()).real.sum(), leaves[0])[0])
    torch.testing.assert_close(grads[0], grads[2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "_storage_Use_Count" in warnings[0] and "3x" in warnings[0], warnings


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_operators_pass_opcheck(backend, device):
    """Schemas, autograd and fake (meta) registrations, as torch.library.opcheck checks them."""
    from krubench.ops import compiled
    loaded(backend)
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape, dtype=torch.complex64: torch.randn(*shape, dtype=dtype, generator=g).to(device)
    w, shapes = compiled._pack([rand(2, 2) for _ in range(3)], torch.complex64)
    args = (rand(3, 4, 8), rand(3, 8), w, shapes, "modrelu", -rand(8, dtype=torch.float32).abs())
    torch.library.opcheck(torch.ops.krubench.kru_recurrence.default, [a.requires_grad_() if isinstance(a, torch.Tensor)
                                                                       else a for a in args])
    u, h0, *rest = args
    x, uw, ub = rand(3, 4, 5, dtype=torch.float32), rand(16, 5, dtype=torch.float32), rand(16, dtype=torch.float32)
    torch.library.opcheck(torch.ops.krubench.kru_layer_input.default,
                          [x, *(a.detach().requires_grad_() if isinstance(a, torch.Tensor) else a
                                for a in (uw, ub, h0, *rest))])
    H = torch.ops.krubench.kru_recurrence(u.detach(), h0.detach(), w, shapes, "modrelu", rest[-1].detach())
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    # the backward's functional twin, which torch.compile's backward graphs call (no double backward: no autograd)
    twin_checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.krubench.kru_recurrence_backward_functional.default,
                          (torch.randn_like(H), H, *plain[1:]), test_utils=twin_checks)
    if backend == "cpp":
        lanes = ops.lanes
        u, h0, *rest = args
        largs = (lanes.sequence_to_lanes(u), lanes.state_to_lanes(h0), *rest)
        torch.library.opcheck(torch.ops.krubench.kru_recurrence_lanes.default,
                              [a.detach().requires_grad_() if isinstance(a, torch.Tensor) else a for a in largs])
        lH = torch.ops.krubench.kru_recurrence_lanes(*[a.detach() if isinstance(a, torch.Tensor) else a for a in largs])
        torch.library.opcheck(torch.ops.krubench.kru_recurrence_lanes_backward_functional.default,
                              (torch.randn_like(lH), lH, *[a.detach() if isinstance(a, torch.Tensor) else a
                                                             for a in largs[1:]]), test_utils=twin_checks)


# ---- dispatch ----

def test_auto_picks_the_compiled_backend_of_the_device():
    loaded("cpp")
    assert ops.backend_for("auto", "cpu") == "cpp"
    assert ops.backend_for("reference", "cpu") == "reference"


def test_a_backend_for_another_device_or_an_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="model.kernel=cuda cannot run tensors on cpu"):
        ops.backend_for("cuda", "cpu")
    with pytest.raises(ValueError, match="model.kernel='gpu' is not supported"):
        ops.backend_for("gpu", "cpu")


def test_a_backend_that_cannot_build_falls_back_with_one_warning(monkeypatch, caplog):
    def fail(backend):
        raise ops.build.BuildError("the compiler is missing")
    monkeypatch.setattr(dispatch, "_unavailable", {})
    monkeypatch.setattr(ops.build, "build", fail)
    u, h0, f = torch.randn(3, 5, 4), torch.randn(3, 4), [torch.randn(2, 2), torch.randn(2, 2)]
    with caplog.at_level("WARNING", logger="krubench"):
        H = ops.kru_recurrence(u, h0, f, "tanh", kernel="auto")
        ops.kru_recurrence(u, h0, f, "tanh", kernel="cpp")
    torch.testing.assert_close(H, kru_recurrence_ref(u, h0, f, "tanh"))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "the compiler is missing" in warnings[0] and "model.kernel=reference" in warnings[0]
    assert ops.backend_for("auto", "cpu") == "reference"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("nonlinearity", ops.NONLINEARITIES)
@pytest.mark.parametrize("log_n,B,T", [(3, 3, 5), (5, 6, 7), (7, 17, 9), (8, 3, 5), (10, 5, 20), (11, 3, 4), (12, 3, 4)])
def test_cuda_recurrence_of_2x2_factors_matches_reference(nonlinearity, log_n, B, T):
    """kru_recurrence with 2×2 factors on the GPU, forward and backward (the warp or register-resident kernels
    where kru_recurrence_kernel says so; also emulated in tests/test_kernels_emu.py), and the forced
    register-resident forward kru_recurrence_regs."""
    from krubench.ops import compiled
    loaded("cuda")
    problem = recurrence_problem([2] * log_n, B, T, True, nonlinearity, seed=log_n)
    factors, u, h0, bias, _ = problem
    ref64 = recurrence_outputs("reference", *problem, nonlinearity, torch.complex128)
    ref32 = recurrence_outputs("reference", *problem, nonlinearity, torch.complex64)
    got = recurrence_outputs("cuda", *problem, nonlinearity, torch.complex64, "cuda")
    names = ["H", "grad u", "grad h0"] + [f"grad factor {i}" for i in range(log_n)] + ["grad bias"]
    for name, g, r32, r64 in zip(names, got, ref32, ref64):
        assert torch.isfinite(g).all(), f"{name}: some elements were not written (NaN poison left)"
        assert_as_accurate(g, r32, r64, name)
    w, shapes = compiled._pack([f.cuda() for f in factors], torch.complex64)
    b = torch.zeros(u.shape[-1]) if bias is None else bias.float()
    H = torch.ops.krubench.kru_recurrence_regs(u.to("cuda", torch.complex64), h0.to("cuda", torch.complex64), w, shapes,
                                               nonlinearity, b.cuda())
    assert torch.isfinite(H).all()
    assert_as_accurate(H, ref32[0], ref64[0], "H (register-resident, forced)")


H200_SMEM = 232448  # shared memory a block may opt in to on H100/H200


@pytest.mark.parametrize("sizes,dtype,expected", [
    ([2] * 5, torch.complex64, "warp"),          # one warp a sequence
    ([2] * 7, torch.complex64, "warp"),          # copy, adding: N = 128
    ([2] * 8, torch.float32, "registers"),
    ([2] * 9, torch.complex64, "registers"),     # pixel MNIST: N = 512
    ([2] * 10, torch.complex64, "registers"),
    ([2] * 11, torch.complex64, "registers"),
    ([2] * 12, torch.complex64, "fused"),        # N = 4096: the backward's shared memory does not fit
    ([2] * 10, torch.complex128, "registers"),
    ([2] * 11, torch.complex128, "fused"),
    ([2] * 2, torch.complex64, "fused"),         # N = 4: fewer elements than a thread holds
    ([4] * 5, torch.complex64, "fused"),         # merged factors
    ([2, 2, 5, 5], torch.float32, "fused"),      # music, N = 100
    ([3, 137], torch.complex64, "tiled"),        # PTB, N = 411
    ([3, 331], torch.complex64, "tiled"),        # PTB, N = 993
    ([3, 331], torch.complex128, "tiled"),
    ([2, 32], torch.float32, "tiled"),           # a factor of 32×32 entries: the tiled kernels' threshold
    ([3, 31], torch.complex64, "fused"),         # 31×31: under it
], ids=lambda v: str(v).replace(" ", ""))
def test_the_cuda_recurrence_kernel_is_chosen_by_the_factor_shapes(sizes, dtype, expected):
    """The CUDA recurrence's choice (cuda/kru_plan.h) as a pure function, asked through the CPU library without
    a GPU: tiled for a factor of 32×32 entries or more, one warp a sequence for 2×2 factors at N = 32 ... 128,
    register-resident for other 2×2 factors whose kernels fit the device's shared memory, fused otherwise."""
    loaded("cpp")
    shapes = [s for n in sizes for s in (n, n)]
    assert torch.ops.krubench.kru_recurrence_kernel(shapes, dtype, H200_SMEM) == expected


def test_layer_path_chooses_each_layers_operator_and_layout():
    """The one place a layer's operator and layout are chosen, by backend, read-out and whether x needs a
    gradient (and, for LSTM+KRU, the input's width)."""
    from krubench.ops.layer import LSTM_INPUT_IN_KERNEL_UPTO, layer_path
    data, trained = torch.zeros(2, 3, 4), torch.zeros(2, 3, 4, requires_grad=True)
    assert layer_path("kru", "cpp", data) == "lanes_fused"
    assert layer_path("kru", "cpp", data, readout=False) == layer_path("kru", "cpp", trained) == "lanes"
    assert layer_path("kru", "cuda", data) == layer_path("kru", "cuda", data, readout=False) == "rows_input_inside"
    assert layer_path("kru", "cuda", trained) == layer_path("kru", "reference", data) == "rows"
    wide = torch.zeros(2, 3, LSTM_INPUT_IN_KERNEL_UPTO + 1)
    assert layer_path("lstm_kru", "cpp", data) == "input_inside"
    assert {layer_path("lstm_kru", "cpp", trained), layer_path("lstm_kru", "cpp", wide),
            layer_path("lstm_kru", "cuda", data), layer_path("lstm_kru", "reference", data)} == {"gates"}
    with pytest.raises(ValueError, match="layer='gru'"):
        layer_path("gru", "cpp", data)


def test_the_kru_layer_leaves_factors_unmerged_where_the_register_resident_kernels_take_them(monkeypatch):
    """On CUDA the layer hands the recurrence 2×2 factors unmerged when it runs them register-resident, and
    merges them as before otherwise (the device's shared memory decides; faked here, no GPU needed)."""
    from types import SimpleNamespace

    from krubench.ops import layer
    loaded("cpp")
    limit = {"bytes": H200_SMEM}
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(shared_memory_per_block_optin=limit["bytes"]))
    twos = [torch.eye(2, dtype=torch.complex64)] * 9
    assert [f.shape[0] for f in layer.recurrence_stages(twos, "cuda", 16, torch.complex64)] == [2] * 9
    assert [f.shape[0] for f in layer.recurrence_stages(twos[:7], "cuda", 16, torch.complex64)] == [2] * 7  # warp
    assert [f.shape[0] for f in layer.recurrence_stages(twos, "cpp", 16, torch.complex64)] == [4] * 4 + [2]
    music = [torch.eye(n) for n in (2, 2, 5, 5)]
    assert [f.shape[0] for f in layer.recurrence_stages(music, "cuda", 16, torch.float32)] == [4, 5, 5]
    limit["bytes"] = 16 * 1024  # too little for the backward at N = 512 (35 KB): fused, merged up to 16
    assert [f.shape[0] for f in layer.recurrence_stages(twos, "cuda", 16, torch.complex64)] == [16, 16, 2]


AUTOCAST = [  # (kernel, device, autocast dtype)
    pytest.param("reference", "cpu", torch.bfloat16, id="reference"),
    pytest.param("cpp", "cpu", torch.bfloat16, id="cpp"),
    pytest.param("cuda", "cuda", torch.float16, id="cuda",
                 marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


@pytest.mark.parametrize("kernel,device,amp", AUTOCAST)
@pytest.mark.parametrize("complex_", [True, False], ids=["complex", "real"])
def test_under_autocast_the_recurrence_runs_in_fp32(kernel, device, amp, complex_):
    """AMP: a half-precision input projection reaches the recurrence, which runs in fp32 exactly as it
    would on the promoted input outside autocast; a KRU model trains a step under autocast."""
    from krubench.models import build_model
    if kernel != "reference":
        loaded(kernel)
    problem = recurrence_problem([4, 2], 3, 4, complex_, "modrelu", seed=3)
    factors, u, h0, bias, _ = [t.to(device) if torch.is_tensor(t) else [f.to(device) for f in t] for t in problem]
    f32 = torch.complex64 if complex_ else torch.float32
    factors, h0 = [f.to(f32) for f in factors], h0.to(f32)
    if complex_:  # complex32 is complex float16; there is no complex bfloat16
        half = u.to(torch.complex32) if amp == torch.float16 else u.to(torch.complex64)
    else:
        half = u.to(amp)
    with torch.autocast(device, dtype=amp):
        H = ops.kru_recurrence(half, h0, factors, "modrelu", bias.float(), kernel=kernel)
    expected = ops.kru_recurrence(dispatch.at_least_fp32(half), h0, factors, "modrelu", bias.float(), kernel=kernel)
    assert H.dtype == f32
    torch.testing.assert_close(H, expected, rtol=0, atol=0)

    torch.manual_seed(0)
    model = build_model({"name": "kru", "hidden_size": 16, "complex": complex_, "merge_upto": 4, "kernel": kernel},
                        3, 5).to(device)
    with torch.autocast(device, dtype=amp):
        y, h = model(torch.randn(5, 6, 3, device=device))
        loss = y.float().square().mean()
    loss.backward()
    assert h.dtype == f32
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"grad of {name} under autocast"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("extra", [{}, {"complex": False, "nonlinearity": "tanh"}], ids=["complex", "real-tanh"])
def test_the_kru_model_on_cuda_computes_its_input_map_in_the_kernel(extra, monkeypatch):
    """On CUDA the KRU layer hands x to kru_layer_input (u_t made in the kernel, no u tensor); outputs, state
    and gradients equal the reference model's on the CPU."""
    from krubench.models import build_model
    from krubench.ops import layer
    loaded("cuda")
    calls = []
    inside = layer.kru_layer_input
    monkeypatch.setattr(layer, "kru_layer_input", lambda *a, **k: calls.append(1) or inside(*a, **k))
    cfg = {"name": "kru", "hidden_size": 16, "complex": True, "merge_upto": 4, **extra}
    torch.manual_seed(0)
    fast = build_model({**cfg, "kernel": "cuda"}, 3, 5).cuda()
    slow = build_model({**cfg, "kernel": "reference"}, 3, 5)
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(17, 6, 3)
    (yf, hf), (ys, hs) = fast(x.cuda()), slow(x)
    assert calls, "the CUDA layer did not take the fused input map"
    torch.testing.assert_close(yf.cpu(), ys, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(hf.cpu(), hs, rtol=1e-4, atol=1e-5)
    yf.square().sum().backward()
    ys.square().sum().backward()
    for (name, pf), ps in zip(fast.named_parameters(), slow.parameters()):
        torch.testing.assert_close(pf.grad.cpu(), ps.grad, rtol=1e-3, atol=1e-5, msg=f"grad of {name}")


@pytest.mark.parametrize("model,extra", [
    ("kru", {}),
    ("kru", {"complex": False, "nonlinearity": "tanh"}),  # one plane in the lanes layout
    ("lstm_kru", {"factorisation": "joint"}),
], ids=["kru", "kru-real-tanh", "lstm_kru"])
def test_models_agree_across_kernels_and_report_their_backend(model, extra):
    """Same parameters, same outputs, final states and gradients: the KRU runs the lanes layout on cpp,
    with a batch (17) that is not a whole number of chunks and a carried initial state."""
    from krubench.models import build_model
    loaded("cpp")
    cfg = {"name": model, "hidden_size": 16, "complex": True, "merge_upto": 4, **extra}
    torch.manual_seed(0)
    fast = build_model({**cfg, "kernel": "cpp"}, 3, 5)
    slow = build_model({**cfg, "kernel": "reference"}, 3, 5)
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(17, 6, 3)
    state = None
    if model == "kru":  # a state carried over from a previous segment (truncated BPTT)
        state = 0.3 * torch.randn(17, 16, dtype=torch.complex64 if cfg["complex"] else torch.float32)
    (yf, hf), (ys, hs) = fast(x, state), slow(x, state)
    torch.testing.assert_close(yf, ys, rtol=1e-4, atol=1e-5)
    if model == "kru":
        torch.testing.assert_close(hf, hs, rtol=1e-4, atol=1e-5)
    yf.square().sum().backward()
    ys.square().sum().backward()
    for (name, pf), ps in zip(fast.named_parameters(), slow.parameters()):
        torch.testing.assert_close(pf.grad, ps.grad, rtol=1e-3, atol=1e-5, msg=f"grad of {name}")
    assert fast.kron_backend("cpu") == "cpp" and slow.kron_backend("cpu") == "reference"
