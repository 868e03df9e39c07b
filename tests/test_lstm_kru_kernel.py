"""LSTM+KRU's whole recurrence in one C++ call (`lstm_kru_recurrence`: gates from gx = W_ih x + b and the
Kronecker-factored W_hh, the LSTM cell, all T steps; backward through time with the factors' gradients)
against its definition, `lstm_kru_recurrence_ref` (ops/recurrence.py) on the pure-PyTorch reference: H, C and the gradients
of gx, h0, c0 and every factor, under STYLE.md's tolerance rule (test_kernels.assert_as_accurate); outputs
poisoned with NaN; float64/complex128 gradcheck; the model against a dense LSTM. What LSTM+KRU runs on the CPU.
"""
from __future__ import annotations

import math

import pytest
import torch

from krubench import ops
from krubench.models import LSTMKRU
from krubench.models.kru import random_unitary
from krubench.ops import dispatch
from krubench.ops.kron import kron_dense

from test_kernels import BACKENDS, assert_as_accurate, loaded

CASES = [  # (one product's factor shapes (p, q), products G, B, T)
    ([(2, 2), (2, 2), (2, 2)], 4, 1, 1),      # per gate: four N × N products
    ([(4, 4), (2, 2)], 4, 17, 6),             # a batch that is not a whole number of chunks
    ([(8, 2), (2, 2), (2, 2)], 1, 9, 5),      # joint: one 4N × N product, its first factor 4·q × q
    ([(3, 3), (2, 2)], 4, 5, 4),              # a size without an unrolled stage
    ([(4, 4), (4, 4), (4, 4)], 4, 8, 3),      # N = 64, as merged for the C++ kernel
    ([(2, 2), (19, 19)], 4, 10, 37),          # a large last factor: its gradient by blocks of 16 steps in C++
]


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    monkeypatch.setenv("KRUBENCH_POISON_OUTPUTS", "1")


def lstm_problem(shapes, G, B, T, complex_, seed) -> dict:
    """float64 (complex128 factors) inputs and upstream gradients of one recurrence."""
    g = torch.Generator().manual_seed(seed)
    dtype = torch.complex128 if complex_ else torch.float64
    N = math.prod(q for _, q in shapes)

    def factor(p, q):
        base = random_unitary(q, complex_, g) if p == q else torch.randn(p, q, dtype=torch.float64, generator=g) / p ** 0.5
        return (base + 0.05 * torch.randn(p, q, generator=g)).to(dtype)
    r = lambda *shape: torch.randn(*shape, dtype=torch.float64, generator=g)  # noqa: E731
    return {"products": [[factor(p, q) for p, q in shapes] for _ in range(G)], "gx": r(B, T, 4 * N),
            "h0": r(B, N), "c0": r(B, N), "grad_H": r(B, T, N), "grad_C": r(B, T, N)}


def outputs(kernel, p, complex_, dtype, use=("H", "C"), device="cpu"):
    """H, C and the gradients w.r.t. (gx, h0, c0, *factors) in `dtype` (the factors complex if complex_) on
    `device` of a loss on the outputs named in `use`."""
    fdtype = dtype.to_complex() if complex_ else dtype
    gx, h0, c0 = (p[k].to(device, dtype).requires_grad_() for k in ("gx", "h0", "c0"))
    products = [[f.to(device, fdtype).requires_grad_() for f in fs] for fs in p["products"]]
    H, C = dispatch.lstm_kru_recurrence(gx, h0, c0, products, kernel)
    loss = sum((out * p[f"grad_{name}"].to(device, dtype)).sum() for name, out in (("H", H), ("C", C)) if name in use)
    leaves = [gx, h0, c0, *(f for fs in products for f in fs)]
    return [H.detach(), C.detach(), *torch.autograd.grad(loss, leaves, materialize_grads=True)]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("complex_", [True, False], ids=["complex", "real"])
