// CUDA backend of krubench's Kronecker operators (the schemas are defined in kru_cpu.cpp).
//
// One thread block per sequence: batch rows are independent, so no grid-wide
// barrier. The factors and the state live in shared memory across all T steps; each thread computes
// whole outputs of a stage (one factor row against its inputs) with the per-element arithmetic of
// kron_math.h, which the CPU backend shares. Backward: a reverse sweep that recomputes each step's stage
// inputs from the stored h_{t-1} (kept in a per-block global scratch that stays in L2), applies the
// conjugate-transposed factors, and accumulates each factor's gradient per block across all steps
// (a block reduction, no atomics); the blocks' partials are summed once at the end.
//
// Compiled by nvcc for the GPU backend, and as host C++ by kru_emu.cpp (KRU_EMULATE) for the emulator that
// tests these kernels without a GPU: the runtime calls go through kru_device.h.
#include "kru_plan.h"
// after ATen: in the emulator, kru_device.h defines CUDA's keywords (__device__, ...) as macros
#include "kru_device.h"

namespace kru {
namespace {

constexpr int kMaxStages = 32;

struct DevStage {
  int p, q, pre, post, woff;
};

struct DevPlan {
  int k, n_in, n_out, max_size, wsize;
  DevStage s[kMaxStages];
};

DevPlan device_plan(const Plan& plan) {
  TORCH_CHECK(plan.stages.size() <= kMaxStages, "krubench (cuda): at most ", kMaxStages, " factors are supported, got ",
              plan.stages.size(), "; merge small factors (model.merge_upto)");
  DevPlan d{};
  d.k = static_cast<int>(plan.stages.size());
  d.n_in = plan.n_in;
  d.n_out = plan.n_out;
  d.max_size = plan.max_size;
  d.wsize = plan.wsize;
  for (int f = 0; f < d.k; ++f) {
    const Stage& s = plan.stages[f];
    d.s[f] = {s.p, s.q, static_cast<int>(s.pre), static_cast<int>(s.post), static_cast<int>(s.woff)};
  }
  return d;
}

template <typename T>
__device__ void load_planes(const T* src, int n, bool cplx, T* re, T* im) {  // interleaved -> planes
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    re[j] = src[cplx ? 2 * j : j];
    im[j] = cplx ? src[2 * j + 1] : T(0);
  }
}

template <typename T>
__device__ void store_planes(const T* re, const T* im, int n, bool cplx, T* dst) {
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    dst[cplx ? 2 * j : j] = re[j];
    if (cplx) dst[2 * j + 1] = im[j];
  }
}

// y = factor s · x (shared or global planes); every thread computes whole outputs. Ends with a barrier.
template <typename T, bool CPLX>
__device__ void stage(const DevStage& s, const T* wr, const T* wi, const T* xr, const T* xi, T* yr, T* yi) {
  const int outputs = s.pre * s.p * s.post;
  for (int o = threadIdx.x; o < outputs; o += blockDim.x) {
    int a, i, r;
    stage_coords(o, s.p, s.post, a, i, r);
    const int x0 = stage_index(a, 0, r, s.q, s.post);
    row_dot<T, CPLX, 0>(wr + s.woff + i * s.q, wi + s.woff + i * s.q, s.q, xr + x0, xi + x0, s.post, yr[o], yi[o]);
  }
  __syncthreads();
}

// g[woff + i q + j] += Σ_{a,r} dy[(a,i,r)] conj(x[(a,j,r)]): work items (entry, slice) reduce over the
// groups of their slice into red (shared, blockDim entries), then the owner of each entry adds the slices up. Reads dy, x
// and writes red, g only: it may be followed by a stage() on dy without a barrier in between.
template <typename T, bool CPLX>
__device__ void accumulate_factor_grad(const DevStage& s, const T* dyr, const T* dyi, const T* xr, const T* xi,
                                       T* redr, T* redi, T* gr, T* gi) {
  const int E = s.p * s.q, groups = s.pre * s.post;
  const int slices = max(1, static_cast<int>(blockDim.x) / E);
  if (slices == 1) {  // as many entries as threads or more: each owner sums all groups itself (red unused)
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
      const int i = e / s.q, j = e % s.q;
      T rr = 0, ii = 0, ri = 0, ir = 0;
      for (int grp = 0; grp < groups; ++grp) {
        const int a = grp / s.post, r = grp % s.post;
        const int yo = stage_index(a, i, r, s.p, s.post), xo = stage_index(a, j, r, s.q, s.post);
        cmac4<T, CPLX>(dyr[yo], dyi[yo], xr[xo], xi[xo], rr, ii, ri, ir);
      }
      gr[s.woff + e] += rr + ii;
      gi[s.woff + e] += ir - ri;
    }
    return;  // uniform over the block: no thread waits at the barrier below
  }
  for (int item = threadIdx.x; item < E * slices; item += blockDim.x) {
    const int e = item % E, slice = item / E, i = e / s.q, j = e % s.q;
    T rr = 0, ii = 0, ri = 0, ir = 0;
    for (int grp = slice; grp < groups; grp += slices) {
      const int a = grp / s.post, r = grp % s.post;
      const int yo = stage_index(a, i, r, s.p, s.post), xo = stage_index(a, j, r, s.q, s.post);
      cmac4<T, CPLX>(dyr[yo], dyi[yo], xr[xo], xi[xo], rr, ii, ri, ir);
    }
    redr[item] = rr + ii;  // Σ dy · conj(x)
    redi[item] = ir - ri;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    T sr = 0, si = 0;
    for (int slice = 0; slice < slices; ++slice) {
      sr += redr[slice * E + e];
      si += redi[slice * E + e];
    }
    gr[s.woff + e] += sr;
    gi[s.woff + e] += si;
  }
  // No barrier: the callers' next stage() ends with one before the next call writes red again.
}

template <typename T>
__device__ void load_factors(const T* wr, const T* wi, int n, T* sr, T* si) {
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    sr[j] = wr[j];
    si[j] = wi[j];
  }
}

// Two state buffers of n elements (real plane, imaginary plane) at `at`, x the current one. A stage reads x
// and writes y, then swap() makes y current. Swapped by value, not indexed by a run-time bit: an array of
// pointers indexed at run time lives on the stack, and the loads through it become generic loads instead
// of shared-memory ones.
template <typename T>
struct PingPong {
  T *xr, *xi, *yr, *yi;
  __device__ PingPong(T* at, int n) : xr(at), xi(at + n), yr(at + 2 * n), yi(at + 3 * n) {}
  __device__ void swap() {
    T* t = xr;
    xr = yr;
    yr = t;
    t = xi;
    xi = yi;
    yi = t;
  }
};

// The input map computed in the kernel (kru_layer_input): u_t = uw x_t + ub from x (B, T, I), uw (C·N, I) whose
// rows are u's (Re, Im) pairs, ub (C·N); x null: u is read from the (B, T, N) tensor instead.
template <typename T>
struct InputMap {
  const T *x, *uw, *ub;
  int I;
  // u's element e (of C·N) at step t of sequence b
  __device__ T at(long b, int t, int steps, int e) const {
    const T* xt = x + (b * steps + t) * I;
    const T* row = uw + static_cast<long>(e) * I;
    T acc = ub[e];
    for (int i = 0; i < I; ++i) acc += row[i] * xt[i];
    return acc;
  }
};

// h_t = σ(z + u_t) for element n of sequence b: z in (zr, zi) becomes h_t, also written to H. u_t is read from u
// (B, T, N), or computed by `in` when it has x.
template <typename T, bool CPLX, int NL>
__device__ void step_output(const T* u, const InputMap<T>& in, const T* bias, T* H, long b, int t, int steps, int N,
                            int n, T& zr, T& zi) {
  constexpr int C = CPLX ? 2 : 1;
  const long x = ((b * steps + t) * N + n) * C;
  const T ur = in.x ? in.at(b, t, steps, n * C) : u[x];
  const T ui = !CPLX ? T(0) : in.x ? in.at(b, t, steps, n * C + 1) : u[x + 1];
  T hr, hi;
  nl_forward<NL, T, CPLX>(zr + ur, CPLX ? zi + ui : T(0), bias[n], hr, hi);
  zr = hr;
  zi = hi;
  H[x] = hr;
  if (CPLX) H[x + 1] = hi;
}

// ∂L/∂z_t for element n of sequence b from ∂L/∂h_t = d + gH_t: d in (dr, di) becomes it, also written to gu (which
// may be gH itself: the element is read, then written); the modReLU bias gradient is added to db.
template <typename T, bool CPLX, int NL>
__device__ void step_input_grad(const T* H, const T* gH, const T* bias, T* gu, long b, int t, int steps, int N, int n,
                                T& dr, T& di, T& db) {
  constexpr int C = CPLX ? 2 : 1;
  const long x = ((b * steps + t) * N + n) * C;
  T dzr, dzi;
  nl_backward<NL, T, CPLX>(H[x], CPLX ? H[x + 1] : T(0), bias[n], dr + gH[x], CPLX ? di + gH[x + 1] : T(0), dzr, dzi,
                           db);
  dr = dzr;
  di = dzi;
  gu[x] = dzr;
  if (CPLX) gu[x + 1] = dzi;
}

// Shared memory: the factors' planes (2 wsize) unless they are read from global memory (`shared_factors`
// false: factors too large for shared memory, as PTB's 137×137 and 331×331, are read through the caches), a
// PingPong of N. Block b runs sequence b.
template <typename T, bool CPLX, int NL>
__global__ void recurrence_forward_kernel(DevPlan plan, const T* wr_g, const T* wi_g, const T* u, const T* h0,
                                          const T* bias, T* H, int steps, InputMap<T> in, bool shared_factors) {
  KRU_DYNAMIC_SHARED(smem);
  constexpr int C = CPLX ? 2 : 1;
  const int N = plan.n_in;
  T* at = reinterpret_cast<T*>(smem);
  const T *wr = wr_g, *wi = wi_g;
  if (shared_factors) {
    load_factors(wr_g, wi_g, plan.wsize, at, at + plan.wsize);
    wr = at;
    wi = at + plan.wsize;
    at += 2 * plan.wsize;
  }
  PingPong<T> h(at, N);
  const long b = blockIdx.x;
  load_planes(h0 + b * N * C, N, CPLX, h.xr, h.xi);
  __syncthreads();
  for (int t = 0; t < steps; ++t) {
    for (int f = 0; f < plan.k; ++f, h.swap()) stage<T, CPLX>(plan.s[f], wr, wi, h.xr, h.xi, h.yr, h.yi);
    for (int n = threadIdx.x; n < N; n += blockDim.x)  // h_t = σ(W h_{t-1} + u_t), in place
      step_output<T, CPLX, NL>(u, in, bias, H, b, t, steps, N, n, h.xr[n], h.xi[n]);
    __syncthreads();
  }
}

