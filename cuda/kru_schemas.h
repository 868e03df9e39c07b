// The operator schemas of krubench's Kronecker operators, in one place: defined by the library that holds them
// (krubench, kru_cpu.cpp) and by the emulator's (krubench_emu, kru_emu.cpp), which registers the CUDA kernels under
// the same schemas. Each backend registers its implementations (TORCH_LIBRARY_IMPL); the Python side adds autograd
// and fake implementations (krubench/ops/compiled.py, register).
#pragma once

#include <torch/library.h>

#include "kru_plan.h"

namespace kru {

inline void define_schemas(torch::Library& m) {
  m.def("kru_recurrence(Tensor u, Tensor h0, Tensor w, int[] shapes, str nonlinearity, Tensor bias) -> Tensor");
  // The same with the input map inside: u_t = uw x_t + ub from x (B, T, I), uw's rows u's (Re, Im) pairs; no u
  // tensor on CUDA. Its backward is kru_recurrence_backward's.
  m.def("kru_layer_input(Tensor x, Tensor uw, Tensor ub, Tensor h0, Tensor w, int[] shapes, str nonlinearity, "
        "Tensor bias) -> Tensor");
  // Writes ∂L/∂u into grad_u, which may be grad_H itself (the caller's choice when it owns grad_H);
  // returns the gradients of h0, w and bias.
  m.def("kru_recurrence_backward(Tensor grad_H, Tensor H, Tensor h0, Tensor w, int[] shapes, str nonlinearity, "
        "Tensor bias, Tensor(a!) grad_u) -> (Tensor, Tensor, Tensor)");
  // CUDA only: the register-resident forward whatever kru_recurrence would choose (2x2 factors; kru_cuda.cu)
  m.def("kru_recurrence_regs(Tensor u, Tensor h0, Tensor w, int[] shapes, str nonlinearity, Tensor bias) -> Tensor");
  // Which kernel the CUDA recurrence runs, both directions ("warp", "registers" or "fused"), on a device with
  // smem_limit bytes of shared memory a block: a pure function of its arguments (cuda/kru_plan.h).
  m.def("kru_recurrence_kernel(int[] shapes, ScalarType dtype, int smem_limit) -> str", &kru::recurrence_kernel_name);
  // The same on the CPU kernel's own layout (krubench.ops.lanes); CPU only.
  m.def("kru_recurrence_lanes(Tensor u, Tensor h0, Tensor w, int[] shapes, str nonlinearity, Tensor bias) -> Tensor");
  m.def("kru_recurrence_lanes_backward(Tensor grad_H, Tensor H, Tensor h0, Tensor w, int[] shapes, "
        "str nonlinearity, Tensor bias, Tensor(a!) grad_u) -> (Tensor, Tensor, Tensor)");
  // The KRU layer on that layout: input map, recurrence and read-out in one pass (CPU only)
  m.def("kru_layer_lanes(Tensor x, Tensor uw, Tensor ub, Tensor h0, Tensor w, int[] shapes, str nonlinearity, "
        "Tensor bias, Tensor vw, Tensor vb, bool last_only) -> (Tensor, Tensor)");
  m.def("kru_layer_lanes_backward(Tensor grad_y, Tensor grad_hT, Tensor x, Tensor uw, Tensor H, Tensor h0, Tensor w, "
        "int[] shapes, str nonlinearity, Tensor bias, Tensor vw, bool last_only) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // LSTM+KRU's whole recurrence (CPU only): gates from gx = W_ih x + b and G Kronecker products of h
  m.def("lstm_kru_recurrence(Tensor gx, Tensor h0, Tensor c0, Tensor w, int[] shapes) -> (Tensor, Tensor)");
  m.def("lstm_kru_recurrence_backward(Tensor grad_H, Tensor grad_C, Tensor gx, Tensor h0, Tensor c0, Tensor w, "
        "int[] shapes, Tensor H, Tensor C) -> (Tensor, Tensor, Tensor, Tensor)");
  // The same with the input map inside, x (B, T, I) instead of gx (CPU only); the backward returns the
  // gradients of wih, bih, h0, c0 and w
  m.def("lstm_kru_layer(Tensor x, Tensor wih, Tensor bih, Tensor h0, Tensor c0, Tensor w, int[] shapes) "
        "-> (Tensor, Tensor)");
  m.def("lstm_kru_layer_backward(Tensor grad_H, Tensor grad_C, Tensor x, Tensor wih, Tensor bih, Tensor h0, "
        "Tensor c0, Tensor w, int[] shapes, Tensor H, Tensor C) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

}  // namespace kru
