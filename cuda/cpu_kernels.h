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

// R outputs of a large factor's stage for one group (a, r), rows fr, fi of length q: the R sums of each plane
// in registers (independent chains), each input vector loaded once for the R rows. stage_rows' sums over q,
// one output's lanes at a time, ran at 3 GFLOP/s on PTB's 137×137 (BENCHMARKS.md "Large factors on the CPU").
template <typename T, bool CPLX, int R>
void stage_tile(const T* fr, const T* fi, long q, const Lanes<T>* XR, const Lanes<T>* XI, long step, Lanes<T>* YR,
                Lanes<T>* YI) {
  using V = Lanes<T>;
  V ar[R], ai[R];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) ar[i] = ai[i] = V{};
  for (long j = 0; j < q; ++j) {
    const V xr = XR[j * step], xi = CPLX ? XI[j * step] : V{};
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const T w_r = fr[i * q + j];
      ar[i] += w_r * xr;
      if (CPLX) {
        const T w_i = fi[i * q + j];
        ar[i] -= w_i * xi;
        ai[i] += w_r * xi;
        ai[i] += w_i * xr;
      }
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
    YR[i * step] = ar[i];
    if (CPLX) YI[i * step] = ai[i];
  }
}

// y = factor · x for a factor larger than the compile-time cases: R rows at a time (8 sums of lanes in registers:
// 4 rows × 2 planes when complex, 8 rows when real), the last rows one at a time.
template <typename T, bool CPLX>
void stage_large(const Stage& s, const T* wr, const T* wi, const T* xr, const T* xi, T* yr, T* yi) {
  constexpr int R = CPLX ? 4 : 8;
  const Lanes<T> *XR = as_lanes(xr), *XI = as_lanes(xi);
  Lanes<T> *YR = as_lanes(yr), *YI = as_lanes(yi);
  const T *fr = wr + s.woff, *fi = wi + s.woff;
  const long q = s.q, post = s.post;
  for (long a = 0; a < s.pre; ++a)
    for (long r = 0; r < post; ++r) {
      const long xo = stage_index<long>(a, 0, r, q, post), yo = stage_index<long>(a, 0, r, s.p, post);
      long i = 0;
      for (; i + R <= s.p; i += R)
        stage_tile<T, CPLX, R>(fr + i * q, fi + i * q, q, XR + xo, XI + xo, post, YR + yo + i * post, YI + yo + i * post);
      for (; i < s.p; ++i)
        stage_tile<T, CPLX, 1>(fr + i * q, fi + i * q, q, XR + xo, XI + xo, post, YR + yo + i * post, YI + yo + i * post);
    }
}

// Factors up to this size take the kernels above; larger ones stage_large.
constexpr int kLargeFactor = 16;