@pytest.mark.parametrize("shapes,G,B,T", CASES, ids=lambda v: str(v).replace(" ", ""))
def test_the_compiled_recurrence_matches_its_definition(backend, device, complex_, shapes, G, B, T):
    """Both compiled backends (the CUDA kernels also run without a GPU, in tests/test_kernels_emu.py)."""
    loaded(backend)
    p = lstm_problem(shapes, G, B, T, complex_, seed=B * 100 + T)
    ref64, ref32 = outputs("reference", p, complex_, torch.float64), outputs("reference", p, complex_, torch.float32)
    got = outputs(backend, p, complex_, torch.float32, device=device)
    names = ["H", "C", "grad gx", "grad h0", "grad c0"] + [f"grad product {g} factor {i}" for g in range(G)
                                                           for i in range(len(shapes))]
    assert_all_as_accurate(names, got, ref32, ref64)


def assert_all_as_accurate(names, got, ref32, ref64) -> None:
    """Each output written (no NaN poison left) and as accurate as the float32 reference (STYLE.md's rule)."""
    assert len(names) == len(got)
    for name, g, r32, r64 in zip(names, got, ref32, ref64):
        assert g.shape == r64.shape, name
        assert torch.isfinite(g).all(), f"{name}: some elements were not written (NaN poison left)"
        assert_as_accurate(g, r32, r64, name)


@pytest.mark.parametrize("complex_", [True, False], ids=["complex", "real"])
def test_cpp_results_do_not_depend_on_the_thread_count(complex_):
    """Chunks of sequences run over threads (at::parallel_for), the factor gradients summed per chunk: three
    threads give what one gives (conftest runs tests on one), bit for bit (B=41: six chunks, one partial)."""
    loaded("cpp")
    p = lstm_problem([(4, 4), (2, 2)], 4, 41, 5, complex_, seed=12)
    one = outputs("cpp", p, complex_, torch.float32)
    torch.set_num_threads(3)
    three = outputs("cpp", p, complex_, torch.float32)
    for i, (a, b) in enumerate(zip(one, three)):
        assert torch.equal(a, b), f"output {i} differs between one and three threads"


@pytest.mark.parametrize("use", [("H",), ("C",)], ids=["H-only", "C-only"])
def test_an_unused_output_counts_as_a_zero_gradient(use):
    loaded("cpp")
    p = lstm_problem([(2, 2), (4, 4)], 4, 10, 5, True, seed=4)
    ref = outputs("reference", p, True, torch.float64, use)
    got = outputs("cpp", p, True, torch.float64, use)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("complex_", [True, False], ids=["complex", "real"])
@pytest.mark.parametrize("G,shapes", [(4, [(2, 2), (2, 2)]), (1, [(8, 2), (2, 2)])], ids=["per-gate", "joint"])
def test_gradcheck(complex_, G, shapes):
    loaded("cpp")
    p = lstm_problem(shapes, G, 3, 3, complex_, seed=9)
    factors = [f.requires_grad_() for fs in p["products"] for f in fs]
    leaves = [p[k].requires_grad_() for k in ("gx", "h0", "c0")] + factors
    k = len(shapes)

    def f(gx, h0, c0, *flat):
        return dispatch.lstm_kru_recurrence(gx, h0, c0, [list(flat[i:i + k]) for i in range(0, len(flat), k)], "cpp")
    assert torch.autograd.gradcheck(f, leaves)


def test_bad_shapes_are_refused_with_their_shapes():
    loaded("cpp")
    p = lstm_problem([(2, 2), (2, 2)], 4, 3, 3, False, seed=1)
    with pytest.raises(RuntimeError, match=r"gx must be \(B, T, 4N\) = \(B, T, 16\), got \[3, 3, 15\]"):
        dispatch.lstm_kru_recurrence(p["gx"][..., :15], p["h0"], p["c0"], p["products"], "cpp")
    with pytest.raises(RuntimeError, match=r"c0 must be \(3, 4\), got \[3, 5\]"):
        dispatch.lstm_kru_recurrence(p["gx"], p["h0"], torch.zeros(3, 5, dtype=torch.float64), p["products"], "cpp")
    with pytest.raises(RuntimeError, match=r"w must hold G products of 8 entries each with G · 4 = 4 · 4 output rows"):
        dispatch.lstm_kru_recurrence(p["gx"], p["h0"], p["c0"], p["products"][:3], "cpp")


