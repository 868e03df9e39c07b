// CPU backend of krubench's Kronecker operators, and the operator schemas (TORCH_LIBRARY).
//
// Layout: batch-minor. A chunk of L batch rows is gathered into planes [n][lane] (real, imaginary),
// so every stage is a vertical multiply-add across the L lanes; chunks run in parallel (at::parallel_for,
// OpenMP). The whole sequence runs in one call: the state of a chunk stays in cache across all steps.
// Backward: a reverse sweep that recomputes each step's stage inputs from the stored h_{t-1}, applies
// the conjugate-transposed factors, and accumulates factor gradients per chunk (reduced once at the end).
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu_layout.h"
#include "kru_plan.h"

namespace kru {
namespace {

// y = factor · x for one stage, x: (pre, q, post) × L lanes -> y: (pre, p, post) × L lanes, any sizes.
// The factor row is the outer loop, so that its entries stay in registers over the groups.
template <typename T, bool CPLX, int Q>
void stage_rows(const Stage& s, const T* __restrict wr, const T* __restrict wi, const T* __restrict xr,
                const T* __restrict xi, T* __restrict yr, T* __restrict yi) {
  const long xstep = s.post * L;
  for (long i = 0; i < s.p; ++i) {
    const T* rowr = wr + s.woff + i * s.q;
    const T* rowi = wi + s.woff + i * s.q;
    for (long a = 0; a < s.pre; ++a)
      for (long r = 0; r < s.post; ++r) {
        const long xo = stage_index(a, 0, r, s.q, s.post) * L, yo = stage_index(a, i, r, s.p, s.post) * L;
#pragma omp simd
        for (int l = 0; l < L; ++l)  // vertical multiply-adds across the batch lanes
          row_dot<T, CPLX, Q>(rowr, rowi, s.q, xr + xo + l, xi + xo + l, xstep, yr[yo + l], yi[yo + l]);
      }
  }
}

// The same for a P × Q factor fixed at compile time: each group's Q inputs are loaded once, as vectors
// of lanes kept in registers, and give all P outputs (the state is read once per stage, not P times).
template <typename T, bool CPLX, int P, int Q>
void stage_groups(const Stage& s, const T* wr, const T* wi, const T* xr, const T* xi, T* yr, T* yi) {
  using V = Lanes<T>;
  const V *XR = as_lanes(xr), *XI = as_lanes(xi);
  V *YR = as_lanes(yr), *YI = as_lanes(yi);
  const T *fr = wr + s.woff, *fi = wi + s.woff;
  const long post = s.post;
  for (long a = 0; a < s.pre; ++a)
    for (long r = 0; r < post; ++r) {
      const long xo = stage_index(a, 0, r, Q, post), yo = stage_index(a, 0, r, P, post);
      V in_r[Q], in_i[Q];
#pragma GCC unroll 16
      for (int j = 0; j < Q; ++j) {
        in_r[j] = XR[xo + j * post];
        in_i[j] = CPLX ? XI[xo + j * post] : V{};
      }
#pragma GCC unroll 16
      for (int i = 0; i < P; ++i)
        row_dot<V, CPLX, Q, T>(fr + i * Q, fi + i * Q, Q, in_r, in_i, 1, YR[yo + i * post], YI[yo + i * post]);
    }
}

template <typename T, bool CPLX>
void stage(const Stage& s, const T* wr, const T* wi, const T* xr, const T* xi, T* yr, T* yi) {
  if (s.p == s.q) switch (s.q) {  // the sizes the model's merging produces
      case 2: return stage_groups<T, CPLX, 2, 2>(s, wr, wi, xr, xi, yr, yi);
      case 4: return stage_groups<T, CPLX, 4, 4>(s, wr, wi, xr, xi, yr, yi);
      case 8: return stage_groups<T, CPLX, 8, 8>(s, wr, wi, xr, xi, yr, yi);
      case 16: return stage_rows<T, CPLX, 16>(s, wr, wi, xr, xi, yr, yi);
    }
  return stage_rows<T, CPLX, 0>(s, wr, wi, xr, xi, yr, yi);
}

// g[(i, j)] += Σ_{a, r} dy[(a, i, r)] · conj(x[(a, j, r)]) per lane: the gradient of stage s's factor.
template <typename T, bool CPLX>
void factor_grad_entries(const Stage& s, const T* __restrict dyr, const T* __restrict dyi, const T* __restrict xr,
                         const T* __restrict xi, T* __restrict gr, T* __restrict gi) {
  for (long i = 0; i < s.p; ++i)
    for (long j = 0; j < s.q; ++j) {
      T rr[L] = {}, ii[L] = {}, ri[L] = {}, ir[L] = {};
      for (long a = 0; a < s.pre; ++a)
        for (long r = 0; r < s.post; ++r) {
          const long yo = stage_index(a, i, r, s.p, s.post) * L, xo = stage_index(a, j, r, s.q, s.post) * L;
#pragma omp simd
          for (int l = 0; l < L; ++l) cmac4<T, CPLX>(dyr[yo + l], dyi[yo + l], xr[xo + l], xi[xo + l], rr[l], ii[l], ri[l], ir[l]);
        }
      const long go = (s.woff + i * s.q + j) * L;
#pragma omp simd
      for (int l = 0; l < L; ++l) {
        gr[go + l] += rr[l] + ii[l];
        gi[go + l] += ir[l] - ri[l];
      }
    }
}

// The same for a P × Q factor fixed at compile time: one pass over the groups per factor row i, with
// the Q entries of the row accumulated in registers (x is read P times, dy once).
template <typename T, bool CPLX, int P, int Q>
void factor_grad_rows(const Stage& s, const T* dyr, const T* dyi, const T* xr, const T* xi, T* gr, T* gi) {
  using V = Lanes<T>;
  const V *DR = as_lanes(dyr), *DI = as_lanes(dyi), *XR = as_lanes(xr), *XI = as_lanes(xi);
  V *GR = as_lanes(gr), *GI = as_lanes(gi);
  const long post = s.post;
  for (int i = 0; i < P; ++i) {
    V rr[Q] = {}, ii[Q] = {}, ri[Q] = {}, ir[Q] = {};
    for (long a = 0; a < s.pre; ++a)
      for (long r = 0; r < post; ++r) {
        const long yo = stage_index(a, i, r, P, post), xo = stage_index(a, 0, r, Q, post);
        const V dr = DR[yo], di = CPLX ? DI[yo] : V{};
#pragma GCC unroll 16
        for (int j = 0; j < Q; ++j)
          cmac4<V, CPLX>(dr, di, XR[xo + j * post], CPLX ? XI[xo + j * post] : V{}, rr[j], ii[j], ri[j], ir[j]);
      }
#pragma GCC unroll 16
    for (int j = 0; j < Q; ++j) {
      GR[s.woff + i * Q + j] += rr[j] + ii[j];
      GI[s.woff + i * Q + j] += ir[j] - ri[j];
    }
  }
}

template <typename T, bool CPLX>
void accumulate_factor_grad(const Stage& s, const T* dyr, const T* dyi, const T* xr, const T* xi, T* gr, T* gi) {
  if (s.p == s.q && s.q == 2) return factor_grad_rows<T, CPLX, 2, 2>(s, dyr, dyi, xr, xi, gr, gi);
  if (s.p == s.q && s.q == 4) return factor_grad_rows<T, CPLX, 4, 4>(s, dyr, dyi, xr, xi, gr, gi);
  return factor_grad_entries<T, CPLX>(s, dyr, dyi, xr, xi, gr, gi);
}

// Forward through the first `count` stages (all by default) from slot 0; returns the slot holding the
// result. keep_inputs: slot k keeps the input of stage k (for the backward pass); otherwise slots 0
// and 1 alternate.
template <typename T, bool CPLX>
long run_stages(const Plan& plan, const T* wr, const T* wi, Scratch<T>& st, bool keep_inputs, long count = -1) {
  long cur = 0;
  if (count < 0) count = static_cast<long>(plan.stages.size());
  for (long k = 0; k < count; ++k) {
    const long next = keep_inputs ? k + 1 : 1 - cur;
    stage<T, CPLX>(plan.stages[k], wr, wi, st.re(cur), st.im(cur), st.re(next), st.im(next));
    cur = next;
  }
  return cur;
}

// Backward through every stage, given the stage inputs kept by run_stages: slot d holds ∂L/∂(result),
// slot e is free. Adds each factor's gradient to (gr, gi); returns the slot holding ∂L/∂(input).
template <typename T, bool CPLX>
long backprop_stages(const Plan& plan, const Plan& adj, const T* awr, const T* awi, Scratch<T>& st, long d, long e,
                     T* gr, T* gi) {
  for (long k = static_cast<long>(plan.stages.size()) - 1; k >= 0; --k) {
    accumulate_factor_grad<T, CPLX>(plan.stages[k], st.re(d), st.im(d), st.re(k), st.im(k), gr, gi);
    stage<T, CPLX>(adj.stages[k], awr, awi, st.re(d), st.im(d), st.re(e), st.im(e));
    std::swap(d, e);
  }
  return d;
}

template <typename T, bool CPLX, int NL>
void recurrence_forward(const Plan& plan, const T* wr, const T* wi, const T* u, const T* h0, const T* bias, T* H,
                        long B, long steps) {
  constexpr int C = CPLX ? 2 : 1;
  const long N = plan.n_in;
  at::parallel_for(0, (B + L - 1) / L, 1, [&](long c0, long c1) {
    Scratch<T> st(3, N);  // slots 0, 1: the stages' ping-pong (h_{t-1} in 0); 2: u_t
    T *ur = st.re(2), *ui = st.im(2), *hr = st.re(0), *hi = st.im(0);
    for (long c = c0; c < c1; ++c) {
      const long b0 = c * L, lanes = std::min<long>(L, B - b0);
      gather<T, CPLX>(h0 + b0 * N * C, N, lanes, N, hr, hi);
      for (long t = 0; t < steps; ++t) {
        const long z = run_stages<T, CPLX>(plan, wr, wi, st, false);  // W h_{t-1}
        const T *zr = st.re(z), *zi = st.im(z);
        gather<T, CPLX>(u + (b0 * steps + t) * N * C, steps * N, lanes, N, ur, ui);
        for (long n = 0; n < N; ++n) {  // h_t = σ(W h_{t-1} + u_t), into slot 0; padding lanes stay 0
#pragma omp simd
          for (int l = 0; l < L; ++l) {
            const long o = n * L + l;
            nl_forward<NL, T, CPLX>(zr[o] + ur[o], zi[o] + ui[o], bias[n], hr[o], hi[o]);
          }
        }
        scatter<T, CPLX>(hr, hi, lanes, N, H + (b0 * steps + t) * N * C, steps * N);
      }
    }
  });
}

// Writes ∂L/∂u into gu, ∂L/∂h0, and per chunk c the partial factor gradients gw{r,i}[c] (wsize × L) and
// modReLU bias gradients gb[c] (N × L); the caller sums the partials once. Reads H and never u: the
// nonlinearity's derivative comes from h_t (nl_backward). gu may be gH itself: each step reads its rows
// of gH before it writes them.
template <typename T, bool CPLX, int NL>
void recurrence_backward(const Plan& plan, const Plan& adj, const T* wr, const T* wi, const T* awr, const T* awi,
                         const T* h0, const T* H, const T* gH, const T* bias, long B, long steps, T* gu, T* gh0,
                         T* gwr, T* gwi, T* gb) {
  constexpr int C = CPLX ? 2 : 1;
  const long N = plan.n_in, F = plan.stages.size();
  at::parallel_for(0, (B + L - 1) / L, 1, [&](long c0, long c1) {
    // slots 0..F-1: the stage inputs of step t (0: h_{t-1}); F: h_t; F+1: ∂L/∂z_t, then back through the
    // stages; F+2: scratch of the stages; F+3: ∂L/∂h_t from the loss; F+4: ∂L/∂h_t in all
    Scratch<T> st(F + 5, N);
    const long h = F, d = F + 1, e = F + 2, gl = F + 3, g = F + 4;
    for (long c = c0; c < c1; ++c) {
      const long b0 = c * L, lanes = std::min<long>(L, B - b0);
      T *cwr = gwr + c * plan.wsize * L, *cwi = gwi + c * plan.wsize * L, *cb = gb + c * N * L;
      std::fill(st.re(g), st.re(g) + 2 * st.m, T(0));
      if (steps > 0) gather<T, CPLX>(H + (b0 * steps + steps - 1) * N * C, steps * N, lanes, N, st.re(h), st.im(h));
      for (long t = steps - 1; t >= 0; --t) {
        if (t > 0) gather<T, CPLX>(H + (b0 * steps + t - 1) * N * C, steps * N, lanes, N, st.re(0), st.im(0));
        else gather<T, CPLX>(h0 + b0 * N * C, N, lanes, N, st.re(0), st.im(0));
        run_stages<T, CPLX>(plan, wr, wi, st, true, F - 1);  // recompute the stage inputs of step t
        const long row = b0 * steps + t;
        gather<T, CPLX>(gH + row * N * C, steps * N, lanes, N, st.re(gl), st.im(gl));
        const T *hr = st.re(h), *hi = st.im(h), *glr = st.re(gl), *gli = st.im(gl), *gr = st.re(g), *gi = st.im(g);
        T *dr = st.re(d), *di = st.im(d);
        for (long n = 0; n < N; ++n) {
#pragma omp simd
          for (int l = 0; l < L; ++l) {
            const long o = n * L + l;
            nl_backward<NL, T, CPLX>(hr[o], hi[o], bias[n], gr[o] + glr[o], gi[o] + gli[o], dr[o], di[o], cb[o]);
          }
        }
        scatter<T, CPLX>(dr, di, lanes, N, gu + row * N * C, steps * N);
        const long dh = backprop_stages<T, CPLX>(plan, adj, awr, awi, st, d, e, cwr, cwi);
        std::copy(st.re(dh), st.re(dh) + 2 * st.m, st.re(g));  // ∂L/∂h_{t-1} (re and im planes are adjacent)
        std::copy(st.re(0), st.re(0) + 2 * st.m, st.re(h));    // h_{t-1}: the next step's h_t
      }
      scatter<T, CPLX>(st.re(g), st.im(g), lanes, N, gh0 + b0 * N * C, N);
    }
  });
}

template <typename T, bool CPLX>
void matvec_forward(const Plan& plan, const T* wr, const T* wi, const T* x, T* y, long M) {
  constexpr int C = CPLX ? 2 : 1;
  at::parallel_for(0, (M + L - 1) / L, 1, [&](long c0, long c1) {
    Scratch<T> st(2, plan.max_size);
    for (long c = c0; c < c1; ++c) {
      const long m0 = c * L, lanes = std::min<long>(L, M - m0);
      gather<T, CPLX>(x + m0 * plan.n_in * C, plan.n_in, lanes, plan.n_in, st.re(0), st.im(0));
      const long z = run_stages<T, CPLX>(plan, wr, wi, st, false);
      scatter<T, CPLX>(st.re(z), st.im(z), lanes, plan.n_out, y + m0 * plan.n_out * C, plan.n_out);
    }
  });
}

template <typename T, bool CPLX>
void matvec_backward(const Plan& plan, const Plan& adj, const T* wr, const T* wi, const T* awr, const T* awi,
                     const T* x, const T* gy, long M, T* gx, T* gwr, T* gwi) {
  constexpr int C = CPLX ? 2 : 1;
  const long F = plan.stages.size();
  at::parallel_for(0, (M + L - 1) / L, 1, [&](long c0, long c1) {
    Scratch<T> st(F + 3, plan.max_size);
    const long d = F + 1, e = F + 2;
    for (long c = c0; c < c1; ++c) {
      const long m0 = c * L, lanes = std::min<long>(L, M - m0);
      gather<T, CPLX>(x + m0 * plan.n_in * C, plan.n_in, lanes, plan.n_in, st.re(0), st.im(0));
      run_stages<T, CPLX>(plan, wr, wi, st, true);
      gather<T, CPLX>(gy + m0 * plan.n_out * C, plan.n_out, lanes, plan.n_out, st.re(d), st.im(d));
      const long dx = backprop_stages<T, CPLX>(plan, adj, awr, awi, st, d, e, gwr + c * plan.wsize * L,
                                               gwi + c * plan.wsize * L);
      scatter<T, CPLX>(st.re(dx), st.im(dx), lanes, plan.n_in, gx + m0 * plan.n_in * C, plan.n_in);
    }
  });
}

template <typename T>
T* ptr(const at::Tensor& t) { return static_cast<T*>(t.data_ptr()); }

// Partial sums of shape (chunks, size, L) for each chunk of L rows of a batch of `rows`.
at::Tensor partials(long rows, long size, const at::Tensor& like) {
  return at::zeros({(rows + L - 1) / L, size, L}, like.options().dtype(c10::toRealValueType(like.scalar_type())));
}

at::Tensor kru_recurrence_cpu(const at::Tensor& u, const at::Tensor& h0, const at::Tensor& w, at::IntArrayRef shapes,
                              c10::string_view nonlinearity, const at::Tensor& bias) {
  const Plan plan = check_recurrence(u, h0, w, shapes, bias);
  at::Tensor wr, wi;
  std::tie(wr, wi) = factor_planes(w, plan, false);
  at::Tensor H = new_output(u.sizes(), u.options());
  dispatch_dtype(u.scalar_type(), [&](auto t, auto c) {
    dispatch_nonlinearity(nonlinearity, [&](auto nl) {
      using T = decltype(t);
      recurrence_forward<T, decltype(c)::value, decltype(nl)::value>(plan, ptr<T>(wr), ptr<T>(wi), ptr<T>(u),
                                                                     ptr<T>(h0), ptr<T>(bias), ptr<T>(H), u.size(0),
                                                                     u.size(1));
    });
  });
  return H;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kru_recurrence_backward_cpu(
    const at::Tensor& grad_H, const at::Tensor& H, const at::Tensor& h0, const at::Tensor& w, at::IntArrayRef shapes,
    c10::string_view nonlinearity, const at::Tensor& bias, const at::Tensor& grad_u) {
  const Plan plan = check_recurrence_backward(grad_H, H, h0, w, shapes, bias, grad_u);
  const Plan adj = adjoint_plan(plan);
  at::Tensor wr, wi;
  std::tie(wr, wi) = factor_planes(w, plan, false);
  at::Tensor awr, awi;
  std::tie(awr, awi) = factor_planes(w, plan, true);
  const long B = H.size(0);
  at::Tensor gh0 = new_output(h0.sizes(), h0.options());
  at::Tensor gwr = partials(B, plan.wsize, H), gwi = partials(B, plan.wsize, H), gb = partials(B, plan.n_in, H);
  dispatch_dtype(H.scalar_type(), [&](auto t, auto c) {
    dispatch_nonlinearity(nonlinearity, [&](auto nl) {
      using T = decltype(t);
      recurrence_backward<T, decltype(c)::value, decltype(nl)::value>(
          plan, adj, ptr<T>(wr), ptr<T>(wi), ptr<T>(awr), ptr<T>(awi), ptr<T>(h0), ptr<T>(H), ptr<T>(grad_H),
          ptr<T>(bias), B, H.size(1), ptr<T>(grad_u), ptr<T>(gh0), ptr<T>(gwr), ptr<T>(gwi), ptr<T>(gb));
    });
  });
  at::Tensor gw = combine_planes(gwr.sum({0, 2}), gwi.sum({0, 2}), H.is_complex());
  return {gh0, gw, gb.sum({0, 2})};
}

at::Tensor kron_matvec_cpu(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef shapes) {
  const Plan plan = check_matvec(x, w, shapes);
  at::Tensor wr, wi;
  std::tie(wr, wi) = factor_planes(w, plan, false);
  at::Tensor y = new_output({x.size(0), plan.n_out}, x.options());
  dispatch_dtype(x.scalar_type(), [&](auto t, auto c) {
    using T = decltype(t);
    matvec_forward<T, decltype(c)::value>(plan, ptr<T>(wr), ptr<T>(wi), ptr<T>(x), ptr<T>(y), x.size(0));
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> kron_matvec_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                            const at::Tensor& w, at::IntArrayRef shapes) {
  const Plan plan = check_matvec(x, w, shapes);
  check_same(x, grad_y, "grad_y");
  const Plan adj = adjoint_plan(plan);
  at::Tensor wr, wi;
  std::tie(wr, wi) = factor_planes(w, plan, false);
  at::Tensor awr, awi;
  std::tie(awr, awi) = factor_planes(w, plan, true);
  const long M = x.size(0);
  at::Tensor gx = new_output(x.sizes(), x.options());
  at::Tensor gwr = partials(M, plan.wsize, x), gwi = partials(M, plan.wsize, x);
  dispatch_dtype(x.scalar_type(), [&](auto t, auto c) {
    using T = decltype(t);
    matvec_backward<T, decltype(c)::value>(plan, adj, ptr<T>(wr), ptr<T>(wi), ptr<T>(awr), ptr<T>(awi), ptr<T>(x),
                                           ptr<T>(grad_y), M, ptr<T>(gx), ptr<T>(gwr), ptr<T>(gwi));
  });
  return {gx, combine_planes(gwr.sum({0, 2}), gwi.sum({0, 2}), x.is_complex())};
}

}  // namespace
}  // namespace kru

// The schemas are defined here, once; the CUDA library only adds CUDA implementations.
TORCH_LIBRARY(krubench, m) {
  m.def("kron_matvec(Tensor x, Tensor w, int[] shapes) -> Tensor");
  m.def("kron_matvec_backward(Tensor grad_y, Tensor x, Tensor w, int[] shapes) -> (Tensor, Tensor)");
  m.def("kru_recurrence(Tensor u, Tensor h0, Tensor w, int[] shapes, str nonlinearity, Tensor bias) -> Tensor");
  // Writes ∂L/∂u into grad_u, which may be grad_H itself (the caller's choice when it owns grad_H);
  // returns the gradients of h0, w and bias.
  m.def("kru_recurrence_backward(Tensor grad_H, Tensor H, Tensor h0, Tensor w, int[] shapes, str nonlinearity, "
        "Tensor bias, Tensor(a!) grad_u) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(krubench, CPU, m) {
  m.impl("kron_matvec", &kru::kron_matvec_cpu);
  m.impl("kron_matvec_backward", &kru::kron_matvec_backward_cpu);
  m.impl("kru_recurrence", &kru::kru_recurrence_cpu);
  m.impl("kru_recurrence_backward", &kru::kru_recurrence_backward_cpu);
}
