// CPU backend of krubench's Kronecker operators, and the operator schemas (TORCH_LIBRARY).
//
// Layout: batch-minor. A chunk of L batch rows is gathered into planes [n][lane] (real, imaginary),
// so every stage is a vertical multiply-add across the L lanes; chunks run in parallel (at::parallel_for,
// OpenMP). The whole sequence runs in one call: the state of a chunk stays in cache across all steps.
// Backward: a reverse sweep that recomputes each step's stage inputs from the stored h_{t-1}, applies
// the conjugate-transposed factors, and accumulates factor gradients per chunk (reduced once at the end).
#include <ATen/Parallel.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "cpu_layout.h"
#include "kru_plan.h"
#include "kru_schemas.h"

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

// The sequences a recurrence reads and writes, in one of two layouts. Rows (LANES false): the reference
// API's (B, T, N) tensors (complex interleaved), moved to and from the planes by register transposes.
// Lanes (LANES true): the kernel's own layout, (chunks, T, C, N, L) planes (C = 2 for complex: real
// plane, imaginary plane), read and written in place; h0 is (chunks, C, N, L).
template <typename T, bool CPLX, bool LANES>
struct Sequences {
  static constexpr int C = CPLX ? 2 : 1;
  long B, steps, N;  // B: batch rows (Rows) or chunks (Lanes)
  long chunks() const { return LANES ? B : (B + L - 1) / L; }
  long lanes(long c) const { return LANES ? L : std::min<long>(L, B - c * L); }
  // Chunk c's first element of step t of a sequence, or with t = −1 of a state shaped like h0.
  long offset(long c, long t) const {
    if (t < 0) return c * C * N * L;  // the same in both layouts: L rows of N (Rows), C planes (Lanes)
    return LANES ? (c * steps + t) * C * N * L : (c * L * steps + t) * N * C;
  }
  long rowstride(long t) const { return t < 0 ? N : steps * N; }
  long step_size() const { return C * N * L; }  // elements of one step of one chunk (Lanes)
  // Planes (pr, pi) of step t of chunk c (t = −1: of h0); Lanes: a pointer into the sequence (no copy)
  // unless `copy`.
  void load(const T* seq, const T* h0, long c, long t, T*& pr, T*& pi, bool copy) const {
    const T* src = (t < 0 ? h0 : seq) + offset(c, t);
    if constexpr (LANES) {
      if (!copy) {
        pr = const_cast<T*>(src);
        if (CPLX) pi = pr + N * L;
        return;
      }
      std::copy(src, src + N * L, pr);
      if (CPLX) std::copy(src + N * L, src + 2 * N * L, pi);
    } else {
      gather<T, CPLX>(src, rowstride(t), lanes(c), N, pr, pi);
    }
  }
  // Planes (pr, pi) to step t of chunk c of `seq` (t = −1: seq is shaped like h0).
  void store(const T* pr, const T* pi, T* seq, long c, long t) const {
    T* dst = seq + offset(c, t);
    if constexpr (LANES) {
      stream_copy(pr, dst, N * L);
      if (CPLX) stream_copy(pi, dst + N * L, N * L);
    } else {
      scatter<T, CPLX>(pr, pi, lanes(c), N, dst, rowstride(t));
    }
  }
};

// The KRU layer's input map and read-out fused into the recurrence (lanes layout; kru_layer_lanes):
// u_t = U x_t + b_U is computed per step from x_t instead of read from a (chunks, T, C, N, L) tensor, and
// y_t = V h_t + b_V is written at the steps read out; the backward pass accumulates their gradients per
// chunk on the way, from ∂L/∂u_t and ∂L/∂y_t as they arise. Batched small GEMMs over (chunk, step) did
// the same in torch at a fraction of this speed (BENCHMARKS.md, "End to end"). A state's planes are
// adjacent in memory (Scratch slots, the lanes layout), so [Re h; Im h] is one array of K = C·N rows.
template <typename T>
struct Maps {
  const T *x, *uw, *ub, *vw, *vb;  // x (chunks, T, I, L); uw (K, I); ub (K); vw (O, K); vb (O)
  long I, O, K;
  bool last_only;  // read out at the last step only: y (chunks, 1, O, L), else (chunks, T, O, L)
  T* y;
  const T *gy, *ghT, *vwt;   // backward: ∂L/∂y like y; ∂L/∂h_T (chunks, K, L); V transposed (K, O)
  T *guw, *gub, *gvw, *gvb;  // backward: per-chunk partials (chunks, K, I, L), (chunks, K, L), (chunks, O, K, L), (chunks, O, L)
  bool reads(long t, long steps) const { return !last_only || t == steps - 1; }
  const T* x_at(long c, long t, long steps) const { return x + (c * steps + t) * I * L; }
  long y_offset(long c, long t, long steps) const { return last_only ? c * O * L : (c * steps + t) * O * L; }
};

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

