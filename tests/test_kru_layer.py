"""The public KRU layer and cell (`krubench.KRULayer`, `krubench.KRUCell`): their states against the recurrence's
definition (dense W = ⊗ W_f, step by step) on every CPU kernel, values and gradients; the cell's steps against the
layer; float64 gradcheck; the initial state; torch.compile without graph breaks; and the KRU model on top of the
layer, loading the parameters a KRU saved before the layer existed."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import krubench
from krubench import KRUCell, KRULayer
from krubench.models import KRU
from krubench.ops import apply_nonlinearity
from krubench.ops.kron import kron_dense

KERNELS = ["reference", "cpp"]
OLD_STATE_DICTS = Path(__file__).parent / "data" / "kru_state_dict_0.1.0.pt"  # saved by krubench 0.1.0's KRU


def random_layer(kernel, complex_=True, nonlinearity="modrelu", cls=KRULayer, **options):
    """A small layer whose modReLU bias cuts some units (at init it is ±0.01 and cuts none)."""
    layer = cls(3, 8, complex=complex_, nonlinearity=nonlinearity, kernel=kernel, **options)
    if layer.modrelu_bias is not None:
        with torch.no_grad():
            layer.modrelu_bias.uniform_(-0.5, 0.1)
    return layer


def defined_states(layer, x, h0):
    """H (B, T, S) and h_T by the definition: h_t = σ(W h_{t-1} + U x_t + b) with the dense W, as real pairs."""
    W = kron_dense(list(layer.W.factors))
    u = layer.U(x)
    N = layer.hidden_size
    h = h0
    if layer.complex:
        u, h = torch.complex(u[..., :N], u[..., N:]), torch.complex(h0[..., :N], h0[..., N:])
    states = []
    for t in range(x.shape[1]):
        h = apply_nonlinearity(h @ W.T + u[:, t], layer.nonlinearity, layer.modrelu_bias)
        states.append(torch.cat([h.real, h.imag], -1) if layer.complex else h)
    return torch.stack(states, 1), states[-1]


def values_and_grads(layer, x, h0, H, hT, g):
    """H, h_T and the gradients of <H, g> + Σ h_T w.r.t. x, h0 and every parameter."""
    params = list(layer.parameters())
    grads = torch.autograd.grad((H * g).sum() + hT.sum(), [x, h0, *params])
    return [H, hT, *grads]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("complex_,nonlinearity", [(True, "modrelu"), (True, "tanh"), (False, "relu")])
def test_layer_states_and_gradients_follow_the_definition(kernel, complex_, nonlinearity):
    torch.manual_seed(1)
    layer = random_layer(kernel, complex_, nonlinearity)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 6, 3, generator=g).requires_grad_()
    h0 = (0.3 * torch.randn(5, layer.state_size, generator=g)).requires_grad_()
    grad = torch.randn(5, 6, layer.state_size, generator=g)
    H, hT = layer(x, h0)
    assert H.shape == (5, 6, 16 if complex_ else 8) and hT.shape == (5, layer.state_size) and not H.is_complex()
    got = values_and_grads(layer, x, h0, H, hT, grad)
    want = values_and_grads(layer, x, h0, *defined_states(layer, x, h0), grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_data_inputs_without_gradient_give_the_same_states(kernel):
    """x without requires_grad (data) takes the kernels' other paths; the states are the same."""
    torch.manual_seed(1)
    layer = random_layer(kernel)
    x = torch.randn(9, 4, 3)
    torch.testing.assert_close(layer(x)[0], layer(x.clone().requires_grad_())[0], rtol=0, atol=0)


