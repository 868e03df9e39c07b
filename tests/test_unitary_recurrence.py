"""The unitary peers' hand-written backward (krubench/models/unitary_recurrence.py) against the
specification, autograd through the per-step loop: values and gradients of every input on fresh random
inputs (every variant, W built densely as the fast path steps); gradcheck in float64/complex128; which
recurrence a model runs."""
from __future__ import annotations

import copy

import pytest
import torch

from test_lstm_kru_kernel import assert_all_as_accurate
from test_peer_models import IDS, VARIANTS, make
from krubench.models import unitary
from krubench.models.unitary_recurrence import recurrence, recurrence_ref

def fast(model, u, h0):
    """The hand-written backward's recurrence, whatever the model's N."""
    return recurrence(model.transition(), u, h0, model.modrelu_bias, model.recurrent_parameters())


def inputs(model, B=3, T=6, seed=1):
    """u (B, T, N) and h0 (B, N) in the model's state dtype, large enough that modReLU cuts some units and
    passes others; the modReLU bias drawn so both happen."""
    g = torch.Generator().manual_seed(seed)
    dtype = model.state_dtype()
    u = torch.randn(B, T, model.hidden_size, dtype=dtype, generator=g).requires_grad_()
    h0 = torch.randn(B, model.hidden_size, dtype=dtype, generator=g).requires_grad_()
    with torch.no_grad():
        model.modrelu_bias.copy_(torch.empty_like(model.modrelu_bias).uniform_(-1.5, 0.5, generator=g))
        for p in model.recurrent_parameters():  # a generic W (fcurnn starts at θ = 0)
            p.add_(0.3 * torch.randn(p.shape, dtype=p.dtype, generator=g))
    return u, h0


def values_and_grads(model, H, u, h0, seed=2):
    weights = torch.randn(H.shape, dtype=H.dtype, generator=torch.Generator().manual_seed(seed))
    loss = (H * weights.conj()).real.sum() + H[:, -1].abs().sum()
    wrt = [u, h0, model.modrelu_bias, *model.recurrent_parameters()]
    return [H, *torch.autograd.grad(loss, wrt)]


def narrowed(model, *tensors):
    """The float32/complex64 copy of a float64 model and of some leaf tensors."""
    narrow = {torch.float64: torch.float32, torch.complex128: torch.complex64}
    model32 = copy.deepcopy(model)._apply(lambda t: t.to(narrow.get(t.dtype, t.dtype)))
    return model32, [t.detach().to(narrow[t.dtype]).requires_grad_() for t in tensors]


@pytest.mark.parametrize("name,kw", VARIANTS, ids=IDS)
def test_hand_written_backward_matches_autograd_through_the_loop(name, kw):
    """float64: equal to rounding; float32: as accurate as the float32 reference, both against float64."""
    model = make(name, kw, N=16)
    u, h0 = inputs(model, T=40)
    ref64 = values_and_grads(model, recurrence_ref(model.transition(), u, h0, model.modrelu_bias), u, h0)
    out64 = values_and_grads(model, fast(model, u, h0), u, h0)
    model32, (u32, h32) = narrowed(model, u, h0)
    ref32 = values_and_grads(model32, recurrence_ref(model32.transition(), u32, h32, model32.modrelu_bias), u32, h32)
    out32 = values_and_grads(model32, fast(model32, u32, h32), u32, h32)
    labels = ["H", "u", "h0", "bias"] + [f"W's parameter {i}" for i in range(len(ref64) - 4)]
    for label, a, b in zip(labels, out64, ref64):
        torch.testing.assert_close(a, b, msg=lambda m, label=label: f"float64 {label}: {m}")
    assert_all_as_accurate(labels, out32, ref32, ref64)


@pytest.mark.parametrize("name,kw", VARIANTS, ids=IDS)
def test_gradcheck(name, kw):
    model = make(name, kw, N=4)
    u, h0 = inputs(model, B=2, T=3)
    params = model.recurrent_parameters()

    def f(u, h0, bias, *_):
        return fast(model, u, h0)

    wrt = (u, h0, model.modrelu_bias, *params)
    assert torch.autograd.gradcheck(f, wrt, eps=1e-6, atol=1e-6)


def test_a_second_backward_through_a_retained_graph_gives_the_same_gradients():
    model = make("exprnn", {}, N=6)
    u, h0 = inputs(model)
    loss = fast(model, u, h0).pow(2).sum()
    first = torch.autograd.grad(loss, [model.theta, u], retain_graph=True)
    second = torch.autograd.grad(loss, [model.theta, u])
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name,N,kw,runs", [
    ("exprnn", 190, {}, "recurrence"), ("fcurnn", 128, {}, "recurrence"),  # a dense W: always
    ("eurnn", 128, {}, "recurrence"), ("eurnn", 256, {}, "recurrence_ref"),  # dense W up to N = 128, else autograd
    ("urnn", 64, {}, "recurrence"), ("urnn", 470, {}, "recurrence_ref"),  # dense W up to N = 64, else autograd
    # model.recurrence chooses against the rule: the specification, or the hand-written backward at any N
    ("exprnn", 8, {"recurrence": "reference"}, "recurrence_ref"), ("urnn", 64, {"recurrence": "reference"}, "recurrence_ref"),
    ("urnn", 470, {"recurrence": "dense"}, "recurrence"), ("eurnn", 256, {"recurrence": "dense"}, "recurrence"),
])
def test_each_model_runs_the_recurrence_its_measured_rule_names(monkeypatch, name, N, kw, runs):
    model = make(name, kw, N=N, double=False)
    called = []
    for fn in ("recurrence", "recurrence_ref"):
        original = getattr(unitary, fn)
        monkeypatch.setattr(unitary, fn, lambda *a, fn=fn, original=original: called.append(fn) or original(*a))
    y, h = model(torch.randn(2, 3, 3))
    assert called == [runs] and y.shape == (2, 3, 2)


@pytest.mark.parametrize("name", ["urnn", "exprnn"])
def test_model_outputs_match_the_reference_with_a_given_state_and_last_only(name):
    model = make(name, {}, N=8)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    state = torch.randn(2, 8, dtype=model.state_dtype())
    outs = {}
    for reference in (True, False):
        model.recurrence = "reference" if reference else "dense"
        outs[reference] = model(x, state, last_only=True)
    for a, b in zip(outs[True], outs[False]):
        torch.testing.assert_close(a, b)
    assert outs[False][0].shape == (2, 1, 2)
    empty, h = model(x[:, :0], state)
    assert empty.shape == (2, 0, 2) and torch.equal(h, state)
