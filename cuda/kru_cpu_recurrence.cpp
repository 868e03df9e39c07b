// The KRU recurrence's CPU operators: on the reference API's (B, T, N) rows (kru_recurrence, and kru_layer_input
// with its input map as a tensor) and on the kernel's own lanes layout (kru_recurrence_lanes, krubench.ops.lanes).
#include <torch/library.h>

#include "cpu_recurrence.h"

namespace kru {
namespace {

at::Tensor kru_recurrence_cpu(const at::Tensor& u, const at::Tensor& h0, const at::Tensor& w, at::IntArrayRef shapes,
                              c10::string_view nonlinearity, const at::Tensor& bias) {
  return run_recurrence<false>(check_recurrence(u, h0, w, shapes, bias), u, u.sizes(), h0, w, nonlinearity, bias);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kru_recurrence_backward_cpu(
    const at::Tensor& grad_H, const at::Tensor& H, const at::Tensor& h0, const at::Tensor& w, at::IntArrayRef shapes,
    c10::string_view nonlinearity, const at::Tensor& bias, const at::Tensor& grad_u) {
  const Plan plan = check_recurrence_backward(grad_H, H, h0, w, shapes, bias, grad_u);
  return run_recurrence_backward<false>(plan, grad_H, H, h0, w, nonlinearity, bias, grad_u);
}

at::Tensor kru_recurrence_lanes_cpu(const at::Tensor& u, const at::Tensor& h0, const at::Tensor& w,
                                    at::IntArrayRef shapes, c10::string_view nonlinearity, const at::Tensor& bias) {
  return run_recurrence<true>(check_recurrence_lanes(u, h0, w, shapes, bias), u, u.sizes(), h0, w, nonlinearity, bias);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kru_recurrence_lanes_backward_cpu(
    const at::Tensor& grad_H, const at::Tensor& H, const at::Tensor& h0, const at::Tensor& w, at::IntArrayRef shapes,
    c10::string_view nonlinearity, const at::Tensor& bias, const at::Tensor& grad_u) {
  const Plan plan = check_recurrence_lanes(H, h0, w, shapes, bias);
  for (const auto& [t, name] : {std::pair{&grad_H, "grad_H"}, std::pair{&grad_u, "grad_u"}})
    TORCH_CHECK(t->sizes() == H.sizes() && t->scalar_type() == H.scalar_type() && t->is_contiguous(),
                "krubench: ", name, " must be contiguous, shaped and typed like H ", H.sizes(), ", got ", t->sizes());
  poison_unless_in_place(grad_u, grad_H);
  return run_recurrence_backward<true>(plan, grad_H, H, h0, w, nonlinearity, bias, grad_u);
}

// kru_layer_input on the CPU: u = x uwᵀ + ub as a tensor, then the recurrence. The CPU's fast layer is
// kru_layer_lanes; this states the contract the CUDA kernel meets (and lets its autograd be tested here).
at::Tensor kru_layer_input_cpu(const at::Tensor& x, const at::Tensor& uw, const at::Tensor& ub, const at::Tensor& h0,
                               const at::Tensor& w, at::IntArrayRef shapes, c10::string_view nonlinearity,
                               const at::Tensor& bias) {
  check_layer_input(x, uw, ub, h0, w, shapes, bias);
  at::Tensor u = at::addmm(ub, x.reshape({-1, x.size(2)}), uw.t()).view({x.size(0), x.size(1), uw.size(0)});
  if (h0.is_complex()) u = at::view_as_complex(u.view({x.size(0), x.size(1), h0.size(1), 2}));
  return kru_recurrence_cpu(u, h0, w, shapes, nonlinearity, bias);
}

}  // namespace
}  // namespace kru

TORCH_LIBRARY_IMPL(krubench, CPU, m) {
  m.impl("kru_recurrence", &kru::kru_recurrence_cpu);
  m.impl("kru_recurrence_backward", &kru::kru_recurrence_backward_cpu);
  m.impl("kru_recurrence_lanes", &kru::kru_recurrence_lanes_cpu);
  m.impl("kru_recurrence_lanes_backward", &kru::kru_recurrence_lanes_backward_cpu);
  m.impl("kru_layer_input", &kru::kru_layer_input_cpu);
}