// Shared memory: factors and their adjoints (4 wsize) unless read from global memory (`shared_factors`, as in
// the forward), a PingPong of N for ∂L/∂h_t and the adjoint stages (x holds ∂L/∂h between steps), the reduction
// scratch (2 blockDim). Global scratch ws: this block's stage inputs, (k + 1) × 2 N. Factor gradients of the
// stages from grad_stages on are left to the caller.
// Reads H, never u (nl_backward works from h_t); gu may be gH itself (each element is read, then written,
// by one thread).
template <typename T, bool CPLX, int NL>
__global__ void recurrence_backward_kernel(DevPlan plan, const T* wr_g, const T* wi_g, const T* awr_g,
                                           const T* awi_g, const T* h0, const T* H, const T* gH, const T* bias,
                                           int steps, T* gu, T* gh0, T* gwr, T* gwi, T* gb, T* ws,
                                           bool shared_factors, int grad_stages) {
  KRU_DYNAMIC_SHARED(smem);
  constexpr int C = CPLX ? 2 : 1;
  const int N = plan.n_in, red = blockDim.x;
  T* at = reinterpret_cast<T*>(smem);
  const T *wr = wr_g, *wi = wi_g, *awr = awr_g, *awi = awi_g;
  if (shared_factors) {
    load_factors(wr_g, wi_g, plan.wsize, at, at + plan.wsize);
    load_factors(awr_g, awi_g, plan.wsize, at + 2 * plan.wsize, at + 3 * plan.wsize);
    wr = at;
    wi = at + plan.wsize;
    awr = at + 2 * plan.wsize;
    awi = at + 3 * plan.wsize;
    at += 4 * plan.wsize;
  }
  PingPong<T> d(at, N);
  T *redr = at + 4 * N, *redi = redr + red;
  const long b = blockIdx.x;
  T* sr = ws + b * (plan.k + 1) * 2 * N;  // stage input f: planes sr + 2 f N (re), + N (im)
  T *bgr = gwr + b * plan.wsize, *bgi = gwi + b * plan.wsize, *bgb = gb + b * N;
  for (int n = threadIdx.x; n < N; n += blockDim.x) d.xr[n] = d.xi[n] = T(0);  // ∂L/∂h_T: none
  for (int t = steps - 1; t >= 0; --t) {
    // The barrier after this load also orders the loads above (the zeros are read below, and by
    // store_planes after the loop when steps = 0, by the threads that wrote them).
    load_planes(t > 0 ? H + (b * steps + t - 1) * N * C : h0 + b * N * C, N, CPLX, sr, sr + N);
    __syncthreads();
    for (int f = 0; f + 1 < grad_stages; ++f)  // recompute the inputs of the stages whose gradients are summed here
      stage<T, CPLX>(plan.s[f], wr, wi, sr + 2 * f * N, sr + (2 * f + 1) * N, sr + 2 * (f + 1) * N,
                     sr + (2 * (f + 1) + 1) * N);
    for (int n = threadIdx.x; n < N; n += blockDim.x)  // ∂L/∂z_t from ∂L/∂h_t = the carried d.x + gH_t, in place
      step_input_grad<T, CPLX, NL>(H, gH, bias, gu, b, t, steps, N, n, d.xr[n], d.xi[n], bgb[n]);
    __syncthreads();
    for (int f = plan.k - 1; f >= 0; --f, d.swap()) {  // ends with ∂L/∂h_{t-1} in d.x
      if (f < grad_stages)  // the others' gradients are one matrix product after the kernel (gemm_last_factor_grad)
        accumulate_factor_grad<T, CPLX>(plan.s[f], d.xr, d.xi, sr + 2 * f * N, sr + (2 * f + 1) * N, redr, redi, bgr,
                                        bgi);
      DevStage adj = plan.s[f];
      adj.p = plan.s[f].q;
      adj.q = plan.s[f].p;
      stage<T, CPLX>(adj, awr, awi, d.xr, d.xi, d.yr, d.yi);
    }
  }
  store_planes(d.xr, d.xi, N, CPLX, gh0 + b * N * C);
}

// ---- LSTM+KRU: the whole recurrence, its W_hh G Kronecker products of one plan ----
// Gates a_t = gx_t + Re(W h_{t-1}) (4N, gate-major i, f, g, o; product g gives rows [g n_out, (g + 1) n_out)),
// c_t = σ(f) c_{t-1} + σ(i) tanh(g), h_t = σ(o) tanh(c_t); the state is real (a zero imaginary plane into
// complex factors, the real part out). As kru_cpu_lstm.cpp's lstm_forward / lstm_backward, one block a sequence.

// Shared memory: the G products' factor planes (2 G wsize), h and c (N each), the gates a (4N), a PingPong
// of max_size. Block b runs sequence b.
template <typename T, bool CPLX>
__global__ void lstm_forward_kernel(DevPlan plan, int G, const T* wr_g, const T* wi_g, const T* gx, const T* h0,
                                    const T* c0, T* H, T* C, int steps) {
  KRU_DYNAMIC_SHARED(smem);
  const int N = plan.n_in, no = plan.n_out, W = plan.wsize;
  T* wr = reinterpret_cast<T*>(smem);
  T *wi = wr + G * W, *h = wi + G * W, *c = h + N, *a = c + N;
  PingPong<T> v(a + 4 * N, plan.max_size);
  const long b = blockIdx.x;
  load_factors(wr_g, wi_g, G * W, wr, wi);
  for (int n = threadIdx.x; n < N; n += blockDim.x) {
    h[n] = h0[b * N + n];
    c[n] = c0[b * N + n];
  }
  for (int t = 0; t < steps; ++t) {
    const T* gxt = gx + (b * steps + t) * 4 * N;
    for (int g = 0; g < G; ++g) {
      for (int n = threadIdx.x; n < N; n += blockDim.x) {  // h_{t-1} into the stages: each thread its own n
        v.xr[n] = h[n];
        v.xi[n] = T(0);
      }
      __syncthreads();
      for (int f = 0; f < plan.k; ++f, v.swap()) stage<T, CPLX>(plan.s[f], wr + g * W, wi + g * W, v.xr, v.xi, v.yr, v.yi);
      for (int j = threadIdx.x; j < no; j += blockDim.x) a[g * no + j] = gxt[g * no + j] + v.xr[j];
    }
    __syncthreads();  // the cell reads gate rows other threads wrote (one 4N product: G = 1)
    T* Ht = H + (b * steps + t) * N;
    T* Ct = C + (b * steps + t) * N;
    for (int n = threadIdx.x; n < N; n += blockDim.x) {
      T i, f, gg, o;
      lstm_gates(a[n], a[N + n], a[2 * N + n], a[3 * N + n], i, f, gg, o);
      c[n] = f * c[n] + i * gg;
      h[n] = o * hd_tanh(c[n]);
      Ht[n] = h[n];
      Ct[n] = c[n];
    }
    // No barrier: h and c are read next by the threads that wrote them; a's rows are next written after
    // the next step's stage() barriers.
  }
}

// Shared memory: factors and adjoints (4 G wsize), the gates a (4N, then ∂L/∂a), ∂L/∂h and ∂L/∂c carried
// between steps (N each), a PingPong of max_size for the adjoint stages, the reduction scratch (2 blockDim).
// Global scratch ws: this block's stage inputs per product, G × (k + 1) × 2 max_size.
template <typename T, bool CPLX>
__global__ void lstm_backward_kernel(DevPlan plan, int G, const T* wr_g, const T* wi_g, const T* awr_g,
                                     const T* awi_g, const T* gx, const T* h0, const T* c0, const T* H, const T* C,
                                     const T* gH, const T* gC, int steps, T* ggx, T* gh0, T* gc0, T* gwr, T* gwi,
                                     T* ws) {
  KRU_DYNAMIC_SHARED(smem);
  const int N = plan.n_in, no = plan.n_out, W = plan.wsize, S = plan.max_size;
  const int red = blockDim.x;
  T* wr = reinterpret_cast<T*>(smem);
  T *wi = wr + G * W, *awr = wi + G * W, *awi = awr + G * W, *a = awi + G * W, *dh = a + 4 * N, *dc = dh + N;
  PingPong<T> d(dc + N, S);
  T *redr = dc + N + 4 * S, *redi = redr + red;
  const long b = blockIdx.x;
  T* block_ws = ws + b * G * (plan.k + 1) * 2 * S;  // product g's stage input f: planes at ((g (k+1) + f) 2) S
  T *bgr = gwr + b * G * W, *bgi = gwi + b * G * W;
  load_factors(wr_g, wi_g, G * W, wr, wi);
  load_factors(awr_g, awi_g, G * W, awr, awi);
  for (int n = threadIdx.x; n < N; n += blockDim.x) dh[n] = dc[n] = T(0);
  for (int t = steps - 1; t >= 0; --t) {
    const T* h1 = t > 0 ? H + (b * steps + t - 1) * N : h0 + b * N;
    for (int g = 0; g < G; ++g) {  // h_{t-1}, the first stage's input of every product
      T* sr = block_ws + g * (plan.k + 1) * 2 * S;
      for (int n = threadIdx.x; n < N; n += blockDim.x) {
        sr[n] = h1[n];
        sr[S + n] = T(0);
      }
    }
    __syncthreads();
    const long row = (b * steps + t) * N;
    for (int g = 0; g < G; ++g) {  // recompute the gates, keeping each product's stage inputs
      T* sr = block_ws + g * (plan.k + 1) * 2 * S;
      for (int f = 0; f < plan.k; ++f)
        stage<T, CPLX>(plan.s[f], wr + g * W, wi + g * W, sr + 2 * f * S, sr + (2 * f + 1) * S, sr + 2 * (f + 1) * S,
                       sr + (2 * f + 3) * S);
      for (int j = threadIdx.x; j < no; j += blockDim.x) a[g * no + j] = gx[row * 4 + g * no + j] + sr[2 * plan.k * S + j];
    }
    __syncthreads();  // the cell reads gate rows other threads wrote
    const T* cp = t > 0 ? C + row - N : c0 + b * N;
    for (int n = threadIdx.x; n < N; n += blockDim.x) {
      T i, f, gg, o;
      lstm_gates(a[n], a[N + n], a[2 * N + n], a[3 * N + n], i, f, gg, o);
      const T tc = hd_tanh(C[row + n]);
      const T gh = dh[n] + gH[row + n], gc = dc[n] + gC[row + n] + gh * o * (T(1) - tc * tc);
      a[n] = gc * gg * i * (T(1) - i);
      a[N + n] = gc * cp[n] * f * (T(1) - f);
      a[2 * N + n] = gc * i * (T(1) - gg * gg);
      a[3 * N + n] = gh * tc * o * (T(1) - o);
      for (int r = 0; r < 4; ++r) ggx[row * 4 + r * N + n] = a[r * N + n];
      dc[n] = gc * f;
      dh[n] = T(0);
    }
    for (int g = 0; g < G; ++g) {  // ∂L/∂h_{t-1} = Σ_g Re(W_gᴴ ∂L/∂a_g), and the factors' gradients
      __syncthreads();  // one 4N product (G = 1): its rows of ∂L/∂a were written by the cell's threads
      for (int j = threadIdx.x; j < no; j += blockDim.x) {
        d.xr[j] = a[g * no + j];
        d.xi[j] = T(0);
      }
      __syncthreads();
      const T* sr = block_ws + g * (plan.k + 1) * 2 * S;
      for (int f = plan.k - 1; f >= 0; --f, d.swap()) {
        accumulate_factor_grad<T, CPLX>(plan.s[f], d.xr, d.xi, sr + 2 * f * S, sr + (2 * f + 1) * S, redr, redi,
                                        bgr + g * W, bgi + g * W);
        DevStage adj = plan.s[f];
        adj.p = plan.s[f].q;
        adj.q = plan.s[f].p;
        stage<T, CPLX>(adj, awr + g * W, awi + g * W, d.xr, d.xi, d.yr, d.yi);
      }
      for (int n = threadIdx.x; n < N; n += blockDim.x) dh[n] += d.xr[n];
    }
  }
  for (int n = threadIdx.x; n < N; n += blockDim.x) {  // each thread its own n, as in the loop: no barrier
    gh0[b * N + n] = dh[n];
    gc0[b * N + n] = dc[n];
  }
}

// ---- register-resident kernels (the design in BENCHMARKS.md, "Performance model") ----
//
// 2×2 factors, N = 2^log_n: each thread holds kRegs = 2^kRegBits elements of the state in registers, the
// elements whose index bits [s, s + kRegBits) vary (a "layout" s; the thread number supplies the other bits).
// A factor on a bit of the current layout is applied in registers; a transpose through shared memory changes
// the layout. Group g applies the bits [g kRegBits, min((g + 1) kRegBits, log_n)) in layout s_g; the last
// group's layout overlaps its neighbour's when kRegBits does not divide log_n. Factor f acts on bit
// log_n - 1 - f (factor 0 on the most significant axis, as in the reference). kRegBits, the shared-memory
// sizes and the choice between these kernels and the fused ones are in kru_plan.h.

