// Per-element arithmetic of the Kronecker kernels, shared by the CPU (kru_cpu_*.cpp) and the CUDA
// (kru_cuda.cu) backends so that the CPU tests exercise the very code the GPU runs: the index map of
// a factor stage, the dot product of one factor row with its inputs, the complex multiply-adds, and
// the nonlinearities with their derivatives.
//
// Conventions. Data are split into real and imaginary planes (the imaginary pointers are ignored
// when CPLX is false). A stage applies factor f (p_f × q_f, row-major) to the axis f of the state
// viewed as (pre, q_f, post), pre = Π_{g<f} p_g, post = Π_{g>f} q_g, writing (pre, p_f, post).
// `stride` is the distance between consecutive state elements: the batch width L on the CPU
// (batch-minor layout [N][L]), 1 on the GPU.
#pragma once

#include <cmath>
#include <cstring>

#if defined(__CUDACC__)
#define KRU_HD __host__ __device__ __forceinline__
#else
#define KRU_HD inline
#endif
#if defined(__CUDACC__)  // nvcc, both passes (its host pass warns on GCC's pragma in device functions)
#define KRU_UNROLL _Pragma("unroll")
#else
#define KRU_UNROLL _Pragma("GCC unroll 16")
#endif

namespace kru {

enum Nonlinearity : int { kModRelu = 0, kRelu = 1, kTanh = 2 };

constexpr double kModReluEps = 1e-6;  // |z| + eps in modReLU's denominator, as in the reference

KRU_HD float hd_sqrt(float x) { return sqrtf(x); }
KRU_HD double hd_sqrt(double x) { return sqrt(x); }
// tanh in float. On the GPU: tanhf. On the CPU: glibc's tanhf is a call that keeps the kernels' `omp simd`
// loops scalar (BENCHMARKS.md, "Nonlinearities: tanh"), so it is computed here, branch-
// free, to within 1.4 ulp (checked against double tanh on every third float of [−12, 12]):
// below |x| = 0.625 x (1 + x² P(x²)), P fitted for relative error 4e-9; above, 1 − 2 / (e^{2|x|} + 1), with
// e^y = 2^k e^r, r = y − k ln 2 (ln 2 in two parts), |r| ≤ ln 2 / 2, e^r by its Taylor series to r⁷.
// |x| is capped at 10, where tanh rounds to ±1; NaN stays NaN.
KRU_HD float hd_tanh(float x) {
#if defined(__CUDA_ARCH__)
  return tanhf(x);
#else
  const float ax = x < 0 ? -x : x, t = x * x;
  const float p = -0.333332819f + t * (0.133314422f + t * (-0.0537397156f + t * (0.0206390888f + t * -0.00570498852f)));
  const float small = x * (1.f + t * p);
  const float y = 2.f * (ax > 10.f ? 10.f : ax);
  const float k = __builtin_rintf(y * 1.44269504f);
  const float r = (y - k * 0.693145752f) - k * 1.42860677e-6f;
  const float er = 1.f + r * (1.f + r * (0.5f + r * (0.166666672f + r * (0.0416666679f + r * (0.00833333377f +
                   r * (0.00138888892f + r * 0.000198412701f))))));
  const int bits = (static_cast<int>(k) + 127) << 23;  // 2^k (k ≤ 29)
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);  // compiles to a register move, and vectorises
  const float e = er * scale;
  const float big = 1.f - 2.f / (e + 1.f);
  return ax < 0.625f ? small : (x < 0 ? -big : big);
#endif
}
KRU_HD double hd_tanh(double x) { return tanh(x); }

// The four partial sums of Σ a·b over complex a, b, kept apart so that a loop of multiply-adds has
// four independent dependency chains instead of one: Σ a·b = (rr − ii) + i(ri + ir) and
// Σ a·conj(b) = (rr + ii) + i(ir − ri). Real data (CPLX false) use rr alone.
// A may be a scalar while T is a vector of lanes (the CPU kernel's GCC vector types): the scalar
// multiplies every lane.
template <typename T, bool CPLX, typename A = T>
KRU_HD void cmac4(A ar, A ai, T br, T bi, T& rr, T& ii, T& ri, T& ir) {
  rr += ar * br;
  if (CPLX) {
    ii += ai * bi;
    ri += ar * bi;
    ir += ai * br;
  }
}

// re + i·im += a · conj(b) with two accumulators (for when many independent sums run side by side).
template <typename T, bool CPLX>
KRU_HD void cmac_conj(T ar, T ai, T br, T bi, T& re, T& im) {
  re += ar * br;
  if (CPLX) {
    re += ai * bi;
    im += ai * br;
    im -= ar * bi;
  }
}

// Position of element (a, j, r) of a state viewed as (pre, q, post). I: the index type, long on the CPU,
// int on the GPU (where 64-bit division is a subroutine call and 64-bit arithmetic takes two registers).
template <typename I>
KRU_HD I stage_index(I a, I j, I r, I q, I post) { return (a * q + j) * post + r; }

// Coordinates (a, i, r) of output element o of a stage whose output is viewed as (pre, p, post).
template <typename I>
KRU_HD void stage_coords(I o, I p, I post, I& a, I& i, I& r) {
  r = o % post;
  i = (o / post) % p;
  a = o / (post * p);
}

