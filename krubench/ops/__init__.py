"""Kronecker-product operators, as the models, the layer API and the scripts use them. `kru_layer` (layer.py)
is the whole KRU layer (input map, recurrence, read-out) on the layout its backend wants, `lstm_kru_layer` the
same for LSTM+KRU: both take the factors as the model holds them and dispatch to a compiled backend (C++ on the
CPU, CUDA on a GPU; sources in cuda/) or to the pure-PyTorch reference, the specification (recurrence.py,
kron.py). `backend_for` says which implementation runs (dispatch.py), `layer.layer_path` which operator and
layout a layer takes on it. `kru_recurrence` is the recurrence alone on (B, T, N) tensors and
`kru_recurrence_lanes` the C++ kernel's on its own layout (lanes.py), for the benchmarks."""
from . import lanes
from .dispatch import BACKENDS, KERNELS, backend_for, kru_recurrence, kru_recurrence_lanes, merge_limit
from .kron import factor_sizes, merge_factors
from .layer import kru_layer, lstm_kru_layer
from .recurrence import NONLINEARITIES, apply_nonlinearity

__all__ = [
    "BACKENDS", "KERNELS", "NONLINEARITIES", "apply_nonlinearity", "backend_for", "factor_sizes", "kru_layer",
    "kru_recurrence", "kru_recurrence_lanes", "lanes", "lstm_kru_layer", "merge_factors", "merge_limit",
]