struct RegsPlan {
  int log_n, groups;
};

__device__ __forceinline__ int layout_start(const RegsPlan& p, int g) { return min(g * kRegBits, p.log_n - kRegBits); }

// Index of element e of thread `tid` in the layout starting at bit s.
__device__ __forceinline__ int regs_index(int s, int tid, int e) {
  return ((tid >> s) << (s + kRegBits)) | (e << s) | (tid & ((1 << s) - 1));
}

// The elements from layout `from` to layout `to` through buf (planes of N: real, then imaginary): write,
// barrier, read. Callers alternate buffers so that the next writes into one need no barrier before them.
template <typename T, bool CPLX>
__device__ __forceinline__ void regs_transpose(T* buf, int N, int from, int to, T (&xr)[kRegs], T (&xi)[kRegs]) {
  const int tid = threadIdx.x;
  KRU_UNROLL
  for (int e = 0; e < kRegs; ++e) {
    const int n = regs_index(from, tid, e);
    buf[n] = xr[e];
    if (CPLX) buf[N + n] = xi[e];
  }
  __syncthreads();
  KRU_UNROLL
  for (int e = 0; e < kRegs; ++e) {
    const int n = regs_index(to, tid, e);
    xr[e] = buf[n];
    xi[e] = CPLX ? buf[N + n] : T(0);
  }
}

// The factor on register bit J applied to the R elements a thread holds in registers: w points at the factor's
// four entries (planes, row-major).
template <int J, int R, typename T, bool CPLX>
__device__ __forceinline__ void reg_stage(const T* wr, const T* wi, T (&xr)[R], T (&xi)[R]) {
  const T a00r = wr[0], a01r = wr[1], a10r = wr[2], a11r = wr[3];
  const T a00i = CPLX ? wi[0] : T(0), a01i = CPLX ? wi[1] : T(0), a10i = CPLX ? wi[2] : T(0), a11i = CPLX ? wi[3] : T(0);
  KRU_UNROLL
  for (int e = 0; e < R; ++e) {
    if (e & (1 << J)) continue;
    const int e1 = e | (1 << J);
    const T x0r = xr[e], x0i = xi[e], x1r = xr[e1], x1i = xi[e1];
    xr[e] = a00r * x0r + a01r * x1r;
    xr[e1] = a10r * x0r + a11r * x1r;
    if (CPLX) {
      xr[e] += -a00i * x0i - a01i * x1i;
      xr[e1] += -a10i * x0i - a11i * x1i;
      xi[e] = a00r * x0i + a00i * x0r + a01r * x1i + a01i * x1r;
      xi[e1] = a10r * x0i + a10i * x0r + a11r * x1i + a11i * x1r;
    }
  }
}

// The backward of reg_stage<J>: x is the stage's input, d = ∂L/∂(its output) becomes ∂L/∂x = Aᴴ d, and this
// thread's part of the factor's gradient, Σ d x̄ᵀ over its elements, is added to g: entry k's real part at g[2 k],
// its imaginary part at g[2 k + 1].
template <int J, int R, typename T, bool CPLX>
__device__ __forceinline__ void reg_stage_backward(const T* wr, const T* wi, const T (&xr)[R], const T (&xi)[R],
                                                   T (&dr)[R], T (&di)[R], T (&g)[8]) {
  const T a00r = wr[0], a01r = wr[1], a10r = wr[2], a11r = wr[3];
  const T a00i = CPLX ? wi[0] : T(0), a01i = CPLX ? wi[1] : T(0), a10i = CPLX ? wi[2] : T(0), a11i = CPLX ? wi[3] : T(0);
  KRU_UNROLL
  for (int e = 0; e < R; ++e) {
    if (e & (1 << J)) continue;
    const int e1 = e | (1 << J);
    const T d0r = dr[e], d0i = di[e], d1r = dr[e1], d1i = di[e1];
    cmac_conj<T, CPLX>(d0r, d0i, xr[e], xi[e], g[0], g[1]);
    cmac_conj<T, CPLX>(d0r, d0i, xr[e1], xi[e1], g[2], g[3]);
    cmac_conj<T, CPLX>(d1r, d1i, xr[e], xi[e], g[4], g[5]);
    cmac_conj<T, CPLX>(d1r, d1i, xr[e1], xi[e1], g[6], g[7]);
    dr[e] = a00r * d0r + a10r * d1r;
    dr[e1] = a01r * d0r + a11r * d1r;
    if (CPLX) {
      dr[e] += a00i * d0i + a10i * d1i;
      dr[e1] += a01i * d0i + a11i * d1i;
      di[e] = a00r * d0i - a00i * d0r + a10r * d1i - a10i * d1r;
      di[e1] = a01r * d0i - a01i * d0r + a11r * d1i - a11i * d1r;
    }
  }
}

// The backward of reg_stage<J> on the kRegs elements of the register-resident kernels, the gradient's part added
// to acc (shared memory, entry k of the factor at acc[k · stride]: 4 real parts, then 4 imaginary parts).
template <int J, typename T, bool CPLX>
__device__ __forceinline__ void regs_stage_backward(const T* wr, const T* wi, const T (&xr)[kRegs],
                                                    const T (&xi)[kRegs], T (&dr)[kRegs], T (&di)[kRegs], T* acc,
                                                    int stride) {
  T g[8] = {};
  reg_stage_backward<J, kRegs, T, CPLX>(wr, wi, xr, xi, dr, di, g);
  KRU_UNROLL
  for (int k = 0; k < 4; ++k) {
    acc[k * stride] += g[2 * k];
    if (CPLX) acc[(4 + k) * stride] += g[2 * k + 1];
  }
}

// reg_stage<J> for a run-time register bit j.
template <typename T, bool CPLX>
__device__ __forceinline__ void regs_stage_at(int j, const T* wr, const T* wi, T (&xr)[kRegs], T (&xi)[kRegs]) {
  if (j == 0) reg_stage<0, kRegs, T, CPLX>(wr, wi, xr, xi);
  else if (j == 1) reg_stage<1, kRegs, T, CPLX>(wr, wi, xr, xi);
  else reg_stage<2, kRegs, T, CPLX>(wr, wi, xr, xi);
}

// The factors of group g in registers.
template <typename T, bool CPLX>
__device__ __forceinline__ void regs_group(const RegsPlan& p, int g, const T* wr, const T* wi, T (&xr)[kRegs],
                                           T (&xi)[kRegs]) {
  const int s = layout_start(p, g), hi = min((g + 1) * kRegBits, p.log_n);
  for (int bit = g * kRegBits; bit < hi; ++bit) {
    const int f = p.log_n - 1 - bit;
    regs_stage_at<T, CPLX>(bit - s, wr + 4 * f, wi + 4 * f, xr, xi);
  }
}

// The backward of regs_group: x is the group's input (its stages' inputs are recomputed from it, in
// registers), d = ∂L/∂(its output) becomes ∂L/∂x; factor f's gradient accumulators are at
// acc + (f · (CPLX ? 8 : 4)) · stride.
template <typename T, bool CPLX>
__device__ __forceinline__ void regs_group_backward(const RegsPlan& p, int g, const T* wr, const T* wi,
                                                    const T (&xr)[kRegs], const T (&xi)[kRegs], T (&dr)[kRegs],
                                                    T (&di)[kRegs], T* acc, int stride) {
  constexpr int E = CPLX ? 8 : 4;
  const int s = layout_start(p, g), lo = g * kRegBits, hi = min(lo + kRegBits, p.log_n);
  T yr[kRegBits][kRegs], yi[kRegBits][kRegs];  // the inputs of the group's stages (compile-time indices only)
  KRU_UNROLL
  for (int e = 0; e < kRegs; ++e) {
    yr[0][e] = xr[e];
    yi[0][e] = xi[e];
  }
  KRU_UNROLL
  for (int i = 1; i < kRegBits; ++i) {
    if (lo + i < hi) {
      KRU_UNROLL
      for (int e = 0; e < kRegs; ++e) {
        yr[i][e] = yr[i - 1][e];
        yi[i][e] = yi[i - 1][e];
      }
      const int f = p.log_n - lo - i;  // the factor of bit lo + i - 1
      regs_stage_at<T, CPLX>(lo + i - 1 - s, wr + 4 * f, wi + 4 * f, yr[i], yi[i]);
    }
  }
  KRU_UNROLL
  for (int i = kRegBits - 1; i >= 0; --i) {
    if (lo + i < hi) {
      const int f = p.log_n - 1 - lo - i, j = lo + i - s;
      T* a = acc + f * E * stride;
      if (j == 0) regs_stage_backward<0, T, CPLX>(wr + 4 * f, wi + 4 * f, yr[i], yi[i], dr, di, a, stride);
      else if (j == 1) regs_stage_backward<1, T, CPLX>(wr + 4 * f, wi + 4 * f, yr[i], yi[i], dr, di, a, stride);
      else regs_stage_backward<2, T, CPLX>(wr + 4 * f, wi + 4 * f, yr[i], yi[i], dr, di, a, stride);
    }
  }
}

// Shared memory: the factors' planes (2 · 4 log_n), two transpose buffers of N (real and imaginary planes).
// blockDim.x = N / kRegs. Block b runs sequence b. A step visits the groups in ascending order (even steps)
// or descending (odd steps), so it starts in the layout the previous one ended in: Kronecker factors on
// different bits commute. u_{t+1} (read from u, or computed from x by `in`) is loaded at the start of step t,
// in the layout step t + 1 ends in.
template <typename T, bool CPLX, int NL>
__global__ void recurrence_forward_regs_kernel(RegsPlan p, const T* wr_g, const T* wi_g, const T* u, const T* h0,
                                               const T* bias, T* H, int steps, InputMap<T> in) {
  KRU_DYNAMIC_SHARED(smem);
  constexpr int C = CPLX ? 2 : 1;
  const int N = 1 << p.log_n, wsize = 4 * p.log_n, tid = threadIdx.x;
  T* wr = reinterpret_cast<T*>(smem);
  T* wi = wr + wsize;
  T *buf0 = wi + wsize, *buf1 = buf0 + 2 * N;
  const long b = blockIdx.x;
  load_factors(wr_g, wi_g, wsize, wr, wi);
  const int first = layout_start(p, 0), last = layout_start(p, p.groups - 1);
  // u's element e of the (B, T, N) sequence at step t
  auto u_at = [&](int t, int n, int part) { return in.x ? in.at(b, t, steps, n * C + part) : u[((b * steps + t) * N + n) * C + part]; };
  T xr[kRegs], xi[kRegs], ur[kRegs], ui[kRegs], bias_first[kRegs], bias_last[kRegs];
  KRU_UNROLL
  for (int e = 0; e < kRegs; ++e) {
    const int n0 = regs_index(first, tid, e), n1 = regs_index(last, tid, e);
    xr[e] = h0[(b * N + n0) * C];
    xi[e] = CPLX ? h0[(b * N + n0) * C + 1] : T(0);
    bias_first[e] = bias[n0];
    bias_last[e] = bias[n1];
    ur[e] = steps > 0 ? u_at(0, n1, 0) : T(0);  // u_0, in the layout step 0 ends in
    ui[e] = CPLX && steps > 0 ? u_at(0, n1, 1) : T(0);
  }
  __syncthreads();  // the factors
  int parity = 0;
  for (int t = 0; t < steps; ++t) {
    const bool forward = (t & 1) == 0;
    const int start = forward ? first : last, end = forward ? last : first;
    T nr[kRegs] = {}, ni[kRegs] = {};  // u_{t+1}, in the layout step t+1 ends in (the one this step starts in)
    if (t + 1 < steps) {
      KRU_UNROLL
      for (int e = 0; e < kRegs; ++e) {
        const int n = regs_index(start, tid, e);
        nr[e] = u_at(t + 1, n, 0);
        ni[e] = CPLX ? u_at(t + 1, n, 1) : T(0);
      }
    }
    for (int i = 0; i < p.groups; ++i) {
      const int g = forward ? i : p.groups - 1 - i;
      if (i > 0) {
        regs_transpose<T, CPLX>(parity ? buf1 : buf0, N, layout_start(p, forward ? g - 1 : g + 1), layout_start(p, g),
                                xr, xi);
        parity ^= 1;
      }
      regs_group<T, CPLX>(p, g, wr, wi, xr, xi);
    }
    T* ht = H + (b * steps + t) * N * C;
    KRU_UNROLL
    for (int e = 0; e < kRegs; ++e) {  // h_t = σ(W h_{t-1} + u_t), in the layout `end`
      T hr, hi;
      nl_forward<NL, T, CPLX>(xr[e] + ur[e], CPLX ? xi[e] + ui[e] : T(0), forward ? bias_last[e] : bias_first[e], hr,
                              hi);
      xr[e] = hr;
      xi[e] = hi;
      const int n = regs_index(end, tid, e);
      ht[n * C] = hr;
      if (CPLX) ht[n * C + 1] = hi;
      ur[e] = nr[e];
      ui[e] = ni[e];
    }
  }
}

