// The CPU library of krubench's Kronecker operators (krubench_cpu): the operator schemas (TORCH_LIBRARY) below. Its
// CPU kernels, each file registering its own
// (TORCH_LIBRARY_IMPL): kru_cpu_recurrence.cpp (the KRU recurrence, rows and lanes), kru_cpu_layer.cpp (the
// fused KRU layer), kru_cpu_lstm.cpp (LSTM+KRU); their shared parts in cpu_kernels.h and cpu_recurrence.h.
#include "cpu_layout.h"
#include "kru_schemas.h"

// The schemas (kru_schemas.h) are defined here, once per process; the CUDA library only adds CUDA implementations.
TORCH_LIBRARY(krubench, m) {
  kru::define_schemas(m);
  // The lanes layout's chunk width L, which this build chose for its CPU (cuda/cpu_layout.h).
  m.def("lanes_width() -> int", []() -> int64_t { return kru::L; });
}