template <typename T, bool CPLX>
void stage(const Stage& s, const T* wr, const T* wi, const T* xr, const T* xi, T* yr, T* yi) {
  if (s.q > kLargeFactor) return stage_large<T, CPLX>(s, wr, wi, xr, xi, yr, yi);
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
// Without `last_grad` the last factor's gradient is left to the caller (LastFactorGrad).
template <typename T, bool CPLX>
long backprop_stages(const Plan& plan, const Plan& adj, const T* awr, const T* awi, Scratch<T>& st, long d, long e,
                     T* gr, T* gi, const T* x0r, const T* x0i, bool last_grad = true) {
  const long F = static_cast<long>(plan.stages.size());
  for (long k = F - 1; k >= 0; --k) {
    const T *xr = k == 0 ? x0r : st.re(k), *xi = k == 0 ? x0i : st.im(k);
    if (k + 1 < F || last_grad) accumulate_factor_grad<T, CPLX>(plan.stages[k], st.re(d), st.im(d), xr, xi, gr, gi);
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

// Where the vectors d_s (rows) and x_s (cols) of lanes_outer_grad are: element i of d_s at D[s·step + i·stride].
struct Strides {
  long step, stride;
};

// R rows × Q columns of g (rows, cols, L) += Σ_s d_s x_sᴴ over `count` steps (d_s x_sᵀ when real), summed in
// registers, vectors of lanes. The imaginary parts (DI, XI, GI) are read only when complex.
template <typename T, bool CPLX, int R, int Q>
void outer_grad_tile(const Lanes<T>* __restrict DR, const Lanes<T>* __restrict DI, Strides ds,
                     const Lanes<T>* __restrict XR, const Lanes<T>* __restrict XI, Strides xs, long cols, long count,
                     long r, long c, Lanes<T>* __restrict GR, Lanes<T>* __restrict GI) {
  using V = Lanes<T>;
  V ar[R][Q], ai[R][Q];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < Q; ++j) ar[i][j] = ai[i][j] = V{};  // the block's sum, then added to g: less rounding
  for (long s = 0; s < count; ++s) {
    V xr[Q], xi[Q];
#pragma GCC unroll 16
    for (int j = 0; j < Q; ++j) {
      xr[j] = XR[s * xs.step + (c + j) * xs.stride];
      xi[j] = CPLX ? XI[s * xs.step + (c + j) * xs.stride] : V{};
    }
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const long at = s * ds.step + (r + i) * ds.stride;
      const V dr = DR[at], di = CPLX ? DI[at] : V{};
#pragma GCC unroll 16
      for (int j = 0; j < Q; ++j) {
        ar[i][j] += dr * xr[j];
        if (CPLX) {  // d · conj(x)
          ar[i][j] += di * xi[j];
          ai[i][j] += di * xr[j];
          ai[i][j] -= dr * xi[j];
        }
      }
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < Q; ++j) {
      GR[(r + i) * cols + c + j] += ar[i][j];
      if (CPLX) GI[(r + i) * cols + c + j] += ai[i][j];
    }
}

template <typename T, bool CPLX, int R>
void outer_grad_rows(const Lanes<T>* DR, const Lanes<T>* DI, Strides ds, const Lanes<T>* XR, const Lanes<T>* XI,
                     Strides xs, long cols, long count, long r, Lanes<T>* GR, Lanes<T>* GI) {
  constexpr int Q = CPLX ? 2 : 4;  // 8 sums in registers
  long c = 0;
  for (; c + Q <= cols; c += Q) outer_grad_tile<T, CPLX, R, Q>(DR, DI, ds, XR, XI, xs, cols, count, r, c, GR, GI);
  for (; c < cols; ++c) outer_grad_tile<T, CPLX, R, 1>(DR, DI, ds, XR, XI, xs, cols, count, r, c, GR, GI);
}

// g (rows, cols, L) += Σ_s d_s x_sᴴ (x_sᵀ when real) per lane over `count` steps, d_s's and x_s's elements (vectors
// of L lanes) where ds and xs say (in vectors) from (dr, di) and (xr, xi): register tiles of 2 rows, each d_s and
// x_s loaded once a tile.
template <typename T, bool CPLX>
void lanes_outer_grad(const T* dr, const T* di, Strides ds, long rows, const T* xr, const T* xi, Strides xs, long cols,
                      long count, T* gr, T* gi) {
  const Lanes<T>*DR = as_lanes(dr), *DI = as_lanes(di), *XR = as_lanes(xr), *XI = as_lanes(xi);
  Lanes<T>*GR = as_lanes(gr), *GI = as_lanes(gi);
  long r = 0;
  for (; r + 2 <= rows; r += 2) outer_grad_rows<T, CPLX, 2>(DR, DI, ds, XR, XI, xs, cols, count, r, GR, GI);
  if (r < rows) outer_grad_rows<T, CPLX, 1>(DR, DI, ds, XR, XI, xs, cols, count, r, GR, GI);
}

// The gradients of lanes_affine's W and b, per lane (the partials a chunk sums), over `count` steps:
// gw (rows, cols, L) += Σ_s d_s x_sᵀ, gb (rows, L) += Σ_s d_s, with ∂L/∂y of step s at d + s·dstep (rows, L)
// and its input at x + s·xstep (cols, L). A block of steps at a time: step by step, every element of gw
// was a load, one multiply-add and a store (store-bound; BENCHMARKS.md).
template <typename T>
void lanes_affine_grad(const T* d, long dstep, long rows, const T* x, long xstep, long cols, long count, T* gw, T* gb) {
  lanes_outer_grad<T, false>(d, nullptr, {dstep / L, 1}, rows, x, nullptr, {xstep / L, 1}, cols, count, gw, nullptr);
  const Lanes<T>* D = as_lanes(d);
  Lanes<T>* GB = as_lanes(gb);
  const long ds = dstep / L;
  for (long r = 0; r < rows; ++r) {
    Lanes<T> sum = GB[r];
    for (long s = 0; s < count; ++s) sum += D[s * ds + r];
    GB[r] = sum;
  }
}

// The gradient of a large last factor (q > kLargeFactor), summed a block of kBlock steps at a time. Its stage
// has post = 1 (N = pre·p), so a step gives each of its p·q entries only `pre` products per lane: summed step
// by step (accumulate_factor_grad) every entry was loaded and stored for 3 multiply-adds on PTB's 137×137
// (1.2 MB of partials a chunk, every step). The block keeps ∂L/∂z_t and the stage's input x_t of its steps,
// then adds Σ dz conj(x)ᵀ over the block's kBlock·pre (step, slice) pairs k in register tiles (lanes_outer_grad).
// Kept transposed, element i of pair k at i·K + k (K = kBlock·pre): a tile streams each element's pairs
// from contiguous memory (with pairs contiguous, the loads strode p vectors, 4.4 KB on PTB: beyond the
// hardware prefetchers' page).
template <typename T, bool CPLX>
struct LastFactorGrad {
  static constexpr long kBlock = 16;
  const Stage& s;
  long K, count = 0;                       // pairs (step, slice) a block; pairs kept so far
  std::vector<Lanes<T>> dzr, dzi, xr, xi;  // (p, K), (p, K), (q, K), (q, K) vectors of lanes
  static bool applies(const Plan& plan) { return plan.stages.back().q > kLargeFactor; }
  explicit LastFactorGrad(const Plan& plan)
      : s(plan.stages.back()), K(kBlock * s.pre), dzr(s.p * K), dzi(CPLX ? s.p * K : 0), xr(s.q * K),
        xi(CPLX ? s.q * K : 0) {}
  // Step t's ∂L/∂z_t and the last stage's input; a full block is added to the chunk's partials (gr, gi).
  void add(const T* dr, const T* di, const T* x_r, const T* x_i, T* gr, T* gi) {
    keep(dr, dzr, s.p);
    keep(x_r, xr, s.q);
    if (CPLX) {
      keep(di, dzi, s.p);
      keep(x_i, xi, s.q);
    }
    count += s.pre;
    if (count == K) flush(gr, gi);
  }
  void flush(T* gr, T* gi) {
    if (count == 0) return;
    auto p = [](std::vector<Lanes<T>>& v) { return v.empty() ? nullptr : reinterpret_cast<T*>(v.data()); };
    lanes_outer_grad<T, CPLX>(p(dzr), p(dzi), {1, K}, s.p, p(xr), p(xi), {1, K}, s.q, count, gr + s.woff * L,
                              gi + s.woff * L);
    count = 0;
  }

 private:
  // A step's (pre, n) vectors into the block's columns count ... count + pre − 1.
  void keep(const T* from, std::vector<Lanes<T>>& to, long n) {
    const Lanes<T>* v = as_lanes(from);
    for (long a = 0; a < s.pre; ++a)
      for (long i = 0; i < n; ++i) to[i * K + count + a] = v[a * n + i];
  }
};

template <typename T>
T* ptr(const at::Tensor& t) { return static_cast<T*>(t.data_ptr()); }

// Partial sums of shape (chunks, size, L) for each chunk of L rows of a batch of `rows`.
inline at::Tensor partials(long rows, long size, const at::Tensor& like) {
  return at::zeros({(rows + L - 1) / L, size, L}, like.options().dtype(c10::toRealValueType(like.scalar_type())));
}

}  // namespace
}  // namespace kru