// Shared memory: the factors' planes (2 · 4 log_n); groups - 1 buffers of N (real, imaginary planes), the
// recomputed inputs of groups 1 ... groups - 1; two transpose buffers of N; the factor-gradient accumulators
// acc[(f E + k) threads + tid] (E = 8 reals a complex factor, 4 a real one). blockDim.x = N / kRegs; block b
// runs sequence b. A step (t from T - 1 down): recompute the groups' inputs from h_{t-1} in ascending order
// (each kept in its buffer, in the layout its group reads), ∂L/∂z_t = σ'(∂L/∂h_t) in the last group's
// layout, then the groups' adjoints in descending order (factor gradients into the accumulators), which
// ends in the first group's layout, and one transpose carries ∂L/∂h_{t-1} to the last group's layout.
// Reads H, never u; gu may be gH itself (each element is read, then written, by one thread). The factor
// gradients are summed over the block's threads once at the end: no atomics.
template <typename T, bool CPLX, int NL>
__global__ void recurrence_backward_regs_kernel(RegsPlan p, const T* wr_g, const T* wi_g, const T* h0, const T* H,
                                                const T* gH, const T* bias, int steps, T* gu, T* gh0, T* gwr, T* gwi,
                                                T* gb) {
  KRU_DYNAMIC_SHARED(smem);
  constexpr int C = CPLX ? 2 : 1, E = CPLX ? 8 : 4;
  const int N = 1 << p.log_n, wsize = 4 * p.log_n, tid = threadIdx.x, threads = blockDim.x;
  T* wr = reinterpret_cast<T*>(smem);
  T* wi = wr + wsize;
  T* inputs = wi + wsize;  // group g's input (g >= 1) at inputs + 2 N (g - 1)
  T* buf0 = inputs + 2 * N * (p.groups - 1);
  T* buf1 = buf0 + 2 * N;
  T* acc = buf1 + 2 * N;
  const long b = blockIdx.x;
  load_factors(wr_g, wi_g, wsize, wr, wi);
  for (int k = 0; k < E * p.log_n; ++k) acc[k * threads + tid] = T(0);  // this thread's own: no barrier
  const int first = layout_start(p, 0), last = layout_start(p, p.groups - 1);
  T dr[kRegs] = {}, di[kRegs] = {}, db[kRegs] = {}, bias_last[kRegs];  // ∂L/∂h_t carried, in the layout `last`
  KRU_UNROLL
  for (int e = 0; e < kRegs; ++e) bias_last[e] = bias[regs_index(last, tid, e)];
  __syncthreads();  // the factors
  int parity = 0;
  for (int t = steps - 1; t >= 0; --t) {
    const T* hp = t > 0 ? H + (b * steps + t - 1) * N * C : h0 + b * N * C;
    T x0r[kRegs], x0i[kRegs], xr[kRegs], xi[kRegs];  // h_{t-1} (group 0's input), the current group's input
    KRU_UNROLL
    for (int e = 0; e < kRegs; ++e) {
      const int n = regs_index(first, tid, e);
      xr[e] = x0r[e] = hp[n * C];
      xi[e] = x0i[e] = CPLX ? hp[n * C + 1] : T(0);
    }
    for (int g = 0; g + 1 < p.groups; ++g) {  // ends with the last group's input in x
      regs_group<T, CPLX>(p, g, wr, wi, xr, xi);
      regs_transpose<T, CPLX>(inputs + 2 * N * g, N, layout_start(p, g), layout_start(p, g + 1), xr, xi);
    }
    const long row = (b * steps + t) * N * C;
    KRU_UNROLL
    for (int e = 0; e < kRegs; ++e) {  // ∂L/∂z_t from ∂L/∂h_t = the carried d + gH_t, in place
      const long at = row + regs_index(last, tid, e) * C;
      T dzr, dzi;
      nl_backward<NL, T, CPLX>(H[at], CPLX ? H[at + 1] : T(0), bias_last[e], dr[e] + gH[at],
                               CPLX ? di[e] + gH[at + 1] : T(0), dzr, dzi, db[e]);
      dr[e] = dzr;
      di[e] = dzi;
      gu[at] = dzr;
      if (CPLX) gu[at + 1] = dzi;
    }
    for (int g = p.groups - 1; g >= 0; --g) {  // ends with ∂L/∂h_{t-1} in d, in the layout `first`
      if (g == 0) {  // group g's input: h_{t-1}, or as this thread read it from its buffer above
        KRU_UNROLL
        for (int e = 0; e < kRegs; ++e) {
          xr[e] = x0r[e];
          xi[e] = x0i[e];
        }
      } else if (g + 1 < p.groups) {
        const T* in_g = inputs + 2 * N * (g - 1);
        KRU_UNROLL
        for (int e = 0; e < kRegs; ++e) {
          const int n = regs_index(layout_start(p, g), tid, e);
          xr[e] = in_g[n];
          xi[e] = CPLX ? in_g[N + n] : T(0);
        }
      }
      regs_group_backward<T, CPLX>(p, g, wr, wi, xr, xi, dr, di, acc + tid, threads);
      if (g > 0) {
        regs_transpose<T, CPLX>(parity ? buf1 : buf0, N, layout_start(p, g), layout_start(p, g - 1), dr, di);
        parity ^= 1;
      }
    }
    if (p.groups > 1) {  // to the layout the next step's ∂L/∂z is in
      regs_transpose<T, CPLX>(parity ? buf1 : buf0, N, first, last, dr, di);
      parity ^= 1;
    }
  }
  KRU_UNROLL
  for (int e = 0; e < kRegs; ++e) {
    const int n = regs_index(last, tid, e);
    gh0[(b * N + n) * C] = dr[e];
    if (CPLX) gh0[(b * N + n) * C + 1] = di[e];
    gb[b * N + n] = db[e];
  }
  // No barrier: every thread's accumulators were last written before the barrier of the last transpose (one
  // group: one thread), or, with no step, zeroed before the factors' barrier.
  for (int item = tid; item < E * p.log_n; item += threads) {
    T sum = 0;
    for (int k = 0; k < threads; ++k) sum += acc[item * threads + k];
    const int f = item / E, k = item % E;
    (k < 4 ? gwr : gwi)[b * wsize + 4 * f + k % 4] = sum;
  }
}

// ---- one warp a sequence (small N: 32, 64, 128) ----
//
// 2×2 factors, N = 32 R: lane l holds the R = 2^RB elements n = l R + e. Index bits below RB are a lane's
// registers (a factor on one is applied in registers, by reg_stage); bit RB + L is lane bit L, whose factor
// pairs each element with the one lane l ^ 2^L holds (__shfl_xor_sync), so no shared memory and no block
// barrier is needed after the factors are loaded. kWarpSeqs sequences a block, one a warp; blocks of whole
// warps, so a warp without a sequence leaves as a whole.

// The factor on lane bit L applied to the R elements of this lane: the partner's elements by shuffles; this lane
// computes output row i (its bit L): y_i = a_ii x_i + a_i,1-i x_1-i.
template <int R, typename T, bool CPLX>
__device__ __forceinline__ void lane_stage(int L, const T* wr, const T* wi, T (&xr)[R], T (&xi)[R]) {
  const int i = (threadIdx.x >> L) & 1;
  const T sr = wr[3 * i], si = CPLX ? wi[3 * i] : T(0), or_ = wr[1 + i], oi = CPLX ? wi[1 + i] : T(0);  // a_ii, a_i,1-i
  KRU_UNROLL
  for (int e = 0; e < R; ++e) {
    const T pr = __shfl_xor_sync(0xffffffffu, xr[e], 1 << L);
    const T pi = CPLX ? __shfl_xor_sync(0xffffffffu, xi[e], 1 << L) : T(0);
    const T x0r = xr[e], x0i = xi[e];
    xr[e] = sr * x0r + or_ * pr;
    if (CPLX) {
      xr[e] += -si * x0i - oi * pi;
      xi[e] = sr * x0i + si * x0r + or_ * pi + oi * pr;
    }
  }
}

// The backward of lane_stage: x its input, d = ∂L/∂(its output) becomes Aᴴ d: this lane's element of it is
// conj(a_ii) d_i + conj(a_1-i,i) d_1-i. This lane's part of the factor gradient, row i: diag += d_i conj(x_i),
// off += d_i conj(x_1-i).
template <int R, typename T, bool CPLX>
__device__ __forceinline__ void lane_stage_backward(int L, const T* wr, const T* wi, const T (&xr)[R],
                                                    const T (&xi)[R], T (&dr)[R], T (&di)[R], T (&g)[4]) {
  const int i = (threadIdx.x >> L) & 1;
  const T sr = wr[3 * i], si = CPLX ? wi[3 * i] : T(0), cr = wr[2 - i], ci = CPLX ? wi[2 - i] : T(0);  // a_ii, a_1-i,i
  KRU_UNROLL
  for (int e = 0; e < R; ++e) {
    const T pxr = __shfl_xor_sync(0xffffffffu, xr[e], 1 << L);
    const T pxi = CPLX ? __shfl_xor_sync(0xffffffffu, xi[e], 1 << L) : T(0);
    const T pdr = __shfl_xor_sync(0xffffffffu, dr[e], 1 << L);
    const T pdi = CPLX ? __shfl_xor_sync(0xffffffffu, di[e], 1 << L) : T(0);
    const T d0r = dr[e], d0i = di[e];
    cmac_conj<T, CPLX>(d0r, d0i, xr[e], xi[e], g[0], g[1]);
    cmac_conj<T, CPLX>(d0r, d0i, pxr, pxi, g[2], g[3]);
    dr[e] = sr * d0r + cr * pdr;
    if (CPLX) {
      dr[e] += si * d0i + ci * pdi;
      di[e] = sr * d0i - si * d0r + cr * pdi - ci * pdr;
    }
  }
}

// Index bit `bit` (of LOG_N = RB + 5) of a warp's state: its factor (log_n - 1 - bit) applied.
template <int RB, typename T, bool CPLX>
__device__ __forceinline__ void warp_stage(int bit, const T* wr, const T* wi, T (&xr)[1 << RB], T (&xi)[1 << RB]) {
  constexpr int R = 1 << RB, LOG_N = RB + 5;
  const int f = LOG_N - 1 - bit;
  if (bit >= RB) {
    lane_stage<R, T, CPLX>(bit - RB, wr + 4 * f, wi + 4 * f, xr, xi);
  } else if constexpr (RB > 0) {  // RB <= 2: register bit 0 or 1
    if (bit == 0) reg_stage<0, R, T, CPLX>(wr + 4 * f, wi + 4 * f, xr, xi);
    else reg_stage<(RB > 1 ? 1 : 0), R, T, CPLX>(wr + 4 * f, wi + 4 * f, xr, xi);
  }
}

