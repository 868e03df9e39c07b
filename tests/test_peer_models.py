"""The unitary peers (urnn, fcurnn, eurnn, exprnn): each against a dense re-computation from its paper's
definition (values and gradients), gradcheck in float64/complex128, W unitary to float precision after
optimiser steps, parameter counts against the papers' and the reference code's, and config errors."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch.func import functional_call

from conftest import compose_config
from krubench.models import EURNN, FCURNN, URNN, ExpRNN, build_model
from krubench.models.unitary import unitarity_error
from krubench.ops import apply_nonlinearity
from krubench.optim import build_optimizer

#: (name, constructor keywords): every structurally different variant
VARIANTS = [
    ("urnn", {}), ("fcurnn", {}), ("exprnn", {}), ("exprnn", {"init": "cayley"}),
    ("eurnn", {}), ("eurnn", {"capacity": 3}), ("eurnn", {"fft": True}),
    ("eurnn", {"complex": False}), ("eurnn", {"complex": False, "fft": True}),
]
CLASSES = {"urnn": URNN, "fcurnn": FCURNN, "eurnn": EURNN, "exprnn": ExpRNN}


IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for n, kw in VARIANTS]


def make(name, kw, N=8, input_size=3, output_size=2, double=True):
    """The model in float64/complex128 (Module.to(float64) would drop the imaginary parts)."""
    torch.manual_seed(0)
    model = CLASSES[name](input_size, output_size, hidden_size=N, **kw)
    widen = {torch.float32: torch.float64, torch.complex64: torch.complex128}
    return model._apply(lambda t: t.to(widen.get(t.dtype, t.dtype))) if double else model


# ---- the definitions, written densely and independently of the models' code ----
def dense_exp_skew_hermitian(S: torch.Tensor) -> torch.Tensor:
    """exp(S) for skew-Hermitian S through the eigendecomposition of the Hermitian −iS (not matrix_exp)."""
    lam, Q = torch.linalg.eigh(-1j * S)
    return Q @ torch.diag(torch.exp(1j * lam)) @ Q.conj().T


def skew_from_upper(upper: torch.Tensor) -> torch.Tensor:
    """S with the given strict upper triangle and S^H = −S."""
    up = torch.triu(upper, 1)
    return up - up.conj().T


def upper_matrix(values: torch.Tensor, n: int) -> torch.Tensor:
    """The strict upper triangle filled row by row with `values`, as a loop over (r, c)."""
    out = torch.zeros(n, n, dtype=values.dtype)
    pairs = [(r, c) for r in range(n) for c in range(r + 1, n)]
    for k, (r, c) in enumerate(pairs):
        out = out + values[k] * torch.nn.functional.one_hot(torch.tensor(r * n + c), n * n).view(n, n).to(values.dtype)
    return out


def dense_W(model) -> torch.Tensor:
    """W (column convention, h_t = σ(W h_{t−1} + u_t)) from the paper's definition."""
    N = model.hidden_size
    if isinstance(model, URNN):
        D = [torch.diag(torch.exp(1j * t)) for t in model.theta]
        j = torch.arange(N, dtype=torch.float64)
        F = torch.exp(-2j * math.pi * torch.outer(j, j) / N) / math.sqrt(N)  # unitary DFT
        R = [torch.eye(N) - 2 * torch.outer(v, v.conj()) / v.abs().pow(2).sum() for v in model.reflections]
        P = torch.zeros(N, N, dtype=F.dtype)
        P[torch.arange(N), model.permutation] = 1  # (P h)_j = h_{π(j)}
        return D[2] @ R[1] @ F.conj().T @ D[1] @ P @ R[0] @ F @ D[0]
    if isinstance(model, FCURNN):
        k = N * (N - 1) // 2
        th = model.theta
        S = skew_from_upper(upper_matrix(torch.complex(th[:k], th[k:2 * k]), N)) + 1j * torch.diag(th[2 * k:])
        return dense_exp_skew_hermitian(S) @ model.base
    if isinstance(model, ExpRNN):
        A = skew_from_upper(upper_matrix(model.theta, N))
        return dense_exp_skew_hermitian(A.to(torch.complex128)).real.T  # h B with B = exp(A): W = B^T
    assert isinstance(model, EURNN)
    W = torch.eye(N, dtype=torch.complex128 if model.complex else torch.float64)
    for layer in range(model.depth):
        if model.fft:
            stride = N >> (layer + 1)
            starts, group, row = [j for j in range(N) if not j & stride], 0, layer
        else:
            stride, group, row = 1, layer % 2, layer // 2
            starts = list(range(layer % 2, N - 1, 2))
        M = torch.eye(N, dtype=W.dtype)
        for p, a in enumerate(starts):
            b, th = a + stride, model.theta[group][row][p]
            e = torch.exp(1j * model.phi[group][row][p]) if model.complex else 1.0
            block = torch.stack([torch.stack([torch.cos(th), torch.sin(th)]),
                                 torch.stack([-e * torch.sin(th), e * torch.cos(th)])]).to(W.dtype)
            M = M.index_put((torch.tensor([a, a, b, b]), torch.tensor([a, b, a, b])), block.flatten())
        W = M @ W
    if model.complex:
        W = torch.diag(torch.exp(1j * model.omega)) @ W
    return W


