// LSTM+KRU's CPU kernels and operators: the whole recurrence in one pass (lstm_kru_recurrence), also with its
// input map W_ih x + b inside (lstm_kru_layer).
#include <torch/library.h>

#include "cpu_kernels.h"

namespace kru {
namespace {

// ---- LSTM+KRU: the whole LSTM recurrence, its W_hh Kronecker-factored, in one pass ----
// Gates a_t = gx_t + Re(W h_{t-1}) (4N rows, gate-major: i, f, g, o), where W is G products of one plan
// (G = 4: an N × N product per gate; G = 1: one 4N × N product, its first factor 4·q_0 × q_0) and
// gx_t = W_ih x_t + b comes from one GEMM outside; c_t = σ(f) c_{t-1} + σ(i) tanh(g), h_t = σ(o) tanh(c_t).
// The state is real; complex factors act on it with a zero imaginary plane, and only the real part of
// W h feeds the gates. The forward stores H and the cell states C (B, T, N); the backward recomputes the
// gates from h_{t-1}, each product keeping its stage inputs for its own backpropagation. Rows layout.

// The G products' factor planes (and their adjoints' for the backward pass), one pointer each.
template <typename T>
struct Products {
  long G;
  std::vector<const T*> wr, wi, awr, awi;
};

// The input map inside the kernel (lstm_kru_layer): the gates' input part gx_t = W_ih x_t + b is computed per
// step from x_t (I values a row) instead of read from a (B, T, 4N) tensor, and W_ih's and b's gradients are
// summed per chunk in the backward pass, a block of kBlock steps at a time (as the KRU layer's MapsGrad).
// At PTB's shape the (B, T, 4N) gx, its gradient and the GEMMs around them were a third of the step
// (BENCHMARKS.md).
template <typename T>
struct LstmInput {
  static constexpr long kBlock = 8;
  const T *x, *w, *b;  // x (B, T, I) rows; W_ih (4N, I); b (4N)
  long I;
  T *gw = nullptr, *gb = nullptr;  // the backward pass's partials: (chunks, 4N · I, L), (chunks, 4N, L)
};

// a (4N × L) += Re(W h) for every product, h: planes (hr, zero imaginary); keep: each product's scratch
// keeps its stage inputs (slots 1..F) for backprop_stages.
template <typename T, bool CPLX>
void add_recurrent(const Plan& plan, const Products<T>& w, std::vector<Scratch<T>>& sts, bool keep, const T* hr,
                   const T* zero, T* a) {
  for (long g = 0; g < w.G; ++g) {
    const long z = run_stages<T, CPLX>(plan, w.wr[g], w.wi[g], sts[g], keep, -1, hr, zero);
    const T* zr = sts[g].re(z);
    T* ag = a + g * plan.n_out * L;
#pragma omp simd
    for (long o = 0; o < plan.n_out * L; ++o) ag[o] += zr[o];
  }
}

// The gates' input part of step t of the chunk whose first row is m0 into a (4N × L): gathered from gx, or
// W_ih x_t + b with x_t gathered into the planes xt (I × L; xjunk: as many, for the gather's imaginary plane).
template <typename T>
void lstm_input(const T* gx, const LstmInput<T>* in, long m0, long lanes, long t, long steps, long N, T* a, T* junk,
                T* xt, T* xjunk) {
  if (!in) return gather<T, false>(gx + (m0 * steps + t) * 4 * N, steps * 4 * N, lanes, 4 * N, a, junk);
  gather<T, false>(in->x + (m0 * steps + t) * in->I, steps * in->I, lanes, in->I, xt, xjunk);
  lanes_affine(in->w, in->b, 4 * N, in->I, xt, a);
}

// gx (B, T, 4N), or x and the input map when `in` is given.
template <typename T, bool CPLX>
void lstm_forward(const Plan& plan, const Products<T>& w, const T* gx, const T* h0, const T* c0, T* H, T* C, long B,
                  long steps, long N, const LstmInput<T>* in = nullptr) {
  at::parallel_for(0, (B + L - 1) / L, 1, [&](long c0_, long c1_) {
    std::vector<Scratch<T>> sts(w.G, Scratch<T>(2, plan.max_size));
    Scratch<T> io(3, 4 * N);  // 0: the gates a (re), junk (im); 1: h (re), zeros (im, never written); 2: c, junk
    Scratch<T> xio(1, in ? in->I : 0);  // x_t (re), junk (im)
    T *a = io.re(0), *junk = io.im(0), *h = io.re(1), *zero = io.im(1), *c = io.re(2);
    for (long ch = c0_; ch < c1_; ++ch) {
      const long m0 = ch * L, lanes = std::min<long>(L, B - m0);
      gather<T, false>(h0 + m0 * N, N, lanes, N, h, junk);
      gather<T, false>(c0 + m0 * N, N, lanes, N, c, junk);
      for (long t = 0; t < steps; ++t) {
        lstm_input(gx, in, m0, lanes, t, steps, N, a, junk, xio.re(0), xio.im(0));
        add_recurrent<T, CPLX>(plan, w, sts, false, h, zero, a);
        for (long n = 0; n < N; ++n) {
#pragma omp simd
          for (int l = 0; l < L; ++l) {
            const long o = n * L + l;
            T i, f, g, og;
            lstm_gates(a[o], a[N * L + o], a[2 * N * L + o], a[3 * N * L + o], i, f, g, og);
            c[o] = f * c[o] + i * g;
            h[o] = og * hd_tanh(c[o]);
          }
        }
        scatter<T, false>(h, junk, lanes, N, H + (m0 * steps + t) * N, steps * N);
        scatter<T, false>(c, junk, lanes, N, C + (m0 * steps + t) * N, steps * N);
      }
    }
  });
}

// ∂L/∂gx into ggx (B, T, 4N) (with `in`: the input map's partial gradients into in->gw, in->gb instead),
// ∂L/∂h0, ∂L/∂c0, and per chunk the partial factor gradients of the G products (gwr, gwi: (chunks, G·wsize,
// L)), from ∂L/∂H and ∂L/∂C (B, T, N).
template <typename T, bool CPLX>
void lstm_backward(const Plan& plan, const Plan& adj, const Products<T>& w, const T* gx, const T* h0, const T* c0,
                   const T* H, const T* C, const T* gH, const T* gC, long B, long steps, long N, T* ggx, T* gh0, T* gc0,
                   T* gwr, T* gwi, const LstmInput<T>* in = nullptr) {
  const long F = plan.stages.size(), G = w.G;
  at::parallel_for(0, (B + L - 1) / L, 1, [&](long c0_, long c1_) {
    // each product's scratch: slots 1..F its stage inputs, F+1 and F+2 its backpropagation's
    std::vector<Scratch<T>> sts(G, Scratch<T>(F + 3, plan.max_size));
    // 0: the gates a, then ∂L/∂a; 1: h_{t-1} (im: zeros, never written); 2: c_{t-1}; 3: c_t; 4: ∂L/∂h_t;
    // 5: ∂L/∂c_t; 6: what the loss adds to them (re: ∂L/∂H_t, im: ∂L/∂C_t); 7: junk (gathers' imaginary planes)
    Scratch<T> io(8, 4 * N);
    T *gates = io.re(0), *h1 = io.re(1), *zero = io.im(1), *cp = io.re(2), *ct = io.re(3), *dh = io.re(4), *dc = io.re(5);
    T *lh = io.re(6), *lc = io.im(6), *junk = io.re(7);
    // the input map's block of steps: x_t and ∂L/∂a_t of each (slot t mod kBlock), junk for the x gathers
    constexpr long kBlock = LstmInput<T>::kBlock;
    const long I = in ? in->I : 0;
    std::vector<Lanes<T>> xs(in ? kBlock * I + I : 0), das(in ? kBlock * 4 * N : 0);
    T *xb = reinterpret_cast<T*>(xs.data()), *xjunk = xb + kBlock * I * L, *dab = reinterpret_cast<T*>(das.data());
    // each product's large last factor's gradient, by blocks of steps (none for small factors)
    std::vector<LastFactorGrad<T, CPLX>> lgs;
    if (LastFactorGrad<T, CPLX>::applies(plan))
      for (long g = 0; g < G; ++g) lgs.emplace_back(plan);
    for (long ch = c0_; ch < c1_; ++ch) {
      const long m0 = ch * L, lanes = std::min<long>(L, B - m0);
      T *cwr = gwr + ch * G * plan.wsize * L, *cwi = gwi + ch * G * plan.wsize * L;
      std::fill(dh, dh + N * L, T(0));
      std::fill(dc, dc + N * L, T(0));
      long end = steps;  // the input map's block: steps [t, end)
      for (long t = steps - 1; t >= 0; --t) {
        // the gates, then ∂L/∂a: with the input map, in the block's slot of step t (kept for W_ih's gradient)
        T* a = in ? dab + (t % kBlock) * 4 * N * L : gates;
        const long row = (m0 * steps + t) * N;  // step t of the chunk's first row, in (B, T, N)
        if (t > 0) {
          gather<T, false>(H + row - N, steps * N, lanes, N, h1, junk);
          gather<T, false>(C + row - N, steps * N, lanes, N, cp, junk);
        } else {
          gather<T, false>(h0 + m0 * N, N, lanes, N, h1, junk);
          gather<T, false>(c0 + m0 * N, N, lanes, N, cp, junk);
        }
        gather<T, false>(C + row, steps * N, lanes, N, ct, junk);
        gather<T, false>(gH + row, steps * N, lanes, N, lh, junk);
        gather<T, false>(gC + row, steps * N, lanes, N, lc, junk);
        lstm_input(gx, in, m0, lanes, t, steps, N, a, junk, xb + (t % kBlock) * I * L, xjunk);
        add_recurrent<T, CPLX>(plan, w, sts, true, h1, zero, a);
        for (long n = 0; n < N; ++n) {
#pragma omp simd
          for (int l = 0; l < L; ++l) {
            const long o = n * L + l;
            T i, f, g, og;
            lstm_gates(a[o], a[N * L + o], a[2 * N * L + o], a[3 * N * L + o], i, f, g, og);
            const T tc = hd_tanh(ct[o]);
            const T gh = dh[o] + lh[o], gc = dc[o] + lc[o] + gh * og * (T(1) - tc * tc);
            a[o] = gc * g * i * (T(1) - i);
            a[N * L + o] = gc * cp[o] * f * (T(1) - f);
            a[2 * N * L + o] = gc * i * (T(1) - g * g);
            a[3 * N * L + o] = gh * tc * og * (T(1) - og);
            dc[o] = gc * f;
            dh[o] = T(0);
          }
        }
        if (!in) {
          scatter<T, false>(a, junk, lanes, 4 * N, ggx + row * 4, steps * 4 * N);
        } else if (t % kBlock == 0) {  // the block's W_ih and b gradients, summed over its steps
          lanes_affine_grad(dab, 4 * N * L, 4 * N, xb, I * L, I, end - t, in->gw + ch * 4 * N * I * L,
                            in->gb + ch * 4 * N * L);
          end = t;
        }
        for (long g = 0; g < G; ++g) {  // ∂L/∂h_{t-1} = Σ_g Re(W_gᴴ ∂L/∂a_g); the factors' gradients
          Scratch<T>& st = sts[g];
          const long d = F + 1;
          std::copy(a + g * plan.n_out * L, a + (g + 1) * plan.n_out * L, st.re(d));
          std::fill(st.im(d), st.im(d) + plan.n_out * L, T(0));
          T *gwr_g = cwr + g * plan.wsize * L, *gwi_g = cwi + g * plan.wsize * L;
          if (!lgs.empty()) lgs[g].add(st.re(d), st.im(d), F > 1 ? st.re(F - 1) : h1, F > 1 ? st.im(F - 1) : zero,
                                       gwr_g, gwi_g);
          const long r = backprop_stages<T, CPLX>(plan, adj, w.awr[g], w.awi[g], st, d, F + 2, gwr_g, gwi_g, h1, zero,
                                                  lgs.empty());
          const T* rr = st.re(r);
#pragma omp simd
          for (long o = 0; o < N * L; ++o) dh[o] += rr[o];
        }
      }
      for (long g = 0; g < static_cast<long>(lgs.size()); ++g)
        lgs[g].flush(cwr + g * plan.wsize * L, cwi + g * plan.wsize * L);
      scatter<T, false>(dh, junk, lanes, N, gh0 + m0 * N, N);
      scatter<T, false>(dc, junk, lanes, N, gc0 + m0 * N, N);
    }
  });
}

// The G products' planes (all of them back to back, product g at g · wsize) as the kernels' pointers.
template <typename T>
Products<T> products_of(const Plan& plan, long G, const at::Tensor& wr, const at::Tensor& wi, const at::Tensor* awr,
                        const at::Tensor* awi) {
  Products<T> p{G};
  for (long g = 0; g < G; ++g) {
    p.wr.push_back(ptr<T>(wr) + g * plan.wsize);
    p.wi.push_back(ptr<T>(wi) + g * plan.wsize);
    if (awr) {
      p.awr.push_back(ptr<T>(*awr) + g * plan.wsize);
      p.awi.push_back(ptr<T>(*awi) + g * plan.wsize);
    }
  }
  return p;
}

// H and C of LSTM+KRU from `in`: gx (B, T, 4N), or x (B, T, I) when its input map (wih, bih) is given.
std::tuple<at::Tensor, at::Tensor> lstm_forward_cpu(const Plan& plan, const at::Tensor& in, const at::Tensor& h0,
                                                    const at::Tensor& c0, const at::Tensor& w,
                                                    const at::Tensor* wih = nullptr, const at::Tensor* bih = nullptr) {
  const long B = in.size(0), T_ = in.size(1), N = plan.n_in;
  at::Tensor H = new_output({B, T_, N}, in.options()), C = new_output({B, T_, N}, in.options());
  const long G = w.numel() / plan.wsize;
  const auto [wr, wi] = products_planes(w, plan, false);
  dispatch_dtype(w.scalar_type(), [&](auto t, auto c) {
    using T = decltype(t);
    const Products<T> p = products_of<T>(plan, G, wr, wi, nullptr, nullptr);
    std::optional<LstmInput<T>> map;
    if (wih) map = LstmInput<T>{ptr<T>(in), ptr<T>(*wih), ptr<T>(*bih), in.size(2)};
    lstm_forward<T, decltype(c)::value>(plan, p, map ? nullptr : ptr<T>(in), ptr<T>(h0), ptr<T>(c0), ptr<T>(H),
                                        ptr<T>(C), B, T_, N, map ? &*map : nullptr);
  });
  return {H, C};
}

std::tuple<at::Tensor, at::Tensor> lstm_kru_recurrence_cpu(const at::Tensor& gx, const at::Tensor& h0,
                                                           const at::Tensor& c0, const at::Tensor& w,
                                                           at::IntArrayRef shapes) {
  return lstm_forward_cpu(check_lstm(gx, h0, c0, w, shapes), gx, h0, c0, w);
}

// Returns the gradients of gx, h0, c0 and w.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_kru_recurrence_backward_cpu(
    const at::Tensor& grad_H, const at::Tensor& grad_C, const at::Tensor& gx, const at::Tensor& h0,
    const at::Tensor& c0, const at::Tensor& w, at::IntArrayRef shapes, const at::Tensor& H, const at::Tensor& C) {
  const Plan plan = check_lstm(gx, h0, c0, w, shapes);
  const Plan adj = adjoint_plan(plan);
  const long B = gx.size(0), T_ = gx.size(1), N = plan.n_in;
  for (const auto& [t, name] : {std::pair{&grad_H, "grad_H"}, std::pair{&grad_C, "grad_C"}, std::pair{&H, "H"},
                                std::pair{&C, "C"}}) {
    TORCH_CHECK(t->sizes() == at::IntArrayRef({B, T_, N}), "krubench: ", name, " must be (", B, ", ", T_, ", ", N,
                "), got ", t->sizes());
    check_same(gx, *t, name);
  }
  at::Tensor ggx = new_output(gx.sizes(), gx.options()), gh0 = new_output(h0.sizes(), h0.options()),
             gc0 = new_output(c0.sizes(), c0.options());
  const long G = w.numel() / plan.wsize;
  at::Tensor gwr = partials(B, G * plan.wsize, gx), gwi = partials(B, G * plan.wsize, gx);
  const auto [wr, wi] = products_planes(w, plan, false);
  const auto [awr, awi] = products_planes(w, plan, true);
  dispatch_dtype(w.scalar_type(), [&](auto t, auto c) {
    using T = decltype(t);
    const Products<T> p = products_of<T>(plan, G, wr, wi, &awr, &awi);
    lstm_backward<T, decltype(c)::value>(plan, adj, p, ptr<T>(gx), ptr<T>(h0), ptr<T>(c0), ptr<T>(H), ptr<T>(C),
                                         ptr<T>(grad_H), ptr<T>(grad_C), B, T_, N, ptr<T>(ggx), ptr<T>(gh0),
                                         ptr<T>(gc0), ptr<T>(gwr), ptr<T>(gwi));
  });
  return {ggx, gh0, gc0, combine_planes(gwr.sum(at::IntArrayRef{0, 2}), gwi.sum(at::IntArrayRef{0, 2}), w.is_complex())};
}

// lstm_kru_layer: LSTM+KRU with its input map W_ih x + b inside the kernel (LstmInput): x (B, T, I) real,
// wih (4N, I), bih (4N,); the state and products as lstm_kru_recurrence's.
Plan check_lstm_layer(const at::Tensor& x, const at::Tensor& wih, const at::Tensor& bih, const at::Tensor& h0,
                      const at::Tensor& c0, const at::Tensor& w, at::IntArrayRef shapes) {
  const Plan plan = check_lstm_state(x, "x", h0, c0, w, shapes);
  const long N = plan.n_in;
  TORCH_CHECK(wih.dim() == 2 && wih.size(0) == 4 * N && wih.size(1) == x.size(2), "krubench: W_ih must be (4N, I) = (",
              4 * N, ", ", x.size(2), "), got ", wih.sizes());
  TORCH_CHECK(bih.dim() == 1 && bih.size(0) == 4 * N, "krubench: b_ih must be (4N,) = (", 4 * N, ",), got ",
              bih.sizes());
  check_same(x, wih, "W_ih");
  check_same(x, bih, "b_ih");
  return plan;
}

std::tuple<at::Tensor, at::Tensor> lstm_kru_layer_cpu(const at::Tensor& x, const at::Tensor& wih, const at::Tensor& bih,
                                                      const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w,
                                                      at::IntArrayRef shapes) {
  return lstm_forward_cpu(check_lstm_layer(x, wih, bih, h0, c0, w, shapes), x, h0, c0, w, &wih, &bih);
}

// Returns the gradients of W_ih, b_ih, h0, c0 and w (none for x).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_kru_layer_backward_cpu(
    const at::Tensor& grad_H, const at::Tensor& grad_C, const at::Tensor& x, const at::Tensor& wih,
    const at::Tensor& bih, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w, at::IntArrayRef shapes,
    const at::Tensor& H, const at::Tensor& C) {
  const Plan plan = check_lstm_layer(x, wih, bih, h0, c0, w, shapes);
  const Plan adj = adjoint_plan(plan);
  const long B = x.size(0), T_ = x.size(1), N = plan.n_in, I = x.size(2);
  for (const auto& [t, name] : {std::pair{&grad_H, "grad_H"}, std::pair{&grad_C, "grad_C"}, std::pair{&H, "H"},
                                std::pair{&C, "C"}}) {
    TORCH_CHECK(t->sizes() == at::IntArrayRef({B, T_, N}), "krubench: ", name, " must be (", B, ", ", T_, ", ", N,
                "), got ", t->sizes());
    check_same(x, *t, name);
  }
  at::Tensor gh0 = new_output(h0.sizes(), h0.options()), gc0 = new_output(c0.sizes(), c0.options());
  const long G = w.numel() / plan.wsize;
  at::Tensor gwr = partials(B, G * plan.wsize, x), gwi = partials(B, G * plan.wsize, x);
  at::Tensor gih = partials(B, 4 * N * I, x), gbh = partials(B, 4 * N, x);
  const auto [wr, wi] = products_planes(w, plan, false);
  const auto [awr, awi] = products_planes(w, plan, true);
  dispatch_dtype(w.scalar_type(), [&](auto t, auto c) {
    using T = decltype(t);
    const Products<T> p = products_of<T>(plan, G, wr, wi, &awr, &awi);
    LstmInput<T> in{ptr<T>(x), ptr<T>(wih), ptr<T>(bih), I};
    in.gw = ptr<T>(gih);
    in.gb = ptr<T>(gbh);
    lstm_backward<T, decltype(c)::value>(plan, adj, p, nullptr, ptr<T>(h0), ptr<T>(c0), ptr<T>(H), ptr<T>(C),
                                         ptr<T>(grad_H), ptr<T>(grad_C), B, T_, N, nullptr, ptr<T>(gh0), ptr<T>(gc0),
                                         ptr<T>(gwr), ptr<T>(gwi), &in);
  });
  return {gih.sum(at::IntArrayRef{0, 2}).view({4 * N, I}), gbh.sum(at::IntArrayRef{0, 2}), gh0, gc0,
          combine_planes(gwr.sum(at::IntArrayRef{0, 2}), gwi.sum(at::IntArrayRef{0, 2}), w.is_complex())};
}

}  // namespace
}  // namespace kru

TORCH_LIBRARY_IMPL(krubench, CPU, m) {
  m.impl("lstm_kru_recurrence", &kru::lstm_kru_recurrence_cpu);
  m.impl("lstm_kru_recurrence_backward", &kru::lstm_kru_recurrence_backward_cpu);
  m.impl("lstm_kru_layer", &kru::lstm_kru_layer_cpu);
  m.impl("lstm_kru_layer_backward", &kru::lstm_kru_layer_backward_cpu);
}
