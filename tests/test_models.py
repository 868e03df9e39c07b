"""Models: shapes, parameter counts, the unitary penalty, and the KRU recurrence against its definition."""
import math

import pytest
import torch

from krubench.models import KRU, LSTM, LSTMKRU, MODELS, RNN
from krubench import ops
from krubench.ops import apply_nonlinearity
from krubench.ops.kron import kron_dense


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shapes_and_state(name):
    model = MODELS[name](input_size=3, output_size=5, hidden_size=16)
    x = torch.randn(4, 7, 3)
    y, state = model(x)
    assert y.shape == (4, 7, 5)
    # Feeding the sequence in two halves with the carried state gives the same outputs.
    y1, s1 = model(x[:, :3])
    y2, _ = model(x[:, 3:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-4, atol=1e-5)
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("N", [4, 16, 128, 1024])
def test_kru_recurrent_count_is_8_log2_N(N):
    counts = KRU(10, 10, hidden_size=N).param_counts()
    assert counts["recurrent"] == 8 * int(math.log2(N))
    assert counts["total"] > counts["recurrent"]


def test_parameter_counts_of_dense_models():
    assert RNN(10, 10, hidden_size=32).param_counts()["recurrent"] == 32 * 32
    assert LSTM(10, 10, hidden_size=32).param_counts()["recurrent"] == 4 * 32 * 32
    # real 2×2 factors: 4 reals per factor, per gate
    assert LSTMKRU(10, 10, hidden_size=32).param_counts()["recurrent"] == 4 * 4 * 5
    assert LSTMKRU(10, 10, hidden_size=32, complex=True).param_counts()["recurrent"] == 4 * 8 * 5
    total = KRU(3, 5, hidden_size=16).param_counts()["total"]
    # factors 8·4, U: 3→2·16 (no bias: modReLU's is b), modReLU bias 16, V: 2·16→5 (+bias)
    assert total == 32 + 3 * 32 + 16 + (32 * 5 + 5)
    assert KRU(1, 10, hidden_size=512).param_counts()["total"] == 11858  # the paper's "≈11k" at N=512


def test_kru_input_map_and_readout_start_as_in_urnn():
    torch.manual_seed(0)
    model = KRU(3, 5, hidden_size=64)
    assert model.U.bias is None  # modReLU supplies b: no second bias added at every step
    bound = math.sqrt(6 / (3 + 64))  # Glorot for in -> N, for the Re and Im halves alike
    assert model.U.weight.abs().max() <= bound and model.U.weight.abs().max() > 0.9 * bound
    assert 0 < model.modrelu_bias.abs().max() <= 0.01
    readout = math.sqrt(6 / (128 + 5))
    assert model.V.weight.abs().max() <= readout and model.V.weight.abs().max() > 0.9 * readout
    assert torch.all(model.V.bias == 0)
    for nonlinearity in ("relu", "tanh"):  # no bias of their own: the input map keeps one (zero at start)
        assert torch.all(KRU(3, 5, hidden_size=16, nonlinearity=nonlinearity).U.bias == 0)
    assert KRU(3, 5, hidden_size=16, input_bias=False, nonlinearity="tanh").U.bias is None


def test_kru_keeps_the_old_initialisation_as_options():
    torch.manual_seed(0)
    old = KRU(3, 5, hidden_size=64, input_bias=True, input_init="torch", modrelu_bias_init=0.0, readout_init="torch")
    assert old.U.bias is not None and old.U.bias.abs().max() > 0.1  # nn.Linear's U(±1/√3)
    assert old.U.weight.abs().max() > math.sqrt(6 / (3 + 64))
    assert torch.all(old.modrelu_bias == 0) and old.V.bias.abs().max() > 0
    with pytest.raises(ValueError, match="model.input_init='xavier' is not supported"):
        KRU(3, 5, hidden_size=16, input_init="xavier")


@pytest.mark.parametrize("nonlinearity", ["modrelu", "relu", "tanh"])
@pytest.mark.parametrize("complex_", [True, False])
def test_kru_follows_its_definition(nonlinearity, complex_):
    """h_t = σ(W h_{t-1} + U x_t + b) with the dense W = ⊗ W_f, step by step."""
    torch.manual_seed(0)
    model = KRU(3, 2, hidden_size=8, complex=complex_, nonlinearity=nonlinearity, merge_upto=1)
    if model.modrelu_bias is not None:
        torch.nn.init.uniform_(model.modrelu_bias, -0.5, 0.1)
    x = torch.randn(2, 5, 3)
    y, h_last = model(x)
    W = kron_dense(list(model.W.factors))
    u = model.U(x)
    if complex_:
        u = torch.complex(*u.chunk(2, -1))
    h = torch.zeros(2, 8, dtype=W.dtype)
    for t in range(5):
        h = apply_nonlinearity(h @ W.T + u[:, t], nonlinearity, model.modrelu_bias)
    torch.testing.assert_close(h_last, h, rtol=1e-5, atol=1e-6)


def test_merging_factors_changes_nothing():
    torch.manual_seed(0)
    a = KRU(3, 2, hidden_size=64, merge_upto=1)
    b = KRU(3, 2, hidden_size=64, merge_upto=16)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 6, 3)
    torch.testing.assert_close(a(x)[0], b(x)[0], rtol=1e-5, atol=1e-5)


