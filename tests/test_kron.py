"""kron_matvec_ref (the Kronecker matrix-vector product the recurrences use) against the dense torch.kron product;
factor-shape helpers."""
import pytest
import torch

from krubench.models.kru import random_unitary, unitary_penalty
from krubench.ops.kron import factor_sizes, kron_dense, kron_matvec_ref, merge_factors

SHAPES = [
    [(2, 2)],
    [(2, 2), (2, 2), (2, 2)],
    [(3, 2), (2, 4), (5, 3)],  # rectangular, mixed sizes
    [(4, 4), (1, 3), (2, 2)],
    [(8, 8), (4, 4)],
]


def _factors(shapes, dtype, requires_grad=False):
    return [torch.randn(*s, dtype=dtype, requires_grad=requires_grad) for s in shapes]


@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_matches_dense_kron(shapes, dtype):
    factors = _factors(shapes, dtype)
    n = kron_dense(factors).shape[1]
    x = torch.randn(3, 5, n, dtype=dtype)
    expected = x @ kron_dense(factors).T  # (3, 5, prod p)
    y = kron_matvec_ref(x, factors)
    assert y.shape == expected.shape
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_gradients_match_dense(dtype):
    shapes = [(3, 2), (2, 4), (2, 2)]
    factors = _factors(shapes, dtype, requires_grad=True)
    x = torch.randn(4, 16, dtype=dtype, requires_grad=True)
    g = torch.randn(4, 12, dtype=dtype)
    grads = torch.autograd.grad((kron_matvec_ref(x, factors) * g.conj()).real.sum(), [x, *factors])
    dense_grads = torch.autograd.grad((x @ kron_dense(factors).T * g.conj()).real.sum(), [x, *factors])
    for a, b in zip(grads, dense_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_gradcheck(dtype):
    factors = _factors([(2, 3), (3, 2)], dtype, requires_grad=True)
    x = torch.randn(2, 6, dtype=dtype, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a, b: kron_matvec_ref(x, [a, b]), (x, *factors))


def test_mixed_real_input_complex_factors():
    factors = _factors([(2, 2), (2, 2)], torch.complex64)
    x = torch.randn(7, 4)
    torch.testing.assert_close(kron_matvec_ref(x, factors), x.to(torch.complex64) @ kron_dense(factors).T)


def test_wrong_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match=r"last dimension of prod\(q_i\) = 8"):
        kron_matvec_ref(torch.randn(3, 6), [torch.randn(2, 2)] * 3)
    with pytest.raises(ValueError, match="must be a matrix"):
        kron_matvec_ref(torch.randn(2), [torch.randn(2)])
    with pytest.raises(ValueError, match="at least one factor"):
        kron_matvec_ref(torch.randn(2), [])


def test_unitary_factors_give_unitary_product():
    factors = [random_unitary(2, True) for _ in range(4)] + [random_unitary(3, True)]
    W = kron_dense(factors)
    torch.testing.assert_close(W.conj().T @ W, torch.eye(48, dtype=W.dtype), atol=1e-5, rtol=0)
    x = torch.randn(10, 48, dtype=torch.complex64)
    torch.testing.assert_close(kron_matvec_ref(x, factors).abs().norm(dim=-1), x.abs().norm(dim=-1))
    assert unitary_penalty(factors).item() < 1e-10
    assert unitary_penalty([f * 1.1 for f in factors]).item() > 0.1


def test_merge_factors_is_the_same_operator():
    factors = _factors([(2, 2)] * 7, torch.complex128)
    merged = merge_factors(factors, 16)
    assert [tuple(f.shape) for f in merged] == [(16, 16), (8, 8)]
    torch.testing.assert_close(kron_dense(merged), kron_dense(factors))
    assert len(merge_factors(factors, 1)) == 7


def test_factor_sizes():
    assert factor_sizes(128) == [2] * 7
    assert factor_sizes(64, 4) == [4, 4, 4]
    assert factor_sizes(128, 2, [4, 4, 8]) == [4, 4, 8]
    with pytest.raises(ValueError, match=r"model.hidden_size=100 is not a power of model.factor_size=2: use model.hidden_size=64 or 128"):
        factor_sizes(100, 2)
    with pytest.raises(ValueError, match=r"model.factors=\[4, 4, 4, 2\]"):
        factor_sizes(128, 4)
    with pytest.raises(ValueError, match=r"multiply to 96, not model.hidden_size=128"):
        factor_sizes(128, 2, [4, 4, 6])
