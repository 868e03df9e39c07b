// The KRU recurrence's CPU kernels, forward and backward, on either layout (rows or lanes), with the KRU layer's
// input map and read-out fused in (Maps) when kru_layer_lanes runs them; the host side that runs them on tensors.
// Used by kru_cpu_recurrence.cpp and kru_cpu_layer.cpp.
#pragma once

#include "cpu_kernels.h"

namespace kru {
namespace {

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
      std::optional<LastFactorGrad<T, CPLX>> lg;
      if (LastFactorGrad<T, CPLX>::applies(plan)) lg.emplace(plan);
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
        if (lg) lg->add(dr, di, F > 1 ? st.re(F - 1) : h1r, F > 1 ? st.im(F - 1) : h1i, cwr, cwi);
        const long dh = backprop_stages<T, CPLX>(plan, adj, awr, awi, st, d, e, cwr, cwi, h1r, h1i, !lg);
        const long spare = dh == d ? e : d;  // ∂L/∂h_{t-1} is in slot dh: it becomes g
        e = spare;
        d = g;
        g = dh;
        hr = h1r;  // h_{t-1}: the next step's h_t
        hi = h1i;
        std::swap(cur, other);
      }
      if (lg) lg->flush(cwr, cwi);
      seq.store(st.re(g), st.im(g), gh0, c, -1);
    }
    stream_fence();
  });
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

// Tensors of the lanes layout: real, in the factors' real dtype, contiguous, on their device.
inline void check_lanes_tensors(const at::Tensor& w,
                                std::initializer_list<std::pair<const at::Tensor*, const char*>> tensors) {
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
inline Plan check_lanes_recurrence(const at::Tensor& h0, const at::Tensor& w, at::IntArrayRef shapes,
                                   const at::Tensor& bias, long chunks) {
  check_dtype(w);
  const Plan plan = make_plan(shapes);
  check_recurrence_factors(plan, shapes);
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
inline Plan check_recurrence_lanes(const at::Tensor& u, const at::Tensor& h0, const at::Tensor& w,
                                   at::IntArrayRef shapes, const at::Tensor& bias) {
  TORCH_CHECK(u.dim() == 5, "krubench: u must be (chunks, T, C, N, L) in the lanes layout, got ", u.sizes());
  const Plan plan = check_lanes_recurrence(h0, w, shapes, bias, u.size(0));
  const long C = w.is_complex() ? 2 : 1, N = plan.n_in;
  TORCH_CHECK(u.dim() == 5 && u.size(2) == C && u.size(3) == N && u.size(4) == L, "krubench: u must be (chunks, T, ",
              C, ", ", N, ", ", L, ") in the lanes layout, got ", u.sizes());
  check_lanes_tensors(w, {{&u, "u"}});
  return plan;
}

}  // namespace
}  // namespace kru