def test_unitary_penalty():
    model = KRU(3, 2, hidden_size=16)
    assert model.unitary_penalty().item() < 1e-10  # Haar-random unitary init
    with torch.no_grad():
        model.W.factors[0].mul_(1.5)
    assert model.unitary_penalty().item() > 1.0
    assert KRU(3, 2, hidden_size=16, init="identity").unitary_penalty().item() == 0
    assert RNN(3, 2, hidden_size=16).unitary_penalty().item() == 0
    for fact in ("per_gate", "joint"):
        assert LSTMKRU(3, 2, hidden_size=16, factorisation=fact).unitary_penalty().item() < 1e-10


def test_lstm_kru_joint_is_one_4N_by_N_product():
    model = LSTMKRU(3, 2, hidden_size=8, factorisation="joint", merge_upto=1)
    factors = list(model.W_hh[0].factors)
    assert tuple(factors[0].shape) == (8, 2) and kron_dense(factors).shape == (32, 8)
    # the model against a dense LSTM with this W_hh: tests/test_lstm_kru_kernel.py


def test_rnn_inits():
    assert torch.equal(RNN(2, 2, hidden_size=8, init="identity").rnn.weight_hh_l0, torch.eye(8))
    w = RNN(2, 2, hidden_size=8, init="orthogonal").rnn.weight_hh_l0
    torch.testing.assert_close(w @ w.T, torch.eye(8), atol=1e-5, rtol=0)


def test_bad_model_options_raise():
    with pytest.raises(ValueError, match="model.nonlinearity='selu'"):
        KRU(2, 2, hidden_size=8, nonlinearity="selu")
    with pytest.raises(ValueError, match="model.init='zeros'"):
        KRU(2, 2, hidden_size=8, init="zeros")
    with pytest.raises(ValueError, match="model.factorisation='both'"):
        LSTMKRU(2, 2, hidden_size=8, factorisation="both")
    with pytest.raises(ValueError, match="not a power of model.factor_size"):
        KRU(2, 2, hidden_size=12)


@pytest.mark.parametrize("name,options", [
    ("kru", {"complex": True}), ("kru", {"complex": False, "nonlinearity": "tanh"}),
    ("lstm_kru", {"factorisation": "per_gate"}), ("lstm_kru", {"factorisation": "joint"})])
def test_the_cpp_kernel_trains_the_model_the_reference_defines(name, options):
    """The whole model (KRU: ops.kru_layer on the C++ kernel's lanes layout; LSTM+KRU: ops.lstm_kru_layer, its
    input map inside the kernel) against the same model on the pure-PyTorch reference: outputs, last state and every parameter's gradient."""
    torch.manual_seed(3)
    models = {k: MODELS[name](3, 4, hidden_size=16, kernel=k, **options) for k in ("cpp", "reference")}
    models["reference"].load_state_dict(models["cpp"].state_dict())
    x = torch.randn(5, 7, 3)
    got = {}
    as_list = lambda state: list(state) if isinstance(state, tuple) else [state]  # noqa: E731  (LSTM: (h, c))
    for k, model in models.items():
        y1, state = model(x[:, :3])
        y2, state = model(x[:, 3:], state)  # a given (non-zero) initial state too
        (y1.square().sum() + y2.square().sum() + sum(s.abs().sum() for s in as_list(state))).backward()
        got[k] = [y1, y2, *as_list(state)] + [p.grad for p in model.parameters()]
    for a, b in zip(got["cpp"], got["reference"]):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("name,options", [(name, {}) for name in sorted(MODELS)] + [("kru", {"kernel": "reference"})])
def test_last_only_is_the_last_step_of_the_full_output(name, options):
    """model(x, last_only=True): the last step's output (B, 1, out), the same final state, and the same gradients
    for a loss on the last step, as slicing the full output (what pixel MNIST and adding are scored on)."""
    torch.manual_seed(5)
    model = MODELS[name](3, 4, hidden_size=16, **options)
    x = torch.randn(5, 7, 3)
    as_list = lambda state: list(state) if isinstance(state, tuple) else [state]  # noqa: E731
    results = []
    for last_only in (False, True):
        model.zero_grad()
        y, state = model(x, last_only=last_only)
        y = y[:, -1:]
        y.square().sum().backward()
        results.append([y, *as_list(state)] + [p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert results[1][0].shape == (5, 1, 4)
    assert len(results[0]) == len(results[1])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_kru_input_that_needs_a_gradient_gets_it_on_the_cpp_kernel():
    """An input with requires_grad (a KRU on top of a trainable layer) takes the C++ kernel's unfused lanes path,
    which gives x its gradient (the fused layer does not): same outputs and gradients, x's included, as the
    reference."""
    torch.manual_seed(4)
    models = {k: MODELS["kru"](3, 4, hidden_size=16, kernel=k) for k in ("cpp", "reference")}
    models["reference"].load_state_dict(models["cpp"].state_dict())
    got = {}
    for k, model in models.items():
        x = torch.randn(9, 5, 3, generator=torch.Generator().manual_seed(1)).requires_grad_()
        y, _ = model(x)
        y.square().sum().backward()
        got[k] = [y, x.grad] + [p.grad for p in model.parameters()]
    for a, b in zip(got["cpp"], got["reference"]):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-5)
