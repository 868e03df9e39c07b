// The CPU kernels' shared parts: a Kronecker stage and its factor gradient on the batch-minor layout, the stages
// forward and backward, small affine maps on lanes (the KRU layer's and LSTM+KRU's input maps and read-out).
//
// Layout: batch-minor. A chunk of L batch rows is gathered into planes [n][lane] (real, imaginary),
// so every stage is a vertical multiply-add across the L lanes; chunks run in parallel (at::parallel_for,
// OpenMP). The whole sequence runs in one call: the state of a chunk stays in cache across all steps.
// Backward: a reverse sweep that recomputes each step's stage inputs from the stored h_{t-1}, applies
// the conjugate-transposed factors, and accumulates factor gradients per chunk (reduced once at the end).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <optional>
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
        const long xo = stage_index<long>(a, 0, r, s.q, s.post) * L, yo = stage_index<long>(a, i, r, s.p, s.post) * L;
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
      const long xo = stage_index<long>(a, 0, r, Q, post), yo = stage_index<long>(a, 0, r, P, post);
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
          const long yo = stage_index<long>(a, i, r, s.p, s.post) * L, xo = stage_index<long>(a, j, r, s.q, s.post) * L;
#pragma omp simd
          for (int l = 0; l < L; ++l)
            cmac4<T, CPLX>(dyr[yo + l], dyi[yo + l], xr[xo + l], xi[xo + l], rr[l], ii[l], ri[l], ir[l]);
        }
      const long go = (s.woff + i * s.q + j) * L;
#pragma omp simd
      for (int l = 0; l < L; ++l) {
        gr[go + l] += rr[l] + ii[l];
        gi[go + l] += ir[l] - ri[l];
      }
    }
}

// The same for a P × Q factor fixed at compile time (P even): one pass over the groups per two factor
// rows, the 2Q entries accumulated in registers (x is read P/2 times, dy once).
template <typename T, bool CPLX, int P, int Q>
void factor_grad_rows(const Stage& s, const T* dyr, const T* dyi, const T* xr, const T* xi, T* gr, T* gi) {
  static_assert(P % 2 == 0, "rows are taken in pairs");
  using V = Lanes<T>;
  const V *DR = as_lanes(dyr), *DI = as_lanes(dyi), *XR = as_lanes(xr), *XI = as_lanes(xi);
  V *GR = as_lanes(gr), *GI = as_lanes(gi);
  const long post = s.post;
  for (int i = 0; i < P; i += 2) {
    V re[2][Q] = {}, im[2][Q] = {};
    for (long a = 0; a < s.pre; ++a)
      for (long r = 0; r < post; ++r) {
        const long yo = stage_index<long>(a, i, r, P, post), xo = stage_index<long>(a, 0, r, Q, post);
        const V d0r = DR[yo], d0i = CPLX ? DI[yo] : V{}, d1r = DR[yo + post], d1i = CPLX ? DI[yo + post] : V{};
#pragma GCC unroll 16
        for (int j = 0; j < Q; ++j) {
          const V x_r = XR[xo + j * post], x_i = CPLX ? XI[xo + j * post] : V{};
          cmac_conj<V, CPLX>(d0r, d0i, x_r, x_i, re[0][j], im[0][j]);
          cmac_conj<V, CPLX>(d1r, d1i, x_r, x_i, re[1][j], im[1][j]);
        }
      }
#pragma GCC unroll 16
    for (int j = 0; j < Q; ++j)
      for (int k = 0; k < 2; ++k) {
        GR[s.woff + (i + k) * Q + j] += re[k][j];
        GI[s.woff + (i + k) * Q + j] += im[k][j];
      }
  }
}

template <typename T, bool CPLX>
void accumulate_factor_grad(const Stage& s, const T* dyr, const T* dyi, const T* xr, const T* xi, T* gr, T* gi) {
  if (s.p == s.q && s.q == 2) return factor_grad_rows<T, CPLX, 2, 2>(s, dyr, dyi, xr, xi, gr, gi);
  if (s.p == s.q && s.q == 4) return factor_grad_rows<T, CPLX, 4, 4>(s, dyr, dyi, xr, xi, gr, gi);
  return factor_grad_entries<T, CPLX>(s, dyr, dyi, xr, xi, gr, gi);
}