// u = U x_t + b_U into the K rows at u.
template <typename T>
void input_map(const Maps<T>& m, const T* xt, T* u) { lanes_affine(m.uw, m.ub, m.K, m.I, xt, u); }

// y_t = V h_t + b_V (h: K rows).
template <typename T>
void read_out(const Maps<T>& m, const T* h, T* yt) { lanes_affine(m.vw, m.vb, m.O, m.K, h, yt); }

// ∂L/∂h_t from the read-out: gh = Vᵀ ∂L/∂y_t (K rows). V's gradient is summed by blocks of steps
// (MapsGrad).
template <typename T>
void read_out_backward(const Maps<T>& m, const T* dyt, T* gh) {
  lanes_affine(m.vwt, static_cast<const T*>(nullptr), m.K, m.O, dyt, gh);
}

// The maps' weight gradients of one chunk in the backward sweep, summed a block of kBlock steps at a time
// (lanes_affine_grad): ∂L/∂u_t is kept for the steps of the block (the sweep's scratch is reused by
// the stages), h_t and ∂L/∂y_t are read where they are (H, the gradient of y).
template <typename T>
struct MapsGrad {
  static constexpr long kBlock = 8;
  const Maps<T>& m;
  long steps, stepsize;  // stepsize: elements of one step of H (C·N·L)
  std::vector<Lanes<T>> du;  // ∂L/∂u of the block's steps, (kBlock, K, L)
  long end;                  // the block: steps [t, end)
  MapsGrad(const Maps<T>& m, long steps, long stepsize) : m(m), steps(steps), stepsize(stepsize), du(kBlock * m.K), end(steps) {}
  // After ∂L/∂u_t (K rows at dut) of step t (the sweep goes down from steps − 1): keeps it and, at the
  // start of a block, adds the block's gradients to chunk c's partials.
  void step(long c, long t, const T* dut, const T* H, T* guw, T* gub, T* gvw, T* gvb) {
    T* slot = reinterpret_cast<T*>(du.data()) + (t % kBlock) * m.K * L;
    std::copy(dut, dut + m.K * L, slot);
    if (t % kBlock != 0) return;
    const long count = end - t;
    lanes_affine_grad(reinterpret_cast<const T*>(du.data()), m.K * L, m.K, m.x_at(c, t, steps), m.I * L, m.I, count,
                      guw, gub);
    const T* h = H + (c * steps + t) * stepsize;
    if (!m.last_only)
      lanes_affine_grad(m.gy + m.y_offset(c, t, steps), m.O * L, m.O, h, stepsize, m.K, count, gvw, gvb);
    else if (end == steps)  // the block of the last step, the one read out
      lanes_affine_grad(m.gy + m.y_offset(c, t, steps), m.O * L, m.O, h + (count - 1) * stepsize, stepsize, m.K, 1,
                        gvw, gvb);
    end = t;
  }
};