def dense_forward(model, x):
    """The recurrence with the dense W, step by step, and the model's own read-out of [Re h; Im h] or Re h."""
    W = dense_W(model)
    u = model.U(x)
    if model.complex:
        u = torch.complex(*u.chunk(2, -1))
    h = model.initial_state(x.shape[0], x.device)
    outs = []
    for t in range(x.shape[1]):
        h = apply_nonlinearity(h @ W.T + u[:, t], "modrelu", model.modrelu_bias)
        if not model.complex:
            feat = h
        elif model.readout == "re_im":
            feat = torch.cat([h.real, h.imag], -1)
        else:
            feat = h.real
        outs.append(model.V(feat))
    return torch.stack(outs, 1), h


@pytest.mark.parametrize("name,kw", VARIANTS, ids=IDS)
def test_model_follows_its_dense_definition_values_and_gradients(name, kw):
    model = make(name, kw)
    with torch.no_grad():
        torch.nn.init.uniform_(model.modrelu_bias, -0.5, 0.1)  # some units cut by modReLU
        for p in model.recurrent_parameters():  # a generic W (fcurnn starts at θ = 0, where eigh's gradient is singular)
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    r = torch.randn(3, 5, 2, dtype=torch.float64)
    torch.testing.assert_close(model.recurrent_matrix(), dense_W(model).to(model.recurrent_matrix().dtype))
    y, h = model(x)
    y_ref, h_ref = dense_forward(model, x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(h, h_ref)
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad((y * r).sum(), params)
    grads_ref = torch.autograd.grad((y_ref * r).sum(), params)
    for p, g, g_ref in zip(model.named_parameters(), grads, grads_ref):
        torch.testing.assert_close(g, g_ref, msg=lambda m, n=p[0]: f"{n}: {m}")


@pytest.mark.parametrize("name,kw", VARIANTS, ids=IDS)
def test_gradcheck(name, kw):
    model = make(name, kw, N=4, input_size=2, output_size=2)
    names = [n for n, _ in model.named_parameters()]
    x = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)

    def f(x, *params):
        return functional_call(model, dict(zip(names, params)), (x,))[0]

    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,kw", VARIANTS, ids=IDS)
def test_W_stays_unitary_through_optimiser_steps(name, kw):
    """Float32, the trainer's optimiser (W's group at lr/10, as expRNN's), large steps: W moves yet stays
    unitary (orthogonal) to float precision."""
    model = make(name, kw, N=16, double=False)
    W0 = model.recurrent_matrix().detach()
    optim = build_optimizer({"name": "rmsprop", "lr": 1e-2, "alpha": None, "momentum": None, "eps": 1e-8,
                             "weight_decay": 0.0, "factor_lr_scale": 0.1}, model)
    x, target = torch.randn(4, 10, 3), torch.randn(4, 10, 2)
    for _ in range(5):
        loss = (model(x)[0] - target).pow(2).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
    W = model.recurrent_matrix().detach()
    assert (W - W0).abs().max() > 1e-3  # it trained
    assert unitarity_error(W).sqrt() < 1e-5  # ‖W^H W − I‖_F at float32 rounding
    assert model.unitary_penalty().item() < 1e-10