constexpr int kWarpSeqs = 4;  // sequences (warps) a block

// Shared memory: the factors' planes (2 · 4 LOG_N). blockDim.x = 32 kWarpSeqs; warp w of block c runs sequence
// c kWarpSeqs + w. u_{t+1} (read from u, or computed by `in`) is loaded at the start of step t.
template <int RB, typename T, bool CPLX, int NL>
__global__ void recurrence_forward_warp_kernel(int batch, const T* wr_g, const T* wi_g, const T* u, const T* h0,
                                               const T* bias, T* H, int steps, InputMap<T> in) {
  KRU_DYNAMIC_SHARED(smem);
  constexpr int C = CPLX ? 2 : 1, R = 1 << RB, LOG_N = RB + 5, N = 32 * R;
  T* wr = reinterpret_cast<T*>(smem);
  T* wi = wr + 4 * LOG_N;
  load_factors(wr_g, wi_g, 4 * LOG_N, wr, wi);
  __syncthreads();  // the factors
  const long b = static_cast<long>(blockIdx.x) * kWarpSeqs + threadIdx.x / 32;
  if (b >= batch) return;  // a whole warp
  const int n0 = (threadIdx.x % 32) * R;  // this lane's first element
  auto u_at = [&](int t, int n, int part) { return in.x ? in.at(b, t, steps, n * C + part) : u[((b * steps + t) * N + n) * C + part]; };
  T xr[R], xi[R], ur[R], ui[R], bs[R];
  KRU_UNROLL
  for (int e = 0; e < R; ++e) {
    xr[e] = h0[(b * N + n0 + e) * C];
    xi[e] = CPLX ? h0[(b * N + n0 + e) * C + 1] : T(0);
    bs[e] = bias[n0 + e];
    ur[e] = steps > 0 ? u_at(0, n0 + e, 0) : T(0);
    ui[e] = CPLX && steps > 0 ? u_at(0, n0 + e, 1) : T(0);
  }
  for (int t = 0; t < steps; ++t) {
    T nr[R] = {}, ni[R] = {};  // u_{t+1}
    if (t + 1 < steps) {
      KRU_UNROLL
      for (int e = 0; e < R; ++e) {
        nr[e] = u_at(t + 1, n0 + e, 0);
        ni[e] = CPLX ? u_at(t + 1, n0 + e, 1) : T(0);
      }
    }
    KRU_UNROLL
    for (int bit = 0; bit < LOG_N; ++bit) warp_stage<RB, T, CPLX>(bit, wr, wi, xr, xi);
    T* ht = H + ((b * steps + t) * N + n0) * C;
    KRU_UNROLL
    for (int e = 0; e < R; ++e) {  // h_t = σ(W h_{t-1} + u_t)
      T hr, hi;
      nl_forward<NL, T, CPLX>(xr[e] + ur[e], CPLX ? xi[e] + ui[e] : T(0), bs[e], hr, hi);
      xr[e] = hr;
      xi[e] = hi;
      ht[e * C] = hr;
      if (CPLX) ht[e * C + 1] = hi;
      ur[e] = nr[e];
      ui[e] = ni[e];
    }
  }
}

// f(std::integral_constant<int, I>{}) for I = FROM ... TO - 1: loops whose index must be a compile-time constant
// (it indexes register arrays), whatever the compiler's unrolling decides.
template <int FROM, int TO, typename F>
__device__ __forceinline__ void static_for(F&& f) {
  if constexpr (FROM < TO) {
    f(std::integral_constant<int, FROM>{});
    static_for<FROM + 1, TO>(f);
  }
}

// Sum over the warp's lanes.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  KRU_UNROLL
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// Shared memory: the factors' planes. As the forward, one warp a sequence. A step (t from T - 1 down): the
// stages' inputs recomputed from h_{t-1} into registers, ∂L/∂z_t = σ'(∂L/∂h_t), the adjoint stages in reverse
// with each factor's gradient summed in this lane's registers over all steps; at the end the lanes' sums are
// summed by shuffles into the sequence's row of gwr, gwi (B, Σ p q): no atomics. gu may be gH itself.
template <int RB, typename T, bool CPLX, int NL>
__global__ void recurrence_backward_warp_kernel(int batch, const T* wr_g, const T* wi_g, const T* h0, const T* H,
                                                const T* gH, const T* bias, int steps, T* gu, T* gh0, T* gwr, T* gwi,
                                                T* gb) {
  KRU_DYNAMIC_SHARED(smem);
  constexpr int C = CPLX ? 2 : 1, R = 1 << RB, LOG_N = RB + 5, N = 32 * R;
  T* wr = reinterpret_cast<T*>(smem);
  T* wi = wr + 4 * LOG_N;
  load_factors(wr_g, wi_g, 4 * LOG_N, wr, wi);
  __syncthreads();  // the factors
  const long b = static_cast<long>(blockIdx.x) * kWarpSeqs + threadIdx.x / 32;
  if (b >= batch) return;  // a whole warp
  const int lane = threadIdx.x % 32, n0 = lane * R;
  T dr[R] = {}, di[R] = {}, db[R] = {}, bs[R];  // ∂L/∂h_t carried
  T greg[RB > 0 ? RB : 1][8] = {}, glane[5][4] = {};  // factor-gradient sums: register bits, lane bits
  KRU_UNROLL
  for (int e = 0; e < R; ++e) bs[e] = bias[n0 + e];
  for (int t = steps - 1; t >= 0; --t) {
    const T* hp = (t > 0 ? H + (b * steps + t - 1) * N * C : h0 + b * N * C) + n0 * C;
    T yr[LOG_N][R], yi[LOG_N][R];  // yr[bit]: the input of bit's stage
    KRU_UNROLL
    for (int e = 0; e < R; ++e) {
      yr[0][e] = hp[e * C];
      yi[0][e] = CPLX ? hp[e * C + 1] : T(0);
    }
    static_for<1, LOG_N>([&](auto i) {
      constexpr int bit = decltype(i)::value;
      KRU_UNROLL
      for (int e = 0; e < R; ++e) {
        yr[bit][e] = yr[bit - 1][e];
        yi[bit][e] = yi[bit - 1][e];
      }
      warp_stage<RB, T, CPLX>(bit - 1, wr, wi, yr[bit], yi[bit]);
    });
    const long row = ((b * steps + t) * N + n0) * C;
    KRU_UNROLL
    for (int e = 0; e < R; ++e) {  // ∂L/∂z_t from ∂L/∂h_t = the carried d + gH_t, in place
      const long at = row + e * C;
      T dzr, dzi;
      nl_backward<NL, T, CPLX>(H[at], CPLX ? H[at + 1] : T(0), bs[e], dr[e] + gH[at], CPLX ? di[e] + gH[at + 1] : T(0),
                               dzr, dzi, db[e]);
      dr[e] = dzr;
      di[e] = dzi;
      gu[at] = dzr;
      if (CPLX) gu[at + 1] = dzi;
    }
    static_for<0, LOG_N>([&](auto i) {
      constexpr int f = decltype(i)::value, bit = LOG_N - 1 - f;  // the stages in reverse
      if constexpr (bit >= RB)
        lane_stage_backward<R, T, CPLX>(bit - RB, wr + 4 * f, wi + 4 * f, yr[bit], yi[bit], dr, di, glane[bit - RB]);
      else
        reg_stage_backward<bit, R, T, CPLX>(wr + 4 * f, wi + 4 * f, yr[bit], yi[bit], dr, di, greg[bit]);
    });
  }
  KRU_UNROLL
  for (int e = 0; e < R; ++e) {
    gh0[(b * N + n0 + e) * C] = dr[e];
    if (CPLX) gh0[(b * N + n0 + e) * C + 1] = di[e];
    gb[b * N + n0 + e] = db[e];
  }
  T* rowr = gwr + b * 4 * LOG_N;
  T* rowi = gwi + b * 4 * LOG_N;
  static_for<0, RB>([&](auto i) {  // entry k of the factor: greg[bit][2 k] (re), [2 k + 1] (im)
    constexpr int bit = decltype(i)::value;
    KRU_UNROLL
    for (int k = 0; k < 4; ++k) {
      const T sr = warp_sum(greg[bit][2 * k]), si = warp_sum(greg[bit][2 * k + 1]);
      if (lane == 0) {
        rowr[4 * (LOG_N - 1 - bit) + k] = sr;
        rowi[4 * (LOG_N - 1 - bit) + k] = si;
      }
    }
  });
  static_for<0, 5>([&](auto i) {  // lane bit L: row i's (diagonal, off-diagonal) sums from the lanes with bit i
    constexpr int L = decltype(i)::value;
    const bool one = (lane >> L) & 1;
    T s[8];  // a00, a01, a10, a11 (re, im): a_ii is diagonal, a_i,1-i off-diagonal
    s[0] = warp_sum(one ? T(0) : glane[L][0]);
    s[1] = warp_sum(one ? T(0) : glane[L][1]);
    s[2] = warp_sum(one ? T(0) : glane[L][2]);
    s[3] = warp_sum(one ? T(0) : glane[L][3]);
    s[4] = warp_sum(one ? glane[L][2] : T(0));
    s[5] = warp_sum(one ? glane[L][3] : T(0));
    s[6] = warp_sum(one ? glane[L][0] : T(0));
    s[7] = warp_sum(one ? glane[L][1] : T(0));
    if (lane == 0) {
      const int f = LOG_N - 1 - (RB + L);
      KRU_UNROLL
      for (int k = 0; k < 4; ++k) {
        rowr[4 * f + k] = s[2 * k];
        rowi[4 * f + k] = s[2 * k + 1];
      }
    }
  });
}

// ---- tiled kernels: several sequences a block, large factors as matrix products ----
//
// Block c runs the ns sequences b0 = c S ... b0 + ns - 1 (S = seqs; ns = S but in the last block), their states
// back to back in shared memory, so that a stage over them is the stage with pre · ns: ns·pre·post rows (a, r)
// of q inputs. A factor of tiled_entries entries or more (kru_plan.h: PTB's 137×137 and 331×331) is applied as
// the matrix product of those rows with its transpose (tiled_stage); smaller ones as in the fused kernels
// (stage(), a thread an output, their entries through L1). Backward as the fused one, over the block's
// sequences: the factor gradients summed in the kernel are the block's (B / S partials), the last large
// factor's one matrix product after the kernel.

// The k-slices' partial sums of a register tile added up: slices z > 0 put theirs in buf (planes of `slots`
// entries, after every thread is done with it), slice 0 adds them. slot: this thread's place among the slices
// 1 ... ks - 1 (z - 1) grid + j, `grid` threads a slice; entry e of the tile at e · slots + slot.
template <typename T, bool CPLX>
__device__ __forceinline__ void sum_slices(T (&accr)[kTileRows][kTileCols], T (&acci)[kTileRows][kTileCols],
                                           bool busy, int z, int j, int grid, int ks, T* buf_r, T* buf_i) {
  const int slots = (ks - 1) * grid;
  __syncthreads();  // every slice has read the tile: buf takes the partial sums
  KRU_UNROLL
  for (int e = 0; e < kTileRows * kTileCols; ++e) {
    if (busy && z > 0) {
      buf_r[e * slots + (z - 1) * grid + j] = accr[e / kTileCols][e % kTileCols];
      if (CPLX) buf_i[e * slots + (z - 1) * grid + j] = acci[e / kTileCols][e % kTileCols];
    }
  }
  __syncthreads();
  if (busy && z == 0) {
    for (int other = 0; other + 1 < ks; ++other) {
      KRU_UNROLL
      for (int e = 0; e < kTileRows * kTileCols; ++e) {
        accr[e / kTileCols][e % kTileCols] += buf_r[e * slots + other * grid + j];
        if (CPLX) acci[e / kTileCols][e % kTileCols] += buf_i[e * slots + other * grid + j];
      }
    }
  }
}