template <typename T, bool CPLX, int NL, bool LANES>
void recurrence_forward(const Plan& plan, const T* wr, const T* wi, const T* u, const T* h0, const T* bias, T* H,
                        const Sequences<T, CPLX, LANES>& seq, const Maps<T>* maps = nullptr) {
  const long N = plan.n_in;
  at::parallel_for(0, seq.chunks(), 1, [&](long c0, long c1) {
    Scratch<T> st(3, N);  // slots 0, 1: the stages' ping-pong (h_{t-1} in 0); 2: u_t (rows)
    T *hr = st.re(0), *hi = st.im(0);
    for (long c = c0; c < c1; ++c) {
      seq.load(H, h0, c, -1, hr, hi, true);
      for (long t = 0; t < seq.steps; ++t) {
        const long z = run_stages<T, CPLX>(plan, wr, wi, st, false);  // W h_{t-1}
        const T *zr = st.re(z), *zi = st.im(z);
        T *ur = st.re(2), *ui = st.im(2);
        if (maps)
          input_map(*maps, maps->x_at(c, t, seq.steps), ur);
        else
          seq.load(u, nullptr, c, t, ur, ui, false);
        const T* u_next = maps ? nullptr : u + seq.offset(c, std::min(t + 1, seq.steps - 1));
        for (long n = 0; n < N; ++n) {  // h_t = σ(W h_{t-1} + u_t), into slot 0; padding lanes stay 0
          if (LANES && u_next) prefetch_part(u_next, seq.step_size(), n, N);
#pragma omp simd
          for (int l = 0; l < L; ++l) {
            const long o = n * L + l;
            nl_forward<NL, T, CPLX>(zr[o] + ur[o], CPLX ? zi[o] + ui[o] : T(0), bias[n], hr[o], hi[o]);
          }
        }
        seq.store(hr, hi, H, c, t);
        if (maps && maps->reads(t, seq.steps)) read_out(*maps, hr, maps->y + maps->y_offset(c, t, seq.steps));
      }
    }
    stream_fence();
  });
}