// y = Σ_j w[j] · x[j·xstep]: one output of a stage, w a factor row (scalars of type W), x the group's
// first input (T: a scalar on the GPU, a vector of batch lanes on the CPU). Q > 0 fixes the row length
// at compile time (unrolled, accumulators in registers); Q == 0 reads it from q.
template <typename T, bool CPLX, int Q, typename W = T>
KRU_HD void row_dot(const W* wr, const W* wi, int q, const T* xr, const T* xi, long xstep, T& yr, T& yi) {
  const int n = Q > 0 ? Q : q;
  T rr{}, ii{}, ri{}, ir{};
  KRU_UNROLL
  for (int j = 0; j < n; ++j)
    cmac4<T, CPLX, W>(wr[j], CPLX ? wi[j] : W{}, xr[j * xstep], CPLX ? xi[j * xstep] : T{}, rr, ii, ri, ir);
  yr = rr - ii;
  if (CPLX) yi = ri + ir;
}

// σ(x) = (1 + tanh(x/2)) / 2: the kernels' own tanh, so that the CPU's loops vectorise.
template <typename T>
KRU_HD T hd_sigmoid(T x) { return T(0.5) + T(0.5) * hd_tanh(T(0.5) * x); }

// An LSTM cell's gate activations from their pre-activations a_i, a_f, a_g, a_o: σ, σ, tanh, σ.
template <typename T>
KRU_HD void lstm_gates(T ai, T af, T ag, T ao, T& i, T& f, T& g, T& o) {
  i = hd_sigmoid(ai);
  f = hd_sigmoid(af);
  g = hd_tanh(ag);
  o = hd_sigmoid(ao);
}

// h = σ(z). relu and tanh act on the real and imaginary parts separately; modReLU keeps the phase
// and shifts the modulus: z · relu(|z| + b) / (|z| + eps). NL is a compile-time Nonlinearity so
// that a loop over lanes has no branch on it (and vectorises).
template <int NL, typename T, bool CPLX>
KRU_HD void nl_forward(T zr, T zi, T bias, T& hr, T& hi) {
  if (NL == kModRelu) {
    const T m = CPLX ? hd_sqrt(zr * zr + zi * zi) : (zr < 0 ? -zr : zr);
    const T s = m + bias > 0 ? m + bias : T(0);
    const T c = s / (m + T(kModReluEps));
    hr = zr * c;
    hi = CPLX ? zi * c : T(0);
  } else if (NL == kRelu) {
    hr = zr > 0 ? zr : T(0);
    hi = CPLX && zi > 0 ? zi : T(0);
  } else {
    hr = hd_tanh(zr);
    hi = CPLX ? hd_tanh(zi) : T(0);
  }
}

// Backward of nl_forward from its output h alone (the kernels keep H, not the pre-activation z), given
// g = ∂L/∂h: returns ∂L/∂z and adds the modReLU bias gradient to db. relu and tanh read their
// derivative off h (h > 0; 1 − h²). modReLU recovers z: where it is on (h ≠ 0), z has h's phase and
// |h| = m (m + b) / (m + eps) for m = |z|, so m is the positive root of m² − d m − |h| eps, d = |h| − b.
// d < 0 happens (b > 0 and m below eps: |h| ≈ m b / eps < b), and there the textbook root (d + q) / 2,
// q = √(d² + 4 |h| eps), cancels to 0 in float (NaN gradients; a long adding run died of it): there the
// same root is taken as 2 |h| eps / (q − d), which does not cancel. Where modReLU is off, h = 0 and so is
// every gradient. Matches torch autograd at the kinks: relu'(0) = 0, ∂|z|/∂z = 0 at 0; at z = 0 exactly
// (h = 0, where modReLU jumps when b > 0) the gradient is 0, as in the reference (ops/recurrence.py: modrelu).
template <int NL, typename T, bool CPLX>
KRU_HD void nl_backward(T hr, T hi, T bias, T gr, T gi, T& dzr, T& dzi, T& db) {
  if (NL == kModRelu) {
    const T rho = CPLX ? hd_sqrt(hr * hr + hi * hi) : (hr < 0 ? -hr : hr);
    const bool on = rho > 0;
    const T d = rho - bias, eps = T(kModReluEps);
    const T q = hd_sqrt(d * d + T(4) * rho * eps);
    const T m = !on ? T(1) : d >= 0 ? (d + q) / T(2) : T(2) * rho * eps / (q - d);  // |z| (1: unused when off)
    // three reciprocals instead of six divisions (the loop around this is division-bound)
    const T inv_m = T(1) / m, inv_rho = T(1) / (on ? rho : T(1)), inv_den = T(1) / (m + eps);
    const T c = on ? rho * inv_m : T(0);                // h = z · c
    const T zr = on ? hr * m * inv_rho : T(0), zi = CPLX && on ? hi * m * inv_rho : T(0);
    const T dc_dm = on ? (eps - bias) * inv_den * inv_den : T(0);  // (den − s) / den², s = m + b, den = m + eps
    const T gz = gr * zr + (CPLX ? gi * zi : T(0));     // Re(conj(g) z)
    const T k = gz * dc_dm * inv_m;                     // ∂|z|/∂z = z/|z|
    dzr = gr * c + k * zr;
    dzi = CPLX ? gi * c + k * zi : T(0);
    db += on ? gz * inv_den : T(0);
  } else if (NL == kRelu) {
    dzr = hr > 0 ? gr : T(0);
    dzi = CPLX && hi > 0 ? gi : T(0);
  } else {
    dzr = gr * (T(1) - hr * hr);
    dzi = CPLX ? gi * (T(1) - hi * hi) : T(0);
  }
}

}  // namespace kru