// Rows (a, r) of stage s: Y (R × p) = X (R × q) Fᵀ, R = pre·post. m holds F's conjugate transpose (q × p planes,
// as factor_planes(adjoint) gives it: a tile's loads run along its rows, coalesced), F(i, j) = conj(m[j p + i]).
// A grid of rt × ct threads covers a pass of rt kTileRows rows by bc = ct kTileCols columns, each thread a
// register tile of kTileRows rows (ty + rt m) by kTileCols columns (tx + ct n); the inputs come in chunks of bk,
// the chunk's factor tile (bk × bc, conjugated as loaded: F's entries) loaded into (tile_r, tile_i) by all
// threads and used by every row. Few rows or columns (one PTB sequence: 3 rows) leave threads over: ks grids
// (k-slices) take every ks-th input of a chunk each, their partial sums added up through the tile buffer at the
// pass's end (sum_slices). Threads past ks grids only load tiles. Ends with a barrier.
template <typename T, bool CPLX>
__device__ void tiled_stage(const DevStage& s, const T* mr, const T* mi, const T* xr, const T* xi, T* yr, T* yi,
                            T* tile_r, T* tile_i, int tile_entries) {
  constexpr int kTile = kTileRows * kTileCols;
  const int R = s.pre * s.post, threads = blockDim.x;
  const int rt = min(kTiledMaxRowGroups, (R + kTileRows - 1) / kTileRows);  // as few padded rows and columns as can be
  const int ct = min(threads / rt, (s.p + kTileCols - 1) / kTileCols), grid = rt * ct;
  const int ks = max(1, min(threads / grid, 1 + tile_entries / (kTile * grid)));  // the partial sums fit the tile
  const int bc = ct * kTileCols, bk = tile_entries / bc;
  const int z = threadIdx.x / grid, j = threadIdx.x % grid, ty = j / ct, tx = j % ct;
  const bool busy = z < ks;
  for (int r0 = 0; r0 < R; r0 += rt * kTileRows) {
    for (int c0 = 0; c0 < s.p; c0 += bc) {
      int xo[kTileRows], yo[kTileRows];
      KRU_UNROLL
      for (int m = 0; m < kTileRows; ++m) {  // rows past R are clamped: computed, not stored
        const int row = min(r0 + ty + rt * m, R - 1), a = row / s.post, r = row % s.post;
        xo[m] = stage_index(a, 0, r, s.q, s.post);
        yo[m] = stage_index(a, 0, r, s.p, s.post);
      }
      T accr[kTileRows][kTileCols] = {}, acci[kTileRows][kTileCols] = {};
      for (int k0 = 0; k0 < s.q; k0 += bk) {
        for (int e = threadIdx.x; e < bk * bc; e += threads) {  // zeros past q and p
          const int k = k0 + e / bc, c = c0 + e % bc;
          const bool in = k < s.q && c < s.p;
          tile_r[e] = in ? mr[s.woff + k * s.p + c] : T(0);
          tile_i[e] = in && CPLX ? -mi[s.woff + k * s.p + c] : T(0);
        }
        __syncthreads();
        const int kn = min(bk, s.q - k0);
        for (int kk = z; busy && kk < kn; kk += ks) {
          const int k = k0 + kk;
          T x_r[kTileRows], x_i[kTileRows], w_r[kTileCols], w_i[kTileCols];
          KRU_UNROLL
          for (int m = 0; m < kTileRows; ++m) {
            x_r[m] = xr[xo[m] + k * s.post];
            x_i[m] = CPLX ? xi[xo[m] + k * s.post] : T(0);
          }
          KRU_UNROLL
          for (int n = 0; n < kTileCols; ++n) {
            w_r[n] = tile_r[kk * bc + tx + ct * n];
            w_i[n] = CPLX ? tile_i[kk * bc + tx + ct * n] : T(0);
          }
          KRU_UNROLL
          for (int m = 0; m < kTileRows; ++m) {
            KRU_UNROLL
            for (int n = 0; n < kTileCols; ++n) {  // y += F(i, k) x_k
              accr[m][n] += w_r[n] * x_r[m];
              if (CPLX) {
                accr[m][n] -= w_i[n] * x_i[m];
                acci[m][n] += w_r[n] * x_i[m] + w_i[n] * x_r[m];
              }
            }
          }
        }
        if (k0 + bk >= s.q && ks > 1) sum_slices<T, CPLX>(accr, acci, busy, z, j, grid, ks, tile_r, tile_i);
        if (busy && z == 0 && k0 + bk >= s.q) {  // the pass's last chunk: its outputs, ordered by the barrier below
          KRU_UNROLL
          for (int m = 0; m < kTileRows; ++m) {
            KRU_UNROLL
            for (int n = 0; n < kTileCols; ++n) {
              const int c = c0 + tx + ct * n;
              if (r0 + ty + rt * m < R && c < s.p) {
                yr[yo[m] + c * s.post] = accr[m][n];
                if (CPLX) yi[yo[m] + c * s.post] = acci[m][n];
              }
            }
          }
        }
        __syncthreads();  // the tile (or the partial sums in it) is overwritten next
      }
    }
  }
}

// What a tiled kernel's stage needs: the factors' planes (w) and their conjugate transposes' (aw), the block's
// sequences ns, the factor tile's planes of tile_entries each, and the size from which a factor runs tiled.
template <typename T>
struct TiledFactors {
  const T *wr, *wi, *awr, *awi;
  int ns, tile_entries;
  long tiled_entries;
  T* tile;
};

// Stage s over the block's sequences, tiled when its factor is large; adjoint: its factor's conjugate transpose
// instead, from p back to q. Ends with a barrier.
template <typename T, bool CPLX>
__device__ void block_stage(DevStage s, bool adjoint, const TiledFactors<T>& w, const T* xr, const T* xi, T* yr,
                            T* yi) {
  s.pre *= w.ns;
  if (adjoint) {
    const int p = s.p;
    s.p = s.q;
    s.q = p;
  }
  const T *fr = adjoint ? w.awr : w.wr, *fi = adjoint ? w.awi : w.wi;  // the stage's factor
  const T *mr = adjoint ? w.wr : w.awr, *mi = adjoint ? w.wi : w.awi;  // its conjugate transpose
  if (tiled_factor(s.p, s.q, w.tiled_entries))
    tiled_stage<T, CPLX>(s, mr, mi, xr, xi, yr, yi, w.tile, w.tile + w.tile_entries, w.tile_entries);
  else
    stage<T, CPLX>(s, fr, fi, xr, xi, yr, yi);
}

// Shared memory: a PingPong of seqs · max_size (the block's states back to back, N apart between steps), the
// reduction scratch (unused here: the backward's size), the factor tile (2 tile_entries). Factors from global
// memory.
template <typename T, bool CPLX, int NL>
__global__ void recurrence_forward_tiled_kernel(DevPlan plan, int batch, int seqs, TiledFactors<T> w, const T* u,
                                                const T* h0, const T* bias, T* H, int steps, InputMap<T> in) {
  KRU_DYNAMIC_SHARED(smem);
  constexpr int C = CPLX ? 2 : 1;
  const int N = plan.n_in, M = seqs * plan.max_size;
  const long b0 = static_cast<long>(blockIdx.x) * seqs;
  w.ns = min(seqs, static_cast<int>(batch - b0));
  T* at = reinterpret_cast<T*>(smem);
  PingPong<T> h(at, M);
  w.tile = at + 4 * M + 2 * blockDim.x;
  load_planes(h0 + b0 * N * C, w.ns * N, CPLX, h.xr, h.xi);
  __syncthreads();
  for (int t = 0; t < steps; ++t) {
    for (int f = 0; f < plan.k; ++f, h.swap()) block_stage<T, CPLX>(plan.s[f], false, w, h.xr, h.xi, h.yr, h.yi);
    for (int n = threadIdx.x; n < N; n += blockDim.x)  // h_t = σ(W h_{t-1} + u_t), in place
      for (int q = 0; q < w.ns; ++q)
        step_output<T, CPLX, NL>(u, in, bias, H, b0 + q, t, steps, N, n, h.xr[q * N + n], h.xi[q * N + n]);
    __syncthreads();
  }
}

// Shared memory: a PingPong of seqs · max_size for ∂L/∂h_t and the adjoint stages, the reduction scratch
// (2 blockDim), the factor tile (2 tile_entries). Global scratch ws: this block's stage inputs, (k + 1) × 2 ×
// seqs · max_size. gwr, gwi, gb: a row per block. Each n's elements (every sequence's) are one thread's, so that
// the bias gradient gb[n] has one writer.
template <typename T, bool CPLX, int NL>
__global__ void recurrence_backward_tiled_kernel(DevPlan plan, int batch, int seqs, TiledFactors<T> w, const T* h0,
                                                 const T* H, const T* gH, const T* bias, int steps, T* gu, T* gh0,
                                                 T* gwr, T* gwi, T* gb, T* ws, int grad_stages) {
  KRU_DYNAMIC_SHARED(smem);
  constexpr int C = CPLX ? 2 : 1;
  const int N = plan.n_in, M = seqs * plan.max_size, red = blockDim.x;
  const long b0 = static_cast<long>(blockIdx.x) * seqs;
  w.ns = min(seqs, static_cast<int>(batch - b0));
  T* at = reinterpret_cast<T*>(smem);
  PingPong<T> d(at, M);
  T *redr = at + 4 * M, *redi = redr + red;
  w.tile = redi + red;
  T* sr = ws + blockIdx.x * (plan.k + 1) * 2 * static_cast<long>(M);  // stage input f: planes sr + 2 f M, + M
  T *bgr = gwr + blockIdx.x * plan.wsize, *bgi = gwi + blockIdx.x * plan.wsize, *bgb = gb + blockIdx.x * N;
  for (int e = threadIdx.x; e < w.ns * N; e += blockDim.x) d.xr[e] = d.xi[e] = T(0);  // ∂L/∂h_T: none
  for (int t = steps - 1; t >= 0; --t) {
    // The barrier after this load also orders the zeros above (read below, and by store_planes after the loop
    // when steps = 0, by the threads that wrote them).
    for (int e = threadIdx.x; e < w.ns * N; e += blockDim.x) {  // h_{t-1} of each sequence
      const long b = b0 + e / N, n = e % N;
      const T* hp = t > 0 ? H + ((b * steps + t - 1) * N + n) * C : h0 + (b * N + n) * C;
      sr[e] = hp[0];
      sr[M + e] = CPLX ? hp[1] : T(0);
    }
    __syncthreads();
    for (int f = 0; f + 1 < grad_stages; ++f)  // recompute the inputs of the stages whose gradients are summed here
      block_stage<T, CPLX>(plan.s[f], false, w, sr + 2 * f * M, sr + (2 * f + 1) * M, sr + 2 * (f + 1) * M,
                           sr + (2 * (f + 1) + 1) * M);
    for (int n = threadIdx.x; n < N; n += blockDim.x)  // ∂L/∂z_t from ∂L/∂h_t = the carried d.x + gH_t, in place
      for (int q = 0; q < w.ns; ++q)
        step_input_grad<T, CPLX, NL>(H, gH, bias, gu, b0 + q, t, steps, N, n, d.xr[q * N + n], d.xi[q * N + n],
                                     bgb[n]);
    __syncthreads();
    for (int f = plan.k - 1; f >= 0; --f, d.swap()) {  // ends with ∂L/∂h_{t-1} in d.x
      DevStage st = plan.s[f];
      if (f < grad_stages) {  // summed over the block's sequences: they are slices of the stage
        st.pre *= w.ns;
        accumulate_factor_grad<T, CPLX>(st, d.xr, d.xi, sr + 2 * f * M, sr + (2 * f + 1) * M, redr, redi, bgr, bgi);
      }
      block_stage<T, CPLX>(plan.s[f], true, w, d.xr, d.xi, d.yr, d.yi);
    }
  }
  store_planes(d.xr, d.xi, w.ns * N, CPLX, gh0 + b0 * N * C);
}

