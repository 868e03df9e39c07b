"""Kronecker-product operators. Each public function here is the stable entry point that later
compiled backends plug in behind; `backend_name` says which implementation runs."""
from .kron import factor_sizes, kron_dense, kron_matvec, merge_factors
from .recurrence import NONLINEARITIES, apply_nonlinearity, kru_recurrence_ref

BACKENDS = ("reference",)


def kru_recurrence(u, h0, factors, nonlinearity, bias=None):
    """Whole-sequence KRU recurrence (see `kru_recurrence_ref` for the contract)."""
    return kru_recurrence_ref(u, h0, factors, nonlinearity, bias)


def backend_name(device=None) -> str:
    """The implementation of `kron_matvec`/`kru_recurrence` used for tensors on `device`."""
    return "reference"


__all__ = [
    "BACKENDS", "NONLINEARITIES", "apply_nonlinearity", "backend_name", "factor_sizes", "kron_dense",
    "kron_matvec", "kru_recurrence", "kru_recurrence_ref", "merge_factors",
]