def test_the_lr_split_puts_W_in_its_own_group():
    model = make("exprnn", {}, N=8, double=False)
    optim = build_optimizer({"name": "rmsprop", "lr": 1e-3, "alpha": None, "momentum": None, "eps": 1e-8,
                             "weight_decay": 0.0, "factor_lr_scale": 0.1}, model)
    rest, orth = optim.param_groups
    assert orth["params"] == [model.theta] and orth["lr"] == pytest.approx(1e-4) and rest["lr"] == 1e-3


# ---- parameter counts ----
def counts(name, N, input_size=1, output_size=10, **kw):
    return CLASSES[name](input_size, output_size, hidden_size=N, **kw).param_counts()


def test_urnn_has_7N_recurrent_parameters():
    """θ (3N) and two complex reflection vectors (4N) (Arjovsky et al. 2016)."""
    for N in (16, 128, 470):
        assert counts("urnn", N)["recurrent"] == 7 * N
    # pixel MNIST, N=512: ≈16k in total (Wisdom et al. 2016 Table 1, restricted-capacity uRNN; unverified)
    assert round(counts("urnn", 512)["total"], -3) == 16_000


@pytest.mark.parametrize("N,paper", [(116, 16_000), (512, 270_000)])
def test_fcurnn_counts_match_the_paper(N, paper):
    """N² recurrent parameters (the dimension of U(N)); pixel MNIST totals 16k at N=116 and 270k at N=512
    (Wisdom et al. 2016, as cited in AntisymmetricRNN Table 1; the papers round)."""
    c = counts("fcurnn", N)
    assert c["recurrent"] == N * N
    assert abs(c["total"] - paper) / paper < 0.025


@pytest.mark.parametrize("N,paper", [(170, 16_000), (360, 69_000), (512, 137_000)])
def test_exprnn_counts_match_the_paper(N, paper):
    """N(N−1)/2 recurrent parameters; pixel MNIST totals 16k, 69k, 137k (expRNN paper's MNIST table; unverified)."""
    c = counts("exprnn", N)
    assert c["recurrent"] == N * (N - 1) // 2
    assert round(c["total"], -3) == paper


@pytest.mark.parametrize("N", [128, 129])
@pytest.mark.parametrize("L", [1, 2, 5])
def test_eurnn_tunable_counts_are_the_reference_shapes(N, L):
    """EUNN.py: theta_0 [⌈L/2⌉, ⌊N/2⌋], theta_1 [⌊L/2⌋, ⌊(N−1)/2⌋], the same again for phi, and omega [N] if complex."""
    thetas = (L + 1) // 2 * (N // 2) + L // 2 * ((N - 1) // 2)
    assert counts("eurnn", N, capacity=L)["recurrent"] == 2 * thetas + N
    assert counts("eurnn", N, capacity=L, complex=False)["recurrent"] == thetas


def test_eurnn_fft_counts_are_the_reference_shapes():
    """FFT style, N = 2^k: k layers of N/2 rotations (EUNN.py's varsize), phi and omega if complex."""
    assert counts("eurnn", 128, fft=True)["recurrent"] == 2 * 7 * 64 + 128
    assert counts("eurnn", 128, fft=True, complex=False)["recurrent"] == 7 * 64


def test_capacity_N_spans_the_unitary_group():
    """Tunable style with L = N has N² real parameters, as U(N) (the EURNN paper's full capacity)."""
    assert counts("eurnn", 16, capacity=16)["recurrent"] == 16 * 16


