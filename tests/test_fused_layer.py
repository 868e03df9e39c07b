"""The KRU layer fused into the C++ kernel (`kru_layer_lanes`: input map, recurrence and read-out in one pass
on the lanes layout) against its definition on the pure-PyTorch reference: `u_t = U x_t + b_U`,
`h_t = σ(W h_{t-1} + u_t)`, `y_t = V [Re h_t; Im h_t] + b_V`. Values and gradients of every input but the
data x, under STYLE.md's tolerance rule (test_kernels.assert_as_accurate); outputs poisoned with NaN; float64
gradcheck. What the KRU model runs on the CPU whenever its input needs no gradient.
"""
from __future__ import annotations

import math

import pytest
import torch

from krubench import ops
from krubench.models.kru import random_unitary
from krubench.ops import dispatch
from krubench.ops.recurrence import kru_recurrence_ref

from test_kernels import assert_as_accurate, loaded

CASES = [  # (factor sizes, B, T, input features I, outputs O)
    ([2, 2, 2], 1, 1, 1, 3),
    ([4, 4, 8], 17, 9, 10, 10),  # a batch that is not a whole number of chunks
    ([2] * 5, 5, 6, 88, 7),  # a music-sized input
    ([3, 2], 9, 4, 2, 1),  # a size without an unrolled stage
    ([4, 2], 3, 21, 3, 5),  # the weight gradients' blocks of 8 steps: two whole ones and a partial one
]


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    monkeypatch.setenv("KRUBENCH_POISON_OUTPUTS", "1")


def layer_problem(sizes, B, T, I, O, complex_, nonlinearity, input_bias, seed) -> dict:
    """float64 (complex128) parameters, data and upstream gradients of one layer."""
    g = torch.Generator().manual_seed(seed)
    dtype = torch.complex128 if complex_ else torch.float64
    N = math.prod(sizes)
    K = 2 * N if complex_ else N
    r = lambda *shape, scale=1.0: scale * torch.randn(*shape, dtype=torch.float64, generator=g)  # noqa: E731
    return {
        "factors": [(random_unitary(s, complex_, g) + 0.05 * torch.randn(s, s, generator=g)).to(dtype) for s in sizes],
        "x": r(B, T, I), "h0": torch.randn(B, N, dtype=dtype, generator=g),
        "bias": -0.3 * torch.rand(N, dtype=torch.float64, generator=g) if nonlinearity == "modrelu" else None,
        "Uw": r(K, I, scale=0.5), "Ub": r(K, scale=0.3) if input_bias else None, "Vw": r(O, K, scale=0.3),
        "Vb": r(O), "grad_y": r(B, T, O), "grad_hT": torch.randn(B, N, dtype=dtype, generator=g),
    }


def reference_layer(x, Uw, Ub, h0, factors, nonlinearity, bias, Vw, Vb, last_only):
    u = x @ Uw.T + (0 if Ub is None else Ub)
    N = h0.shape[-1]
    if h0.is_complex():
        u = torch.complex(u[..., :N], u[..., N:])
    H = kru_recurrence_ref(u, h0, factors, nonlinearity, bias)
    read = H[:, -1:] if last_only else H
    features = torch.cat([read.real, read.imag], -1) if h0.is_complex() else read
    return features @ Vw.T + Vb, H[:, -1]


def fused_layer(x, Uw, Ub, h0, factors, nonlinearity, bias, Vw, Vb, last_only):
    """kru_layer_lanes with (B, T, ·) in and out: the layout conversions are part of what is tested."""
    lanes, B = ops.lanes, x.shape[0]
    y, hT = dispatch.kru_layer_lanes(lanes.batch_to_lanes(x), Uw, Ub, lanes.state_to_lanes(h0), factors, nonlinearity,
                                     bias, Vw, Vb, last_only)
    return lanes.outputs_from_lanes(y, B), lanes.state_from_lanes(hT, B, h0.is_complex())


def layer_outputs(layer, p, complex_, nonlinearity, last_only, dtype, use=("y", "hT")):
    """y, h_T and the gradients w.r.t. (h0, *factors, U, V, b_V[, b_U][, bias]) in `dtype` (its real dtype for
    the real tensors) of a loss on the outputs named in `use`."""
    real = dtype.to_real()
    h0 = p["h0"].to(dtype if complex_ else real).requires_grad_()
    factors = [f.to(dtype if complex_ else real).requires_grad_() for f in p["factors"]]
    Uw, Vw, Vb = (p[k].to(real).requires_grad_() for k in ("Uw", "Vw", "Vb"))
    Ub = p["Ub"].to(real).requires_grad_() if p["Ub"] is not None else None
    bias = p["bias"].to(real).requires_grad_() if p["bias"] is not None else None
    leaves = [h0, *factors, Uw, Vw, Vb] + [t for t in (Ub, bias) if t is not None]
    y, hT = layer(p["x"].to(real), Uw, Ub, h0, factors, nonlinearity, bias, Vw, Vb, last_only)
    grad_y = p["grad_y"][:, -1:] if last_only else p["grad_y"]
    loss = 0
    if "y" in use:
        loss = loss + (y * grad_y.to(real)).sum()
    if "hT" in use:
        loss = loss + (hT * p["grad_hT"].to(hT.dtype).conj()).real.sum()
    return [y.detach(), hT.detach(), *torch.autograd.grad(loss, leaves, materialize_grads=True)]