@pytest.mark.parametrize("kernel", ["cpp", "reference"])
@pytest.mark.parametrize("factorisation", ["per_gate", "joint"])
def test_the_model_is_an_lstm_with_the_dense_kronecker_product_as_w_hh(kernel, factorisation):
    """LSTMKRU's outputs and state against a dense LSTM computed step by step with W_hh = kron_dense(factors)
    (per gate: the four products stacked), from the model's own parameters."""
    torch.manual_seed(2)
    model = LSTMKRU(3, 2, hidden_size=8, factorisation=factorisation, kernel=kernel, complex=True).double()
    for factor in model.recurrent_parameters():  # .double() leaves complex parameters as they are
        factor.data = factor.data.to(torch.complex128)
    dense = torch.cat([kron_dense(list(kf.factors)) for kf in model.W_hh]).real  # (4N, N)
    assert dense.shape == (32, 8)
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    h, c, hs = torch.zeros(4, 8, dtype=torch.float64), torch.zeros(4, 8, dtype=torch.float64), []
    for t in range(5):
        i, f, g, o = (model.W_ih(x[:, t]) + h @ dense.T).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        hs.append(h)
    y, (hT, cT) = model(x)
    torch.testing.assert_close(y, model.V(torch.stack(hs, 1)))
    torch.testing.assert_close(hT, h)
    torch.testing.assert_close(cT, c)


def layer_outputs(p, complex_, dtype, fused: bool):
    """H, C and the gradients w.r.t. (W_ih, b_ih, h0, c0, *factors) of the layer with its input map: the C++
    kernel's `lstm_kru_layer` (fused) or a GEMM and the reference recurrence."""
    from krubench.ops import compiled
    fdtype = dtype.to_complex() if complex_ else dtype
    x = p["x"].to(dtype)
    W, b, h0, c0 = (p[k].to(dtype).requires_grad_() for k in ("W_ih", "b_ih", "h0", "c0"))
    products = [[f.to(fdtype).requires_grad_() for f in fs] for fs in p["products"]]
    if fused:
        H, C = compiled.lstm_kru_layer(x, W, b, h0, c0, products)
    else:
        H, C = dispatch.lstm_kru_recurrence(torch.nn.functional.linear(x, W, b), h0, c0, products, "reference")
    loss = (H * p["grad_H"].to(dtype)).sum() + (C * p["grad_C"].to(dtype)).sum()
    leaves = [W, b, h0, c0, *(f for fs in products for f in fs)]
    return [H.detach(), C.detach(), *torch.autograd.grad(loss, leaves)]


def layer_problem(shapes, G, B, T, I, complex_, seed) -> dict:
    p = lstm_problem(shapes, G, B, T, complex_, seed)
    g = torch.Generator().manual_seed(seed + 1)
    N = p["h0"].shape[1]
    p.update(x=torch.randn(B, T, I, dtype=torch.float64, generator=g),
             W_ih=torch.randn(4 * N, I, dtype=torch.float64, generator=g) / I ** 0.5,
             b_ih=torch.randn(4 * N, dtype=torch.float64, generator=g))
    return p


@pytest.mark.parametrize("complex_", [True, False], ids=["complex", "real"])
@pytest.mark.parametrize("shapes,G,B,T,I", [
    ([(4, 4), (2, 2)], 4, 17, 21, 3),   # a partial chunk; two whole blocks of 8 steps and a partial one
    ([(8, 2), (2, 2), (2, 2)], 1, 9, 8, 1),  # joint product; one whole block; a scalar input (pixel MNIST's)
    ([(2, 2), (2, 2)], 4, 8, 5, 7),     # one partial block
], ids=lambda v: str(v).replace(" ", ""))
def test_the_layer_with_its_input_map_in_the_kernel_matches_its_definition(complex_, shapes, G, B, T, I):
    """`lstm_kru_layer`: W_ih x_t + b computed per step inside the C++ kernel and their gradients summed by
    blocks of steps, against a GEMM and the reference recurrence: H, C and the gradients of W_ih, b_ih, h0,
    c0 and every factor (a planted off-by-one in the blocks' steps fails it)."""
    loaded("cpp")
    p = layer_problem(shapes, G, B, T, I, complex_, seed=B + T + I)
    ref64, ref32 = layer_outputs(p, complex_, torch.float64, False), layer_outputs(p, complex_, torch.float32, False)
    got = layer_outputs(p, complex_, torch.float32, True)
    names = ["H", "C", "grad W_ih", "grad b_ih", "grad h0", "grad c0"] + [
        f"grad product {g} factor {i}" for g in range(G) for i in range(len(shapes))]
    assert_all_as_accurate(names, got, ref32, ref64)