// Writes ∂L/∂u into gu, ∂L/∂h0, and per chunk c the partial factor gradients gw{r,i}[c] (wsize × L) and
// modReLU bias gradients gb[c] (N × L); the caller sums the partials once. Reads H and never u: the
// nonlinearity's derivative comes from h_t (nl_backward). gu may be gH itself: each step reads its rows
// of gH before it writes them.
template <typename T, bool CPLX, int NL, bool LANES>
void recurrence_backward(const Plan& plan, const Plan& adj, const T* wr, const T* wi, const T* awr, const T* awi,
                         const T* h0, const T* H, const T* gH, const T* bias, const Sequences<T, CPLX, LANES>& seq,
                         T* gu, T* gh0, T* gwr, T* gwi, T* gb, const Maps<T>* maps = nullptr) {
  const long N = plan.n_in, F = plan.stages.size();
  at::parallel_for(0, seq.chunks(), 1, [&](long c0, long c1) {
    // slots 1..F-1: the stage inputs of step t (stage 0's is h_{t-1}); 0 and F: h_{t-1} and h_t, taking
    // turns (rows; the lanes layout reads them in place); g, d, e (taking turns): ∂L/∂h_t in all, ∂L/∂z_t
    // and back through the stages, scratch of the stages; F+3: ∂L/∂h_t from the loss (rows)
    Scratch<T> st(F + 5, N);
    const long gl = F + 3;
    for (long c = c0; c < c1; ++c) {
      T *cwr = gwr + c * plan.wsize * L, *cwi = gwi + c * plan.wsize * L, *cb = gb + c * N * L;
      const long K = seq.C * N;  // the layer's partials of chunk c (maps)
      T *cuw = maps ? maps->guw + c * K * maps->I * L : nullptr, *cub = maps ? maps->gub + c * K * L : nullptr;
      T *cvw = maps ? maps->gvw + c * maps->O * K * L : nullptr, *cvb = maps ? maps->gvb + c * maps->O * L : nullptr;
      std::optional<MapsGrad<T>> mg;  // the maps' gradients (lanes layout only)
      if (maps) mg.emplace(*maps, seq.steps, seq.step_size());
      long g = F + 4, d = F + 1, e = F + 2, cur = 0, other = F;
      st.zero(g);
      T *hr = st.re(other), *hi = st.im(other);  // h_t
      if (seq.steps > 0) seq.load(H, h0, c, seq.steps - 1, hr, hi, false);
      for (long t = seq.steps - 1; t >= 0; --t) {
        T *h1r = st.re(cur), *h1i = st.im(cur);  // h_{t-1}
        seq.load(H, h0, c, t - 1, h1r, h1i, false);
        run_stages<T, CPLX>(plan, wr, wi, st, true, F - 1, h1r, h1i);  // recompute the stage inputs of step t
        T *glr = st.re(gl), *gli = st.im(gl);
        if (!maps) {
          seq.load(gH, nullptr, c, t, glr, gli, false);
        } else {  // ∂L/∂h_t from the loss: through the read-out, and at t = T−1 from h_T
          if (maps->reads(t, seq.steps))
            read_out_backward(*maps, maps->gy + maps->y_offset(c, t, seq.steps), glr);
          else
            st.zero(gl);
          if (t == seq.steps - 1) {
            const T* ghT = maps->ghT + c * K * L;
#pragma omp simd
            for (long o = 0; o < K * L; ++o) glr[o] += ghT[o];
          }
        }
        const T *gr = st.re(g), *gi = st.im(g);
        T *dr = st.re(d), *di = st.im(d);
        const T* h_next = t >= 2 ? H + seq.offset(c, t - 2) : h0 + seq.offset(c, -1);
        const T* g_next = maps ? nullptr : gH + seq.offset(c, std::max(t - 1, 0L));
        for (long n = 0; n < N; ++n) {
          if (LANES) {  // what step t − 1 reads: h_{t-2} and ∂L/∂h_{t-1}
            prefetch_part(h_next, seq.step_size(), n, N);
            if (g_next) prefetch_part(g_next, seq.step_size(), n, N);
          }
#pragma omp simd
          for (int l = 0; l < L; ++l) {
            const long o = n * L + l;
            nl_backward<NL, T, CPLX>(hr[o], CPLX ? hi[o] : T(0), bias[n], gr[o] + glr[o], CPLX ? gi[o] + gli[o] : T(0),
                                     dr[o], di[o], cb[o]);
          }
        }
        if (mg)
          mg->step(c, t, dr, H, cuw, cub, cvw, cvb);
        else
          seq.store(dr, di, gu, c, t);
        const long dh = backprop_stages<T, CPLX>(plan, adj, awr, awi, st, d, e, cwr, cwi, h1r, h1i);
        const long spare = dh == d ? e : d;  // ∂L/∂h_{t-1} is in slot dh: it becomes g
        e = spare;
        d = g;
        g = dh;
        hr = h1r;  // h_{t-1}: the next step's h_t
        hi = h1i;
        std::swap(cur, other);
      }
      seq.store(st.re(g), st.im(g), gh0, c, -1);
    }
    stream_fence();
  });
}

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
          const long r = backprop_stages<T, CPLX>(plan, adj, w.awr[g], w.awi[g], st, d, F + 2,
                                                  cwr + g * plan.wsize * L, cwi + g * plan.wsize * L, h1, zero);
          const T* rr = st.re(r);
#pragma omp simd
          for (long o = 0; o < N * L; ++o) dh[o] += rr[o];
        }
      }
      scatter<T, false>(dh, junk, lanes, N, gh0 + m0 * N, N);
      scatter<T, false>(dc, junk, lanes, N, gc0 + m0 * N, N);
    }
  });
}

template <typename T>
T* ptr(const at::Tensor& t) { return static_cast<T*>(t.data_ptr()); }

// Partial sums of shape (chunks, size, L) for each chunk of L rows of a batch of `rows`.
at::Tensor partials(long rows, long size, const at::Tensor& like) {
  return at::zeros({(rows + L - 1) / L, size, L}, like.options().dtype(c10::toRealValueType(like.scalar_type())));
}

// The layer's maps as tensors (kru_layer_lanes): x, U, b_U, V, b_V and y in the forward pass; in the
// backward pass also ∂L/∂y, ∂L/∂h_T, Vᵀ and the partials of the maps' gradients. Undefined: not used.
struct LayerTensors {
  at::Tensor x, uw, ub, vw, vb, y, gy, ghT, vwt, guw, gub, gvw, gvb;
  bool last_only;
  template <typename T>
  Maps<T> maps() const {
    auto p = [](const at::Tensor& t) { return t.defined() ? static_cast<T*>(t.data_ptr()) : nullptr; };
    return {p(x), p(uw), p(ub), p(vw), p(vb), x.size(2), vw.size(0), vw.size(1), last_only, p(y),
            p(gy), p(ghT), p(vwt), p(guw), p(gub), p(gvw), p(gvb)};
  }
};

