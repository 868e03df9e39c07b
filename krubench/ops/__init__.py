"""Kronecker-product operators. `kron_matvec` and `kru_recurrence` dispatch to a compiled backend (C++ on
the CPU, CUDA on a GPU; sources in cuda/) or to their pure-PyTorch `_ref` twins, the specification;
`backend_for` says which implementation runs (see dispatch.py). `kru_recurrence_lanes` is the C++
kernel on its own data layout (lanes.py); `kru_layer` (layer.py) is the whole KRU layer (input map,
recurrence, read-out) on the layout its backend wants: what the KRU model calls; `lstm_kru_layer` the same
for LSTM+KRU. Both take the factors as the model holds them and merge them for their backend (`stages`)."""
from . import lanes
from .dispatch import (BACKENDS, KERNELS, at_least_fp32, backend_for, kron_matvec, kru_recurrence,
                       kru_recurrence_lanes, lstm_kru_layer, lstm_kru_recurrence, merge_limit, stages)
from .kron import factor_sizes, kron_dense, kron_matvec_ref, merge_factors
from .layer import kru_layer
from .recurrence import NONLINEARITIES, apply_nonlinearity, kru_recurrence_ref, lstm_kru_recurrence_ref

__all__ = [
    "BACKENDS", "KERNELS", "NONLINEARITIES", "apply_nonlinearity", "at_least_fp32", "backend_for", "factor_sizes", "kron_dense",
    "kron_matvec", "kron_matvec_ref", "kru_recurrence", "kru_recurrence_lanes", "kru_recurrence_ref", "lanes",
    "lstm_kru_layer", "lstm_kru_recurrence", "lstm_kru_recurrence_ref",
    "merge_factors", "merge_limit", "kru_layer", "stages",
]