# ---- inits the reference code uses ----
def test_reference_initialisations():
    torch.manual_seed(0)
    u = URNN(3, 5, hidden_size=64)
    assert u.h0 is not None and u.h0.abs().max() <= math.sqrt(3 / 64)
    assert u.U.weight.abs().max() <= math.sqrt(6 / 67) and torch.all(u.V.bias == 0)
    f = FCURNN(3, 5, hidden_size=16)
    torch.testing.assert_close(f.recurrent_matrix(), f.base)  # θ = 0: W starts at the Haar-random W_0
    e = EURNN(3, 5, hidden_size=16)
    assert e.U.weight.abs().max() <= 0.01 and torch.all(e.modrelu_bias == 0) and torch.all(e.V.bias == 0.01)
    assert e.V.in_features == 16  # reads Re h only
    x = ExpRNN(3, 5, hidden_size=9, init="henaff")
    A = x.recurrent_matrix().detach()  # block-diagonal rotations: W[2i, 2i+1] = ±sin s_i, the odd index left alone
    assert A[8, 8].item() == pytest.approx(1.0) and A[0, 2].item() == 0 and x.h0 is None


# ---- configuration ----
def test_composes_and_builds_each_model():
    for name in CLASSES:
        cfg = compose_config([f"model={name}", "model.hidden_size=8"])
        model = build_model(OmegaConf.to_container(cfg.model, enum_to_str=True), 10, 10)
        assert isinstance(model, CLASSES[name]) and model.hidden_size == 8


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_the_recurrence_switch_reaches_the_model_and_refuses_unknown_values(name):
    cfg = compose_config([f"model={name}", "model.hidden_size=8", "model.recurrence=reference"])
    assert build_model(OmegaConf.to_container(cfg.model, enum_to_str=True), 10, 10).recurrence == "reference"
    with pytest.raises(Exception) as e:  # at composition, naming the accepted values
        compose_config([f"model={name}", "model.recurrence=fast"])
    assert "auto, dense, reference" in str(e.value.__cause__)
    with pytest.raises(ValueError, match=r"model.recurrence='fast' is not supported: use one of \('auto', 'dense'"):
        CLASSES[name](2, 2, hidden_size=8, recurrence="fast")


@pytest.mark.parametrize("kw,message", [
    ({"capacity": 0}, "model.capacity=0 must be at least 1"),
    ({"fft": True, "hidden_size": 100}, "model.hidden_size=100 is not a power of 2, which model.fft=true needs: use 64 or 128"),
    ({"fft": True, "capacity": 2}, "model.capacity=2 does not apply with model.fft=true"),
    ({"hidden_size": 1}, "model.hidden_size=1 must be at least 2"),
])
def test_eurnn_bad_options_raise(kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        EURNN(2, 2, **{"hidden_size": 16, **kw})


def test_exprnn_bad_options_raise():
    with pytest.raises(ValueError, match="model.init='haar' is not supported by model=exprnn"):
        ExpRNN(2, 2, hidden_size=8, init="haar")
    with pytest.raises(ValueError, match="model.hidden_size=1 must be at least 2"):
        ExpRNN(2, 2, hidden_size=1)
    with pytest.raises(Exception, match="haar"):  # the schema refuses it at composition
        compose_config(["model=exprnn", "model.init=haar"])


@pytest.mark.parametrize("name", ["eurnn", "exprnn"])
def test_gradients_stay_finite_through_all_zero_input_steps(name):
    """h_0 = 0 and zero inputs (MNIST's leading black pixels) give z = 0 exactly, where modReLU's gradient is
    0 (as the compiled kernels and expRNN's sign(z)·relu(|z| + b)), not relu(b)/eps per step."""
    model = make(name, {}, N=8, double=False)
    with torch.no_grad():
        model.modrelu_bias.fill_(1e-3)
    x = torch.cat([torch.zeros(2, 200, 3), torch.randn(2, 5, 3)], 1)
    model(x)[0].pow(2).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_a_checkpoint_restores_the_same_model(name):
    """Fixed random parts (uRNN's permutation, FC-uRNN's W_0) are saved with the weights: resume is exact."""
    a = make(name, {}, double=False)
    torch.manual_seed(1)
    b = CLASSES[name](3, 2, hidden_size=8)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 4, 3)
    torch.testing.assert_close(a(x)[0], b(x)[0], rtol=0, atol=0)