// The recurrence's forward and backward for either layout; the tensors are checked by the caller.
// The factors' dtype says whether the data are complex (u, H: real planes in the lanes layout). With
// `layer` (lanes only) the input map and read-out run inside (u undefined, H shaped `sizes`).
template <bool LANES>
at::Tensor run_recurrence(const Plan& plan, const at::Tensor& u, at::IntArrayRef sizes, const at::Tensor& h0,
                          const at::Tensor& w, c10::string_view nonlinearity, const at::Tensor& bias,
                          const LayerTensors* layer = nullptr) {
  at::Tensor wr, wi;
  std::tie(wr, wi) = factor_planes(w, plan, false);
  at::Tensor H = new_output(sizes, h0.options());
  dispatch_dtype(w.scalar_type(), [&](auto t, auto c) {
    dispatch_nonlinearity(nonlinearity, [&](auto nl) {
      using T = decltype(t);
      constexpr bool CPLX = decltype(c)::value;
      const Sequences<T, CPLX, LANES> seq{sizes[0], sizes[1], plan.n_in};
      const Maps<T> maps = layer ? layer->maps<T>() : Maps<T>{};
      recurrence_forward<T, CPLX, decltype(nl)::value>(plan, ptr<T>(wr), ptr<T>(wi),
                                                       layer ? nullptr : ptr<T>(u), ptr<T>(h0), ptr<T>(bias),
                                                       ptr<T>(H), seq, layer ? &maps : nullptr);
    });
  });
  return H;
}

template <bool LANES>
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_recurrence_backward(
    const Plan& plan, const at::Tensor& grad_H, const at::Tensor& H, const at::Tensor& h0, const at::Tensor& w,
    c10::string_view nonlinearity, const at::Tensor& bias, const at::Tensor& grad_u,
    const LayerTensors* layer = nullptr) {
  const Plan adj = adjoint_plan(plan);
  const auto [wr, wi, awr, awi] = backward_planes(w, plan);
  const long rows = LANES ? H.size(0) * L : H.size(0);
  at::Tensor gh0 = new_output(h0.sizes(), h0.options());
  at::Tensor gwr = partials(rows, plan.wsize, H), gwi = partials(rows, plan.wsize, H), gb = partials(rows, plan.n_in, H);
  dispatch_dtype(w.scalar_type(), [&](auto t, auto c) {
    dispatch_nonlinearity(nonlinearity, [&](auto nl) {
      using T = decltype(t);
      constexpr bool CPLX = decltype(c)::value;
      const Sequences<T, CPLX, LANES> seq{H.size(0), H.size(1), plan.n_in};
      const Maps<T> maps = layer ? layer->maps<T>() : Maps<T>{};
      recurrence_backward<T, CPLX, decltype(nl)::value>(plan, adj, ptr<T>(wr), ptr<T>(wi), ptr<T>(awr), ptr<T>(awi),
                                                        ptr<T>(h0), ptr<T>(H), layer ? nullptr : ptr<T>(grad_H),
                                                        ptr<T>(bias), seq, layer ? nullptr : ptr<T>(grad_u),
                                                        ptr<T>(gh0), ptr<T>(gwr), ptr<T>(gwi), ptr<T>(gb),
                                                        layer ? &maps : nullptr);
    });
  });
  at::Tensor gw = combine_planes(gwr.sum(at::IntArrayRef{0, 2}), gwi.sum(at::IntArrayRef{0, 2}), w.is_complex());
  return {gh0, gw, gb.sum(at::IntArrayRef{0, 2})};
}

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

// Tensors of the lanes layout: real, in the factors' real dtype, contiguous, on their device.
void check_lanes_tensors(const at::Tensor& w, std::initializer_list<std::pair<const at::Tensor*, const char*>> tensors) {
  const auto real = c10::toRealValueType(w.scalar_type());
  for (const auto& [t, name] : tensors) {
    TORCH_CHECK(t->scalar_type() == real, "krubench: ", name, " has dtype ", t->scalar_type(), "; the lanes layout ",
                "holds the factors' real dtype, ", real);
    TORCH_CHECK(t->device() == w.device() && t->is_contiguous(), "krubench: ", name, " must be contiguous on ",
                w.device());
  }
}