@pytest.mark.parametrize("nonlinearity", ops.NONLINEARITIES)
@pytest.mark.parametrize("complex_", [True, False], ids=["complex", "real"])
@pytest.mark.parametrize("last_only", [False, True], ids=["every-step", "last-only"])
@pytest.mark.parametrize("sizes,B,T,I,O", CASES, ids=lambda v: str(v).replace(" ", ""))
def test_fused_layer_matches_its_definition(nonlinearity, complex_, last_only, sizes, B, T, I, O):
    loaded("cpp")
    input_bias = nonlinearity != "modrelu"  # as the model does: modReLU brings its own bias
    p = layer_problem(sizes, B, T, I, O, complex_, nonlinearity, input_bias, seed=hash((tuple(sizes), B, T)) % 2**31)
    f32, f64 = (torch.complex64, torch.complex128) if complex_ else (torch.float32, torch.float64)
    args = (p, complex_, nonlinearity, last_only)
    ref64, ref32 = layer_outputs(reference_layer, *args, f64), layer_outputs(reference_layer, *args, f32)
    got = layer_outputs(fused_layer, *args, f32)
    names = (["y", "h_T", "grad h0"] + [f"grad factor {i}" for i in range(len(sizes))] + ["grad U", "grad V", "grad b_V"]
             + (["grad b_U"] if input_bias else []) + (["grad bias"] if p["bias"] is not None else []))
    assert len(names) == len(got)
    for name, g, r32, r64 in zip(names, got, ref32, ref64):
        assert g.shape == r64.shape, name
        assert torch.isfinite(g).all(), f"{name}: some elements were not written (NaN poison left)"
        assert_as_accurate(g, r32, r64, name)


@pytest.mark.parametrize("complex_,nonlinearity", [(True, "modrelu"), (False, "tanh")], ids=["complex", "real"])
def test_cpp_results_do_not_depend_on_the_thread_count(complex_, nonlinearity):
    """Chunks of sequences run over threads (at::parallel_for): three threads give what one gives (conftest runs
    tests on one), bit for bit (B=41: six chunks, one partial)."""
    loaded("cpp")
    p = layer_problem([4, 2, 2], 41, 5, 3, 5, complex_, nonlinearity, nonlinearity != "modrelu", seed=13)
    dtype = torch.complex64 if complex_ else torch.float32
    one = layer_outputs(fused_layer, p, complex_, nonlinearity, False, dtype)
    torch.set_num_threads(3)
    three = layer_outputs(fused_layer, p, complex_, nonlinearity, False, dtype)
    for i, (a, b) in enumerate(zip(one, three)):
        assert torch.equal(a, b), f"output {i} differs between one and three threads"


@pytest.mark.parametrize("use", [("y",), ("hT",)], ids=["y-only", "state-only"])
def test_an_unused_output_counts_as_a_zero_gradient(use):
    """A loss on y alone (the usual) or on h_T alone: the other output's gradient is never materialised."""
    loaded("cpp")
    p = layer_problem([4, 4], 10, 5, 3, 4, True, "modrelu", False, seed=4)
    ref = layer_outputs(reference_layer, p, True, "modrelu", False, torch.complex128, use)
    got = layer_outputs(fused_layer, p, True, "modrelu", False, torch.complex64, use)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g.to(r.dtype), r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("nonlinearity", ops.NONLINEARITIES)
@pytest.mark.parametrize("complex_", [True, False], ids=["complex", "real"])
def test_fused_layer_gradcheck(nonlinearity, complex_):
    loaded("cpp")
    p = layer_problem([2, 2], 3, 3, 2, 2, complex_, nonlinearity, True, seed=9)
    h0 = p["h0"].requires_grad_()
    factors = [f.requires_grad_() for f in p["factors"]]
    params = [p[k].requires_grad_() for k in ("Uw", "Ub", "Vw", "Vb")]
    bias = [p["bias"].requires_grad_()] if p["bias"] is not None else []

    def f(h0, a, c, Uw, Ub, Vw, Vb, *bias):
        return fused_layer(p["x"], Uw, Ub, h0, [a, c], nonlinearity, bias[0] if bias else None, Vw, Vb, False)
    assert torch.autograd.gradcheck(f, (h0, *factors, *params, *bias))


def test_bad_maps_are_refused_with_their_shapes():
    loaded("cpp")
    p = layer_problem([2, 2], 3, 3, 2, 2, True, "tanh", True, seed=1)
    with pytest.raises(RuntimeError, match=r"input map must be \(8, 2\)"):
        fused_layer(p["x"], p["Uw"][:, :1], p["Ub"], p["h0"], p["factors"], "tanh", None, p["Vw"], p["Vb"], False)
    with pytest.raises(RuntimeError, match=r"read-out must be \(O, 8\)"):
        fused_layer(p["x"], p["Uw"], p["Ub"], p["h0"], p["factors"], "tanh", None, p["Vw"][:, :3], p["Vb"], False)