// Forward through the first `count` stages (all by default) from slot 0, or from the planes (x0r, x0i)
// when given; returns the slot holding the result. keep_inputs: slot k ≥ 1 keeps the input of stage k
// (for the backward pass); otherwise slots 0 and 1 alternate.
template <typename T, bool CPLX>
long run_stages(const Plan& plan, const T* wr, const T* wi, Scratch<T>& st, bool keep_inputs, long count = -1,
                const T* x0r = nullptr, const T* x0i = nullptr) {
  long cur = 0;
  if (count < 0) count = static_cast<long>(plan.stages.size());
  for (long k = 0; k < count; ++k) {
    const long next = keep_inputs ? k + 1 : 1 - cur;
    const bool given = k == 0 && x0r != nullptr;
    stage<T, CPLX>(plan.stages[k], wr, wi, given ? x0r : st.re(cur), given ? x0i : st.im(cur), st.re(next),
                   st.im(next));
    cur = next;
  }
  return cur;
}

// Backward through every stage, given the stage inputs kept by run_stages (stage 0's: the planes x0r,
// x0i): slot d holds ∂L/∂(result), slot e is free. Adds each factor's gradient to (gr, gi); returns the
// slot holding ∂L/∂(input).
template <typename T, bool CPLX>
long backprop_stages(const Plan& plan, const Plan& adj, const T* awr, const T* awi, Scratch<T>& st, long d, long e,
                     T* gr, T* gi, const T* x0r, const T* x0i) {
  for (long k = static_cast<long>(plan.stages.size()) - 1; k >= 0; --k) {
    const T *xr = k == 0 ? x0r : st.re(k), *xi = k == 0 ? x0i : st.im(k);
    accumulate_factor_grad<T, CPLX>(plan.stages[k], st.re(d), st.im(d), xr, xi, gr, gi);
    stage<T, CPLX>(adj.stages[k], awr, awi, st.re(d), st.im(d), st.re(e), st.im(e));
    std::swap(d, e);
  }
  return d;
}

// R rows of y = W x + b for L lanes, the sums in registers: R·S independent chains of multiply-adds
// (S column phases per row, summed at the end), each x_c loaded once for the R rows. A sum kept in a
// T[L] array went through memory at every column: the read-out of a copy T=1000 step was a chain of
// store-reload-FMA latencies (BENCHMARKS.md).
template <typename T, int R, int S>
void lanes_affine_rows(const T* __restrict w, const T* __restrict b, long r, long cols, const Lanes<T>* __restrict X,
                       Lanes<T>* __restrict Y) {
  using V = Lanes<T>;
  V acc[R][S];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
    for (int s = 0; s < S; ++s) acc[i][s] = V{} + (s == 0 && b ? b[r + i] : T(0));
  long c = 0;
  for (; c + S <= cols; c += S)
#pragma GCC unroll 16
    for (int s = 0; s < S; ++s) {
      const V xc = X[c + s];
#pragma GCC unroll 16
      for (int i = 0; i < R; ++i) acc[i][s] += w[(r + i) * cols + c + s] * xc;
    }
  for (; c < cols; ++c)
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) acc[i][0] += w[(r + i) * cols + c] * X[c];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
    V sum = acc[i][0];
#pragma GCC unroll 16
    for (int s = 1; s < S; ++s) sum += acc[i][s];
    Y[r + i] = sum;
  }
}