// ---- host side ----

int block_threads(long size) { return size >= 512 ? 256 : 128; }

template <typename T>
T* ptr(const at::Tensor& t) { return static_cast<T*>(t.data_ptr()); }

// Checks that `smem` bytes of shared memory fit a block of the current device (its opt-in limit, queried:
// 227 KB on H100/H200, 163 KB on A100, 99 KB on Ada and Ampere consumer parts) and lets `kernel` use more
// than the default 48 KB.
template <typename Kernel>
void allow_shared_memory(Kernel kernel, size_t smem, const at::Tensor& on, const char* what) {
  const size_t limit = gpu::smem_optin(on.get_device());
  TORCH_CHECK(smem <= limit, "krubench (cuda): ", what, " needs ", smem,
              " bytes of shared memory per block, more than this GPU's ", limit,
              "; use a smaller hidden size or the cpp/reference backend");
  if (smem > 48 * 1024) gpu::allow_smem(kernel, smem);
}

// The last factor's gradient, Σ_{t, b, a} ∂L/∂z_t[a, :] x_t[a, :]ᴴ over every step, sequence and slice a of
// its stage, as one matrix product (cuBLAS on a GPU): x_t = (F_0 ⊗ … ⊗ F_{k-2} ⊗ I) h_{t-1} is that stage's
// input, and ∂L/∂z_t = grad_u, as the backward kernel wrote it, the last stage's output gradient.
at::Tensor last_factor_grad(const Plan& plan, const at::Tensor& w, const at::Tensor& h0, const at::Tensor& H,
                            const at::Tensor& grad_u) {
  const long B = H.size(0), T = H.size(1), N = plan.n_in;
  at::Tensor x = at::cat({h0.unsqueeze(1), H.narrow(1, 0, T - 1)}, 1).reshape({B * T, N});  // h_{t-1}
  for (size_t f = 0; f + 1 < plan.stages.size(); ++f) {
    const Stage& s = plan.stages[f];
    const at::Tensor F = w.narrow(0, s.woff, static_cast<long>(s.p) * s.q).view({s.p, s.q});
    x = at::matmul(F, x.view({B * T, s.pre, s.q, s.post})).reshape({B * T, -1});
  }
  const Stage& last = plan.stages.back();  // post = 1: x is (B T pre, q), grad_u (B T pre, p)
  const at::Tensor dz = grad_u.reshape({B * T * last.pre, last.p});
  x = x.reshape({B * T * last.pre, last.q});
  return at::matmul(dz.t(), x.is_complex() ? x.conj() : x);
}

// Whether the fused recurrence keeps its factors (`factors` bytes) in shared memory next to the `rest` it
// needs there: if they fit this device, else its kernels read them from global memory (through L1 and L2).
bool factors_fit(size_t factors, size_t rest, const at::Tensor& on) {
  return factors + rest <= gpu::smem_optin(on.get_device());
}

at::TensorOptions real_options(const at::Tensor& like) {
  return like.options().dtype(c10::toRealValueType(like.scalar_type()));
}

// Accumulators (added to across steps): zeros.
at::Tensor real_zeros(std::initializer_list<int64_t> sizes, const at::Tensor& like) {
  return at::zeros(sizes, real_options(like));
}

// The backward kernels' stage-input scratch: every element is written before it is read, so it is not
// zero-filled (poisoned with NaN under KRUBENCH_POISON_OUTPUTS, which the tests set, to check that claim).
at::Tensor scratch(std::initializer_list<int64_t> sizes, const at::Tensor& like) {
  return new_output(sizes, real_options(like));
}

// Calls f(std::integral_constant<int, RB>{}) for the warp kernels' register bits RB = log_n - 5.
template <typename F>
void warp_dispatch(int log_n, F&& f) {
  if (log_n == 5) return f(std::integral_constant<int, 0>{});
  if (log_n == 6) return f(std::integral_constant<int, 1>{});
  TORCH_CHECK(log_n == 7, "krubench (cuda): the warp kernels take N = 32, 64 or 128, got 2^", log_n);
  return f(std::integral_constant<int, 2>{});
}

// The kernel the recurrence runs on this device (both directions choose alike: kru_plan.h).
RecurrenceKernel choose_kernel(const Plan& plan, const at::Tensor& like) {
  return cuda_recurrence_kernel(plan, like.scalar_type(), gpu::smem_optin(like.get_device()), gpu::tiled_entries());
}

// A tiled kernel's launch over a batch of B: sequences a block (as many as shared memory holds, fewer where the
// blocks would not fill the device's multiprocessors), the factor tile (what shared memory leaves, at most
// kMaxTileEntries a plane), blocks, shared memory.
struct TiledLaunch {
  int seqs, tile_entries;
  long blocks;
  size_t smem;
};

TiledLaunch tiled_launch(const Plan& plan, long B, const at::Tensor& like) {
  const size_t elem = c10::elementSize(c10::toRealValueType(like.scalar_type()));
  const size_t limit = gpu::smem_optin(like.get_device());
  int seqs = tiled_max_seqs(plan, elem, limit);
  while (seqs > 1 && seqs * gpu::sm_count(like.get_device()) > B) seqs /= 2;
  const size_t state = tiled_state_smem(plan, seqs, elem);
  const int tile = static_cast<int>(std::min<size_t>(kMaxTileEntries, (limit - state) / (2 * elem)));
  return {seqs, tile, (B + seqs - 1) / seqs, state + 2 * tile * elem};
}

template <typename T>
TiledFactors<T> tiled_factors(const at::Tensor& wr, const at::Tensor& wi, const at::Tensor& awr, const at::Tensor& awi,
                              const TiledLaunch& l) {
  return {ptr<T>(wr), ptr<T>(wi), ptr<T>(awr), ptr<T>(awi), 0, l.tile_entries, gpu::tiled_entries(), nullptr};
}

// The forward kernel `kernel` over h0's batch, reading u (B, T, N), or computing it from `in` (H shaped like `like`).
at::Tensor launch_recurrence(const Plan& plan, RecurrenceKernel kernel, const at::Tensor& u, const at::Tensor& h0,
                             const at::Tensor& w, c10::string_view nonlinearity, const at::Tensor& bias,
                             at::IntArrayRef sizes, const at::Tensor& x, const at::Tensor& uw, const at::Tensor& ub) {
  const gpu::Guard guard(h0.device());
  at::Tensor wr, wi, awr, awi;
  std::tie(wr, wi) = factor_planes(w, plan, false);
  if (kernel == RecurrenceKernel::kTiled) std::tie(awr, awi) = factor_planes(w, plan, true);
  at::Tensor H = new_output(sizes, h0.options());
  const long B = sizes[0];
  if (B == 0 || sizes[1] == 0) return H;
  const int steps = static_cast<int>(sizes[1]);
  auto stream = gpu::stream();
  dispatch_dtype(h0.scalar_type(), [&](auto t, auto c) {
    dispatch_nonlinearity(nonlinearity, [&](auto nl) {
      using T = decltype(t);
      constexpr bool CPLX = decltype(c)::value;
      const InputMap<T> in{x.defined() ? ptr<T>(x) : nullptr, x.defined() ? ptr<T>(uw) : nullptr,
                           x.defined() ? ptr<T>(ub) : nullptr, x.defined() ? static_cast<int>(x.size(2)) : 0};
      const T* u_ptr = u.defined() ? ptr<T>(u) : nullptr;
      if (kernel == RecurrenceKernel::kWarp) {
        const int log_n = regs_log_n(plan);
        warp_dispatch(log_n, [&](auto rb) {
          auto k = recurrence_forward_warp_kernel<decltype(rb)::value, T, CPLX, decltype(nl)::value>;
          const size_t smem = 8 * log_n * sizeof(T);
          KRU_LAUNCH(k, (B + kWarpSeqs - 1) / kWarpSeqs, 32 * kWarpSeqs, smem, stream, static_cast<int>(B),
                     ptr<T>(wr), ptr<T>(wi), u_ptr, ptr<T>(h0), ptr<T>(bias), ptr<T>(H), steps, in);
        });
      } else if (kernel == RecurrenceKernel::kRegisters) {
        const int log_n = regs_log_n(plan);
        auto k = recurrence_forward_regs_kernel<T, CPLX, decltype(nl)::value>;
        const size_t smem = regs_forward_smem(log_n, sizeof(T));
        allow_shared_memory(k, smem, h0, "the register-resident recurrence");
        KRU_LAUNCH(k, B, static_cast<int>(plan.n_in / kRegs), smem, stream, RegsPlan{log_n, regs_groups(log_n)},
                   ptr<T>(wr), ptr<T>(wi), u_ptr, ptr<T>(h0), ptr<T>(bias), ptr<T>(H), steps, in);
      } else if (kernel == RecurrenceKernel::kTiled) {
        const TiledLaunch l = tiled_launch(plan, B, h0);
        auto k = recurrence_forward_tiled_kernel<T, CPLX, decltype(nl)::value>;
        allow_shared_memory(k, l.smem, h0, "the tiled recurrence");
        KRU_LAUNCH(k, l.blocks, kTiledThreads, l.smem, stream, device_plan(plan), static_cast<int>(B), l.seqs,
                   tiled_factors<T>(wr, wi, awr, awi, l), u_ptr, ptr<T>(h0), ptr<T>(bias), ptr<T>(H), steps, in);
      } else {
        auto k = recurrence_forward_kernel<T, CPLX, decltype(nl)::value>;
        const size_t state = 4 * plan.n_in * sizeof(T), factors = 2 * plan.wsize * sizeof(T);
        const bool shared_factors = factors_fit(factors, state, h0);
        const size_t smem = state + (shared_factors ? factors : 0);
        allow_shared_memory(k, smem, h0, "the recurrence");
        KRU_LAUNCH(k, B, block_threads(plan.n_in), smem, stream, device_plan(plan), ptr<T>(wr), ptr<T>(wi), u_ptr,
                   ptr<T>(h0), ptr<T>(bias), ptr<T>(H), steps, in, shared_factors);
      }
    });
  });
  return H;
}

at::Tensor kru_recurrence_cuda(const at::Tensor& u, const at::Tensor& h0, const at::Tensor& w, at::IntArrayRef shapes,
                               c10::string_view nonlinearity, const at::Tensor& bias) {
  const Plan plan = check_recurrence(u, h0, w, shapes, bias);
  return launch_recurrence(plan, choose_kernel(plan, u), u, h0, w, nonlinearity, bias, u.sizes(), at::Tensor(),
                           at::Tensor(), at::Tensor());
}

// The recurrence with u_t = uw x_t + ub computed in the kernel: no (B, T, N) u exists (kru_layer_input).
at::Tensor kru_layer_input_cuda(const at::Tensor& x, const at::Tensor& uw, const at::Tensor& ub, const at::Tensor& h0,
                                const at::Tensor& w, at::IntArrayRef shapes, c10::string_view nonlinearity,
                                const at::Tensor& bias) {
  const Plan plan = check_layer_input(x, uw, ub, h0, w, shapes, bias);
  return launch_recurrence(plan, choose_kernel(plan, h0), at::Tensor(), h0, w, nonlinearity, bias,
                           {x.size(0), x.size(1), h0.size(1)}, x, uw, ub);
}

