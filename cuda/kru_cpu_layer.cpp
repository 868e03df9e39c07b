// The KRU layer's CPU operator on the lanes layout (kru_layer_lanes): input map, recurrence and read-out in one
// pass, forward and backward (Maps, cpu_recurrence.h).
#include <torch/library.h>

#include "cpu_recurrence.h"

namespace kru {
namespace {

// The KRU layer on the lanes layout (Maps): x (chunks, T, I, L); U (K, I), b_U (K,); V (O, K), b_V (O,);
// K = C·N. Returns y (chunks, T or 1, O, L) and H (chunks, T, C, N, L).
Plan check_layer_lanes(const at::Tensor& x, const at::Tensor& uw, const at::Tensor& ub, const at::Tensor& h0,
                       const at::Tensor& w, at::IntArrayRef shapes, const at::Tensor& bias, const at::Tensor& vw,
                       const at::Tensor& vb) {
  TORCH_CHECK(x.dim() == 4 && x.size(3) == L, "krubench: x must be (chunks, T, I, ", L, ") in the lanes layout, got ",
              x.sizes());
  const Plan plan = check_lanes_recurrence(h0, w, shapes, bias, x.size(0));
  const long K = (w.is_complex() ? 2 : 1) * plan.n_in;
  TORCH_CHECK(uw.dim() == 2 && uw.size(0) == K && uw.size(1) == x.size(2) && ub.dim() == 1 && ub.size(0) == K,
              "krubench: the input map must be (", K, ", ", x.size(2), ") with a (", K, ",) bias, got ", uw.sizes(),
              " and ", ub.sizes());
  TORCH_CHECK(vw.dim() == 2 && vw.size(1) == K && vb.dim() == 1 && vb.size(0) == vw.size(0),
              "krubench: the read-out must be (O, ", K, ") with an (O,) bias, got ", vw.sizes(), " and ", vb.sizes());
  check_lanes_tensors(w, {{&x, "x"}, {&uw, "U"}, {&ub, "the input bias"}, {&vw, "V"}, {&vb, "the read-out bias"}});
  return plan;
}

std::tuple<at::Tensor, at::Tensor> kru_layer_lanes_cpu(const at::Tensor& x, const at::Tensor& uw, const at::Tensor& ub,
                                                       const at::Tensor& h0, const at::Tensor& w, at::IntArrayRef shapes,
                                                       c10::string_view nonlinearity, const at::Tensor& bias,
                                                       const at::Tensor& vw, const at::Tensor& vb, bool last_only) {
  const Plan plan = check_layer_lanes(x, uw, ub, h0, w, shapes, bias, vw, vb);
  const long chunks = x.size(0), T = x.size(1), C = w.is_complex() ? 2 : 1;
  LayerTensors layer{x, uw, ub, vw, vb};
  layer.last_only = last_only;
  layer.y = new_output({chunks, last_only ? std::min<long>(T, 1) : T, vw.size(0), L}, x.options());
  at::Tensor H = run_recurrence<true>(plan, at::Tensor(), {chunks, T, C, plan.n_in, L}, h0, w, nonlinearity, bias,
                                      &layer);
  return {layer.y, H};
}

// grad_y like y, grad_hT like h0; returns the gradients of U, b_U, h0, w, bias, V, b_V.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
kru_layer_lanes_backward_cpu(const at::Tensor& grad_y, const at::Tensor& grad_hT, const at::Tensor& x,
                             const at::Tensor& uw, const at::Tensor& H, const at::Tensor& h0, const at::Tensor& w,
                             at::IntArrayRef shapes, c10::string_view nonlinearity, const at::Tensor& bias,
                             const at::Tensor& vw, bool last_only) {
  const Plan plan = check_recurrence_lanes(H, h0, w, shapes, bias);
  const long chunks = x.size(0), T = x.size(1), K = uw.size(0), I = uw.size(1), O = vw.size(0);
  TORCH_CHECK(x.dim() == 4 && H.size(0) == chunks && H.size(1) == T && uw.dim() == 2 && K == H.size(2) * H.size(3) &&
              I == x.size(2) && vw.dim() == 2 && vw.size(1) == K,
              "krubench: x ", x.sizes(), ", U ", uw.sizes(), ", V ", vw.sizes(), " do not fit H ", H.sizes());
  TORCH_CHECK(grad_y.sizes() == at::IntArrayRef({chunks, last_only ? std::min<long>(T, 1) : T, O, L}) &&
              grad_hT.sizes() == h0.sizes(), "krubench: grad_y ", grad_y.sizes(), " or grad_hT ", grad_hT.sizes(),
              " is not shaped like y or h0");
  check_lanes_tensors(w, {{&x, "x"}, {&uw, "U"}, {&vw, "V"}, {&grad_y, "grad_y"}, {&grad_hT, "grad_hT"}});
  const auto opts = x.options();
  LayerTensors layer{x, uw, at::Tensor(), vw, at::Tensor(), at::Tensor(), grad_y, grad_hT, vw.t().contiguous(),
                     at::zeros({chunks, K, I, L}, opts), at::zeros({chunks, K, L}, opts),
                     at::zeros({chunks, O, K, L}, opts), at::zeros({chunks, O, L}, opts)};
  layer.last_only = last_only;
  const auto [gh0, gw, gb] = run_recurrence_backward<true>(plan, at::Tensor(), H, h0, w, nonlinearity, bias,
                                                           at::Tensor(), &layer);
  return {layer.guw.sum(at::IntArrayRef{0, 3}), layer.gub.sum(at::IntArrayRef{0, 2}), gh0, gw, gb,
          layer.gvw.sum(at::IntArrayRef{0, 3}), layer.gvb.sum(at::IntArrayRef{0, 2})};
}

}  // namespace
}  // namespace kru

TORCH_LIBRARY_IMPL(krubench, CPU, m) {
  m.impl("kru_layer_lanes", &kru::kru_layer_lanes_cpu);
  m.impl("kru_layer_lanes_backward", &kru::kru_layer_lanes_backward_cpu);
}