// y = W x + b for L lanes: W (rows, cols), b (rows) or null, x (cols, L), y (rows, L). Eight chains
// whatever the shape: 8 rows at a time, the rest 4, 2, 1 rows with 2, 4, 8 column phases.
template <typename T>
void lanes_affine(const T* __restrict w, const T* __restrict b, long rows, long cols, const T* __restrict x,
                  T* __restrict y) {
  const Lanes<T>* X = as_lanes(x);
  Lanes<T>* Y = as_lanes(y);
  long r = 0;
  for (; r + 8 <= rows; r += 8) lanes_affine_rows<T, 8, 1>(w, b, r, cols, X, Y);
  if (r + 4 <= rows) lanes_affine_rows<T, 4, 2>(w, b, r, cols, X, Y), r += 4;
  if (r + 2 <= rows) lanes_affine_rows<T, 2, 4>(w, b, r, cols, X, Y), r += 2;
  if (r < rows) lanes_affine_rows<T, 1, 8>(w, b, r, cols, X, Y);
}

// R rows × Q columns of gw (rows, cols, L) += Σ_s d_s x_sᵀ over `count` steps, summed in registers.
template <typename T, int R, int Q>
void affine_grad_tile(const Lanes<T>* __restrict D, long dstep, const Lanes<T>* __restrict X, long xstep, long cols,
                      long count, long r, long c, Lanes<T>* __restrict G) {
  using V = Lanes<T>;
  V acc[R][Q];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < Q; ++j) acc[i][j] = G[(r + i) * cols + c + j];
  for (long s = 0; s < count; ++s) {
    V xv[Q];
#pragma GCC unroll 16
    for (int j = 0; j < Q; ++j) xv[j] = X[s * xstep + c + j];
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const V dv = D[s * dstep + r + i];
#pragma GCC unroll 16
      for (int j = 0; j < Q; ++j) acc[i][j] += dv * xv[j];
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < Q; ++j) G[(r + i) * cols + c + j] = acc[i][j];
}

template <typename T, int R>
void affine_grad_rows(const Lanes<T>* D, long dstep, const Lanes<T>* X, long xstep, long cols, long count, long r,
                      Lanes<T>* G) {
  long c = 0;
  for (; c + 4 <= cols; c += 4) affine_grad_tile<T, R, 4>(D, dstep, X, xstep, cols, count, r, c, G);
  if (c + 2 <= cols) affine_grad_tile<T, R, 2>(D, dstep, X, xstep, cols, count, r, c, G), c += 2;
  if (c < cols) affine_grad_tile<T, R, 1>(D, dstep, X, xstep, cols, count, r, c, G);
}

// The gradients of lanes_affine's W and b, per lane (the partials a chunk sums), over `count` steps:
// gw (rows, cols, L) += Σ_s d_s x_sᵀ, gb (rows, L) += Σ_s d_s, with ∂L/∂y of step s at d + s·dstep (rows, L)
// and its input at x + s·xstep (cols, L). A block of steps at a time: step by step, every element of gw
// was a load, one multiply-add and a store (store-bound; BENCHMARKS.md).
template <typename T>
void lanes_affine_grad(const T* d, long dstep, long rows, const T* x, long xstep, long cols, long count, T* gw, T* gb) {
  const Lanes<T>*D = as_lanes(d), *X = as_lanes(x);
  Lanes<T>*G = as_lanes(gw), *GB = as_lanes(gb);
  const long ds = dstep / L, xs = xstep / L;  // in vectors of lanes
  long r = 0;
  for (; r + 2 <= rows; r += 2) affine_grad_rows<T, 2>(D, ds, X, xs, cols, count, r, G);
  if (r < rows) affine_grad_rows<T, 1>(D, ds, X, xs, cols, count, r, G);
  for (r = 0; r < rows; ++r) {
    Lanes<T> sum = GB[r];
    for (long s = 0; s < count; ++s) sum += D[s * ds + r];
    GB[r] = sum;
  }
}

template <typename T>
T* ptr(const at::Tensor& t) { return static_cast<T*>(t.data_ptr()); }

// Partial sums of shape (chunks, size, L) for each chunk of L rows of a batch of `rows`.
inline at::Tensor partials(long rows, long size, const at::Tensor& like) {
  return at::zeros({(rows + L - 1) / L, size, L}, like.options().dtype(c10::toRealValueType(like.scalar_type())));
}

}  // namespace
}  // namespace kru