// The register-resident forward whatever the device's shared memory (for benchmarks): 2×2 factors, N = 8 ... 8192.
at::Tensor kru_recurrence_regs_cuda(const at::Tensor& u, const at::Tensor& h0, const at::Tensor& w,
                                    at::IntArrayRef shapes, c10::string_view nonlinearity, const at::Tensor& bias) {
  const Plan plan = check_recurrence(u, h0, w, shapes, bias);
  for (const Stage& st : plan.stages)
    TORCH_CHECK(st.p == 2 && st.q == 2, "krubench (cuda): the register-resident recurrence takes 2x2 factors, got ",
                shapes);
  TORCH_CHECK(regs_log_n(plan) > 0, "krubench (cuda): the register-resident recurrence takes N = ", kRegs, " to ",
              1 << kRegsMaxLogN, ", got ", plan.n_in);
  return launch_recurrence(plan, RecurrenceKernel::kRegisters, u, h0, w, nonlinearity, bias, u.sizes(), at::Tensor(),
                           at::Tensor(), at::Tensor());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kru_recurrence_backward_cuda(
    const at::Tensor& grad_H, const at::Tensor& H, const at::Tensor& h0, const at::Tensor& w, at::IntArrayRef shapes,
    c10::string_view nonlinearity, const at::Tensor& bias, const at::Tensor& grad_u) {
  const Plan plan = check_recurrence_backward(grad_H, H, h0, w, shapes, bias, grad_u);
  const gpu::Guard guard(H.device());
  const RecurrenceKernel chosen = choose_kernel(plan, H);
  const bool tiled = chosen == RecurrenceKernel::kTiled;
  const bool gemm_last = (chosen == RecurrenceKernel::kFused || tiled) && gemm_last_factor(plan) && H.size(1) > 0;
  const long B = H.size(0), N = plan.n_in;
  const TiledLaunch launch = tiled ? tiled_launch(plan, B, H) : TiledLaunch{};
  const long partials = tiled ? launch.blocks : B;  // the factor and bias gradients' rows: one a block
  at::Tensor gh0 = new_output(h0.sizes(), h0.options());
  at::Tensor gwr = real_zeros({partials, plan.wsize}, H), gwi = real_zeros({partials, plan.wsize}, H),
             gb = real_zeros({partials, N}, H);
  if (B > 0) {
    auto stream = gpu::stream();
    const int steps = static_cast<int>(H.size(1));
    dispatch_dtype(H.scalar_type(), [&](auto t, auto c) {
      dispatch_nonlinearity(nonlinearity, [&](auto nl) {
        using T = decltype(t);
        constexpr bool CPLX = decltype(c)::value;
        if (chosen == RecurrenceKernel::kWarp) {
          const int log_n = regs_log_n(plan);
          at::Tensor wr, wi;
          std::tie(wr, wi) = factor_planes(w, plan, false);
          warp_dispatch(log_n, [&](auto rb) {
            auto kernel = recurrence_backward_warp_kernel<decltype(rb)::value, T, CPLX, decltype(nl)::value>;
            KRU_LAUNCH(kernel, (B + kWarpSeqs - 1) / kWarpSeqs, 32 * kWarpSeqs, 8 * log_n * sizeof(T), stream,
                       static_cast<int>(B), ptr<T>(wr), ptr<T>(wi), ptr<T>(h0), ptr<T>(H), ptr<T>(grad_H),
                       ptr<T>(bias), steps, ptr<T>(grad_u), ptr<T>(gh0), ptr<T>(gwr), ptr<T>(gwi), ptr<T>(gb));
          });
          return;
        }
        if (chosen == RecurrenceKernel::kRegisters) {
          const int log_n = regs_log_n(plan);
          at::Tensor wr, wi;
          std::tie(wr, wi) = factor_planes(w, plan, false);
          auto kernel = recurrence_backward_regs_kernel<T, CPLX, decltype(nl)::value>;
          const size_t smem = regs_backward_smem(log_n, CPLX, sizeof(T));
          allow_shared_memory(kernel, smem, H, "the register-resident recurrence's backward pass");
          KRU_LAUNCH(kernel, B, static_cast<int>(N / kRegs), smem, stream, RegsPlan{log_n, regs_groups(log_n)},
                     ptr<T>(wr), ptr<T>(wi), ptr<T>(h0), ptr<T>(H), ptr<T>(grad_H), ptr<T>(bias), steps,
                     ptr<T>(grad_u), ptr<T>(gh0), ptr<T>(gwr), ptr<T>(gwi), ptr<T>(gb));
          return;
        }
        const DevPlan dp = device_plan(plan);
        const auto [wr, wi, awr, awi] = backward_planes(w, plan);
        const int grad_stages = gemm_last ? dp.k - 1 : dp.k;
        if (tiled) {
          at::Tensor ws = scratch({launch.blocks, dp.k + 1, 2, launch.seqs * plan.max_size}, H);
          auto kernel = recurrence_backward_tiled_kernel<T, CPLX, decltype(nl)::value>;
          allow_shared_memory(kernel, launch.smem, H, "the tiled recurrence's backward pass");
          KRU_LAUNCH(kernel, launch.blocks, kTiledThreads, launch.smem, stream, dp, static_cast<int>(B), launch.seqs,
                     tiled_factors<T>(wr, wi, awr, awi, launch), ptr<T>(h0), ptr<T>(H), ptr<T>(grad_H), ptr<T>(bias),
                     steps, ptr<T>(grad_u), ptr<T>(gh0), ptr<T>(gwr), ptr<T>(gwi), ptr<T>(gb), ptr<T>(ws), grad_stages);
          return;
        }
        at::Tensor ws = scratch({B, dp.k + 1, 2, N}, H);
        const int threads = block_threads(N);
        auto kernel = recurrence_backward_kernel<T, CPLX, decltype(nl)::value>;
        const size_t rest = (4 * N + 2 * threads) * sizeof(T), factors = 4 * plan.wsize * sizeof(T);
        const bool shared_factors = factors_fit(factors, rest, H);
        const size_t smem = rest + (shared_factors ? factors : 0);
        allow_shared_memory(kernel, smem, H, "the recurrence's backward pass");
        KRU_LAUNCH(kernel, B, threads, smem, stream, dp, ptr<T>(wr), ptr<T>(wi), ptr<T>(awr), ptr<T>(awi), ptr<T>(h0),
                   ptr<T>(H), ptr<T>(grad_H), ptr<T>(bias), steps, ptr<T>(grad_u), ptr<T>(gh0), ptr<T>(gwr),
                   ptr<T>(gwi), ptr<T>(gb), ptr<T>(ws), shared_factors, grad_stages);
      });
    });
  }
  at::Tensor gw = combine_planes(gwr.sum(0), gwi.sum(0), H.is_complex());
  if (gemm_last && B > 0) {
    const Stage& last = plan.stages.back();
    gw.narrow(0, last.woff, static_cast<long>(last.p) * last.q).copy_(last_factor_grad(plan, w, h0, H, grad_u).reshape(-1));
  }
  return {gh0, gw, gb.sum(0)};
}

std::tuple<at::Tensor, at::Tensor> lstm_kru_recurrence_cuda(const at::Tensor& gx, const at::Tensor& h0,
                                                            const at::Tensor& c0, const at::Tensor& w,
                                                            at::IntArrayRef shapes) {
  const Plan plan = check_lstm(gx, h0, c0, w, shapes);
  const gpu::Guard guard(gx.device());
  const DevPlan dp = device_plan(plan);
  const auto [wr, wi] = products_planes(w, plan, false);
  const long B = gx.size(0), steps = gx.size(1), N = plan.n_in, G = w.numel() / plan.wsize;
  at::Tensor H = new_output({B, steps, N}, gx.options()), C = new_output({B, steps, N}, gx.options());
  if (B == 0 || steps == 0) return {H, C};
  const int threads = block_threads(plan.max_size);
  auto stream = gpu::stream();
  dispatch_dtype(w.scalar_type(), [&](auto t, auto c) {
    using T = decltype(t);
    auto kernel = lstm_forward_kernel<T, decltype(c)::value>;
    const size_t smem = (2 * G * plan.wsize + 6 * N + 4 * plan.max_size) * sizeof(T);
    allow_shared_memory(kernel, smem, gx, "the LSTM+KRU recurrence");
    KRU_LAUNCH(kernel, B, threads, smem, stream, dp, static_cast<int>(G), ptr<T>(wr), ptr<T>(wi), ptr<T>(gx),
               ptr<T>(h0), ptr<T>(c0), ptr<T>(H), ptr<T>(C), static_cast<int>(steps));
  });
  return {H, C};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_kru_recurrence_backward_cuda(
    const at::Tensor& grad_H, const at::Tensor& grad_C, const at::Tensor& gx, const at::Tensor& h0,
    const at::Tensor& c0, const at::Tensor& w, at::IntArrayRef shapes, const at::Tensor& H, const at::Tensor& C) {
  const Plan plan = check_lstm(gx, h0, c0, w, shapes);
  const long B = gx.size(0), steps = gx.size(1), N = plan.n_in, G = w.numel() / plan.wsize, S = plan.max_size;
  for (const auto& [t, name] : {std::pair{&grad_H, "grad_H"}, std::pair{&grad_C, "grad_C"}, std::pair{&H, "H"},
                                std::pair{&C, "C"}}) {
    TORCH_CHECK(t->sizes() == at::IntArrayRef({B, steps, N}), "krubench: ", name, " must be (", B, ", ", steps, ", ",
                N, "), got ", t->sizes());
    check_same(gx, *t, name);
  }
  const gpu::Guard guard(gx.device());
  const DevPlan dp = device_plan(plan);
  const auto [wr, wi] = products_planes(w, plan, false);
  const auto [awr, awi] = products_planes(w, plan, true);
  at::Tensor ggx = new_output(gx.sizes(), gx.options()), gh0 = new_output(h0.sizes(), h0.options()),
             gc0 = new_output(c0.sizes(), c0.options());
  at::Tensor gwr = real_zeros({B, G * plan.wsize}, gx), gwi = real_zeros({B, G * plan.wsize}, gx);
  at::Tensor ws = scratch({B, G, static_cast<long>(plan.stages.size()) + 1, 2, S}, gx);
  if (B > 0) {
    const int threads = block_threads(S);
    auto stream = gpu::stream();
    dispatch_dtype(w.scalar_type(), [&](auto t, auto c) {
      using T = decltype(t);
      auto kernel = lstm_backward_kernel<T, decltype(c)::value>;
      const size_t smem = (4 * G * plan.wsize + 6 * N + 4 * S + 2 * threads) * sizeof(T);
      allow_shared_memory(kernel, smem, gx, "the LSTM+KRU recurrence's backward pass");
      KRU_LAUNCH(kernel, B, threads, smem, stream, dp, static_cast<int>(G), ptr<T>(wr), ptr<T>(wi), ptr<T>(awr),
                 ptr<T>(awi), ptr<T>(gx), ptr<T>(h0), ptr<T>(c0), ptr<T>(H), ptr<T>(C), ptr<T>(grad_H), ptr<T>(grad_C),
                 static_cast<int>(steps), ptr<T>(ggx), ptr<T>(gh0), ptr<T>(gc0), ptr<T>(gwr), ptr<T>(gwi), ptr<T>(ws));
    });
  }
  return {ggx, gh0, gc0, combine_planes(gwr.sum(0), gwi.sum(0), w.is_complex())};
}

}  // namespace
}  // namespace kru

#if !defined(KRU_EMULATE)  // kru_emu.cpp registers the emulated operators under krubench_emu
TORCH_LIBRARY_IMPL(krubench, CUDA, m) {
  m.impl("kru_recurrence", &kru::kru_recurrence_cuda);
  m.impl("kru_layer_input", &kru::kru_layer_input_cuda);
  m.impl("kru_recurrence_backward", &kru::kru_recurrence_backward_cuda);
  m.impl("kru_recurrence_regs", &kru::kru_recurrence_regs_cuda);
  m.impl("lstm_kru_recurrence", &kru::lstm_kru_recurrence_cuda);
  m.impl("lstm_kru_recurrence_backward", &kru::lstm_kru_recurrence_backward_cuda);
}
#endif