@pytest.mark.parametrize("complex_", [True, False], ids=["complex", "real"])
def test_the_layer_gradcheck(complex_):
    from krubench.ops import compiled
    loaded("cpp")
    p = layer_problem([(2, 2), (2, 2)], 4, 3, 10, 2, complex_, seed=5)  # 10 steps: a whole block and a partial one
    factors = [f.requires_grad_() for fs in p["products"] for f in fs]
    leaves = [p[k].requires_grad_() for k in ("W_ih", "b_ih", "h0", "c0")] + factors

    def f(W, b, h0, c0, *flat):
        return compiled.lstm_kru_layer(p["x"], W, b, h0, c0, [list(flat[i:i + 2]) for i in range(0, len(flat), 2)])
    assert torch.autograd.gradcheck(f, leaves)


def test_the_layer_refuses_a_bad_input_map_with_its_shape():
    from krubench.ops import compiled
    loaded("cpp")
    p = layer_problem([(2, 2), (2, 2)], 4, 3, 3, 2, False, seed=1)
    with pytest.raises(RuntimeError, match=r"W_ih must be \(4N, I\) = \(16, 2\), got \[16, 3\]"):
        compiled.lstm_kru_layer(p["x"], torch.zeros(16, 3, dtype=torch.float64), p["b_ih"], p["h0"], p["c0"],
                                p["products"])
    with pytest.raises(RuntimeError, match=r"b_ih must be \(4N,\) = \(16,\), got \[15\]"):
        compiled.lstm_kru_layer(p["x"], p["W_ih"], p["b_ih"][:15], p["h0"], p["c0"], p["products"])


def test_the_layer_operator_passes_opcheck():
    """Its schema and fake (meta) registration (its autograd is an autograd.Function, tested above)."""
    from krubench.ops import compiled
    loaded("cpp")
    p = layer_problem([(2, 2), (2, 2)], 4, 3, 4, 2, True, seed=2)
    w, shapes, _ = compiled._packed_products([[f.to(torch.complex64) for f in fs] for fs in p["products"]], "test")
    args = [p[k].float() for k in ("x", "W_ih", "b_ih", "h0", "c0")]
    torch.library.opcheck(torch.ops.krubench.lstm_kru_layer.default, (*args, w, shapes))


@pytest.mark.parametrize("I", [1, 40], ids=["in-kernel", "gemm"])
def test_the_layer_dispatch_gives_the_same_results_and_a_gradient_to_x_when_asked(I, monkeypatch):
    """`ops.lstm_kru_layer` on the C++ backend: the input map inside the kernel for narrow inputs, a GEMM
    before it for wide ones or when x needs a gradient; the same values either way."""
    from krubench.ops import compiled, layer
    loaded("cpp")
    assert (I <= layer.LSTM_INPUT_IN_KERNEL_UPTO) == (I == 1)
    calls = []
    monkeypatch.setattr(compiled, "lstm_kru_layer", lambda *a: calls.append(1) or compiled._LSTMKRULayer.apply(
        *a[:5], *compiled._packed_products(a[5], "test")[:2]))
    p = layer_problem([(4, 4), (2, 2)], 4, 5, 6, I, True, seed=3)
    args = [p[k] for k in ("W_ih", "b_ih", "h0", "c0")]
    H, C = ops.lstm_kru_layer(p["x"], *args, p["products"], "cpp")
    assert len(calls) == (1 if I == 1 else 0)
    x = p["x"].clone().requires_grad_()
    H2, C2 = ops.lstm_kru_layer(x, *args, p["products"], "cpp")
    assert len(calls) == (1 if I == 1 else 0)  # x needs a gradient: the GEMM path
    torch.testing.assert_close((H, C), (H2.detach(), C2.detach()))
    gx, = torch.autograd.grad(H2.sum(), x)
    Hr, _ = ops.lstm_kru_layer(x, *args, p["products"], "reference")
    gr, = torch.autograd.grad(Hr.sum(), x)
    torch.testing.assert_close(gx, gr)