@pytest.mark.parametrize("kernel", KERNELS)
def test_cell_steps_are_the_layer_steps(kernel):
    torch.manual_seed(3)
    layer = random_layer(kernel)
    cell = KRUCell(3, 8, kernel=kernel)
    cell.load_state_dict(layer.state_dict())
    x, h0 = torch.randn(4, 5, 3), torch.randn(4, 16)
    H, hT = layer(x, h0)
    h = h0
    for t in range(5):
        h = cell(x[:, t], h)
        torch.testing.assert_close(h, H[:, t], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(cell(x[:, 0]), layer(x[:, :1])[1], rtol=0, atol=0)  # None: from zeros


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("complex_,nonlinearity", [(True, "modrelu"), (False, "tanh")])
def test_layer_gradcheck(kernel, complex_, nonlinearity):
    """float64 (complex128 factors): x, h0 and every parameter against finite differences."""
    torch.manual_seed(4)
    layer = random_layer(kernel, complex_, nonlinearity).double()
    for f in filter(torch.is_complex, layer.W.factors):  # .double() leaves complex parameters complex64
        f.data = f.data.to(torch.complex128)
    names = [n for n, _ in layer.named_parameters()]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 3, dtype=torch.float64, generator=g).requires_grad_()
    h0 = torch.randn(2, layer.state_size, dtype=torch.float64, generator=g).requires_grad_()
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]

    def run(x, h0, *params):
        return torch.func.functional_call(layer, dict(zip(names, params)), (x, h0))

    assert torch.autograd.gradcheck(run, (x, h0, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_the_initial_state_is_honoured(kernel):
    """h0 starts the recurrence: a sequence run in two halves, the second from the first's h_T, gives the whole
    run's states; a complex h0 is the same state as its real pairs; return_complex gives the same states complex."""
    torch.manual_seed(6)
    layer = random_layer(kernel)
    x, h0 = torch.randn(3, 7, 3), torch.randn(3, 16)
    H, hT = layer(x, h0)
    H1, h1 = layer(x[:, :3], h0)
    H2, h2 = layer(x[:, 3:], h1)
    torch.testing.assert_close(torch.cat([H1, H2], 1), H, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(h2, hT, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(layer(x)[0][:, 0], H[:, 0])  # zeros are another start
    z0 = torch.complex(h0[:, :8], h0[:, 8:])
    torch.testing.assert_close(layer(x, z0)[0], H, rtol=0, atol=0)
    layer.return_complex = True
    Hc, hc = layer(x, z0)
    assert Hc.is_complex() and Hc.shape == (3, 7, 8) and hc.shape == (3, 8)
    torch.testing.assert_close(torch.cat([Hc.real, Hc.imag], -1), H, rtol=0, atol=0)


def test_the_readme_example_runs():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    example = readme.split("## Using the KRU layer in your model")[1].split("```python")[1].split("```")[0]
    scope: dict = {}
    exec(example, scope)
    assert scope["H"].shape == (32, 100, 256) and scope["h_T"].shape == (32, 256)
    torch.testing.assert_close(scope["h"], scope["H"][:, 0], rtol=1e-6, atol=1e-7)


def test_the_public_names():
    assert krubench.KRULayer is KRULayer and krubench.KRUCell is KRUCell
    for cls in (KRULayer, KRUCell):
        assert "Args" in KRULayer.__doc__ and cls.forward.__doc__
    layer = KRULayer(4, 16, factors=[4, 4], complex=False, nonlinearity="tanh")
    assert layer.state_size == 16 and [tuple(f.shape) for f in layer.W.factors] == [(4, 4), (4, 4)]


# ---- torch.compile ----

def compile_case(cls, kernel, complex_, x_grad):
    """A fresh module (compile specialises on it), its input and initial state."""
    torch.manual_seed(8)
    options = {} if complex_ else {"complex": False, "nonlinearity": "tanh"}
    module = KRU(3, 5, hidden_size=16, kernel=kernel, **options) if cls is KRU else cls(3, 16, kernel=kernel, **options)
    x = torch.randn(5, 7, 3, requires_grad=x_grad)  # 5: not a whole chunk of the C++ kernel's lanes
    state = torch.randn(5, 16, dtype=torch.complex64) if cls is KRU else torch.randn(5, module.state_size)
    return module, x, state.requires_grad_() if complex_ else state.real.requires_grad_()


@pytest.mark.parametrize("x_grad", [False, True], ids=["data", "x_grad"])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("cls", [KRULayer, KRUCell, KRU], ids=lambda c: c.__name__)
def test_compile_sees_one_graph_without_breaks(cls, kernel, x_grad):
    """Dynamo traces the whole forward, the C++ kernel's operators included (they are registered custom ops
    with fake and autograd implementations), so torch.compile(fullgraph=True) accepts it."""
    module, x, state = compile_case(cls, kernel, True, x_grad)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(module)(x[:, 0] if cls is KRUCell else x, state)
    assert (explained.graph_break_count, explained.graph_count) == (0, 1), explained.break_reasons


def compiled_matches_eager(cls, kernel, complex_, x_grad, backend):
    module, x, state = compile_case(cls, kernel, complex_, x_grad)
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True, backend=backend)
    wrt = [state, *module.parameters()] + ([x] if x_grad else [])
    results = []
    for run in (compiled, module):
        out, last = run(x, state)
        loss = (out * torch.linspace(-1, 1, out.shape[-1])).sum() + last.abs().sum()
        results.append([out, last, *torch.autograd.grad(loss, wrt)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=5e-5)


@pytest.mark.parametrize("x_grad", [False, True], ids=["data", "x_grad"])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("cls", [KRULayer, KRU], ids=lambda c: c.__name__)
def test_compiled_forward_and_backward_match_eager(cls, kernel, x_grad):
    """Traced by AOTAutograd (the operators' fake and autograd implementations, the backward's functional
    twin) and run unfused: the eager values and gradients."""
    compiled_matches_eager(cls, kernel, True, x_grad, "aot_eager")


@pytest.mark.slow  # inductor generates and compiles C++: 5-40 s a case
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("complex_", [True, False], ids=["complex", "real"])
def test_inductor_compiled_layer_matches_eager(kernel, complex_):
    compiled_matches_eager(KRULayer, kernel, complex_, True, "inductor")


# ---- the KRU model: a KRULayer with the read-out on top ----

def test_the_kru_model_is_the_layer_with_a_read_out():
    torch.manual_seed(7)
    model = KRU(3, 5, hidden_size=8, kernel="reference")
    layer = KRULayer(3, 8, kernel="reference")
    layer.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("V.")})
    x = torch.randn(2, 4, 3)
    y, hT = model(x)
    H, hT_layer = layer(x)
    torch.testing.assert_close(y, model.V(H), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.cat([hT.real, hT.imag], -1), hT_layer, rtol=0, atol=0)


def test_a_kru_state_dict_saved_before_the_layer_loads_and_gives_its_outputs():
    saved = torch.load(OLD_STATE_DICTS, weights_only=True)
    for case in saved.values():
        model = KRU(3, 5, hidden_size=8, kernel="reference", **case["kwargs"])
        model.load_state_dict(case["state_dict"])  # strict: the same names
        y, hT = model(case["x"])
        torch.testing.assert_close(y, case["y"], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(hT, case["h_T"], rtol=1e-6, atol=1e-6)


def test_a_seed_gives_the_kru_weights_it_gave_before_the_layer():
    """The same random draws in the same order: a run's seed still gives its initial weights."""
    saved = torch.load(OLD_STATE_DICTS, weights_only=True)
    torch.manual_seed(0)
    for case in saved.values():  # built as the file was made: one seed, then each model and its x in turn
        state = KRU(3, 5, hidden_size=8, kernel="reference", **case["kwargs"]).state_dict()
        torch.testing.assert_close(torch.randn(2, 4, 3), case["x"], rtol=0, atol=0)
        assert list(state) == list(case["state_dict"])
        for k, v in state.items():
            torch.testing.assert_close(v, case["state_dict"][k], rtol=0, atol=0)