// The recurrence on the lanes layout, all but its sequences: h0 (chunks, C, N, L), the flat factors w, the
// bias (N,); C = 2 for complex factors.
Plan check_lanes_recurrence(const at::Tensor& h0, const at::Tensor& w, at::IntArrayRef shapes, const at::Tensor& bias,
                            long chunks) {
  check_dtype(w);
  const Plan plan = make_plan(shapes);
  TORCH_CHECK(plan.n_in == plan.n_out, "krubench: the recurrence needs square factors, got shapes ", shapes);
  const long C = w.is_complex() ? 2 : 1, N = plan.n_in;
  TORCH_CHECK(h0.dim() == 4 && h0.size(0) == chunks && h0.size(1) == C && h0.size(2) == N && h0.size(3) == L,
              "krubench: h0 must be (", chunks, ", ", C, ", ", N, ", ", L, ") in the lanes layout, got ", h0.sizes());
  TORCH_CHECK(w.dim() == 1 && w.numel() == plan.wsize, "krubench: the flat factors must have ", plan.wsize,
              " entries, got ", w.sizes());
  TORCH_CHECK(bias.dim() == 1 && bias.numel() == N, "krubench: bias must be (N,) = (", N, ",), got ", bias.sizes());
  TORCH_CHECK(w.is_contiguous(), "krubench: the flat factors must be contiguous");
  check_lanes_tensors(w, {{&h0, "h0"}, {&bias, "bias"}});
  return plan;
}

// The lanes layout: u, H (chunks, T, C, N, L) and h0 (chunks, C, N, L), real, C = 2 for complex factors.
Plan check_recurrence_lanes(const at::Tensor& u, const at::Tensor& h0, const at::Tensor& w, at::IntArrayRef shapes,
                            const at::Tensor& bias) {
  TORCH_CHECK(u.dim() == 5, "krubench: u must be (chunks, T, C, N, L) in the lanes layout, got ", u.sizes());
  const Plan plan = check_lanes_recurrence(h0, w, shapes, bias, u.size(0));
  const long C = w.is_complex() ? 2 : 1, N = plan.n_in;
  TORCH_CHECK(u.dim() == 5 && u.size(2) == C && u.size(3) == N && u.size(4) == L, "krubench: u must be (chunks, T, ",
              C, ", ", N, ", ", L, ") in the lanes layout, got ", u.sizes());
  check_lanes_tensors(w, {{&u, "u"}});
  return plan;
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

// The schemas (kru_schemas.h) are defined here, once per process; the CUDA library only adds CUDA implementations.
TORCH_LIBRARY(krubench, m) {
  kru::define_schemas(m);
  // The lanes layout's chunk width L, which this build chose for its CPU (cuda/cpu_layout.h).
  m.def("lanes_width() -> int", []() -> int64_t { return kru::L; });
}

TORCH_LIBRARY_IMPL(krubench, CPU, m) {
  m.impl("kru_recurrence_lanes", &kru::kru_recurrence_lanes_cpu);
  m.impl("kru_recurrence_lanes_backward", &kru::kru_recurrence_lanes_backward_cpu);
  m.impl("kru_layer_lanes", &kru::kru_layer_lanes_cpu);
  m.impl("kru_layer_lanes_backward", &kru::kru_layer_lanes_backward_cpu);
  m.impl("kru_recurrence", &kru::kru_recurrence_cpu);
  m.impl("kru_layer_input", &kru::kru_layer_input_cpu);
  m.impl("kru_recurrence_backward", &kru::kru_recurrence_backward_cpu);
  m.impl("lstm_kru_recurrence", &kru::lstm_kru_recurrence_cpu);
  m.impl("lstm_kru_recurrence_backward", &kru::lstm_kru_recurrence_backward_cpu);
  m.impl("lstm_kru_layer", &kru::lstm_kru_layer_cpu);
  m.impl("lstm_kru_layer_backward", &kru::lstm_kru_layer_backward_cpu);
}
