// Host-side preparation shared by the CPU and CUDA backends: the stage plan of a Kronecker product,
// the factors as real/imaginary planes, and the argument checks (errors name the bad value).
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kron_math.h"

namespace kru {

// Stage f maps a state viewed as (pre, q, post) to (pre, p, post) with factor f (p × q).
struct Stage {
  int p, q;
  long pre, post;
  long woff;  // offset of the factor in the flat factor array
};

struct Plan {
  std::vector<Stage> stages;
  long n_in = 1, n_out = 1;  // Π q_f, Π p_f
  long max_size = 1;         // largest intermediate state
  long wsize = 0;            // Σ p_f q_f
};

// shapes = [p_0, q_0, p_1, q_1, ...] as the Python wrapper packs them.
inline Plan make_plan(at::IntArrayRef shapes) {
  TORCH_CHECK(!shapes.empty() && shapes.size() % 2 == 0,
              "krubench: factor shapes must be [p0, q0, p1, q1, ...], got ", shapes);
  Plan plan;
  const size_t k = shapes.size() / 2;
  for (size_t f = 0; f < k; ++f) {
    TORCH_CHECK(shapes[2 * f] > 0 && shapes[2 * f + 1] > 0, "krubench: factor ", f, " has shape ",
                shapes[2 * f], "x", shapes[2 * f + 1], "; factor sizes must be positive");
    plan.n_in *= shapes[2 * f + 1];
  }
  long pre = 1, post = plan.n_in, off = 0;
  plan.max_size = plan.n_in;
  for (size_t f = 0; f < k; ++f) {
    const int p = static_cast<int>(shapes[2 * f]), q = static_cast<int>(shapes[2 * f + 1]);
    post /= q;
    plan.stages.push_back({p, q, pre, post, off});
    off += static_cast<long>(p) * q;
    pre *= p;
    plan.max_size = std::max(plan.max_size, pre * post);
  }
  plan.n_out = pre;
  plan.wsize = off;
  return plan;
}

// The adjoint plan: stage f maps (pre, p, post) back to (pre, q, post) with the conjugate transpose
// of its factor (q × p), stored at the same offset by `factor_planes(..., adjoint=true)`.
inline Plan adjoint_plan(const Plan& plan) {
  Plan adj = plan;
  std::swap(adj.n_in, adj.n_out);
  for (auto& s : adj.stages) std::swap(s.p, s.q);
  return adj;
}

// Real and imaginary planes of the flat factors (the imaginary plane is zeros for real factors).
// adjoint: each factor replaced by its conjugate transpose, at the same offset.
inline std::pair<at::Tensor, at::Tensor> factor_planes(const at::Tensor& w, const Plan& plan, bool adjoint) {
  at::Tensor flat = w;
  if (adjoint) {
    std::vector<at::Tensor> parts;
    for (const auto& s : plan.stages)
      parts.push_back(w.narrow(0, s.woff, static_cast<long>(s.p) * s.q).view({s.p, s.q}).t().conj().reshape(-1));
    flat = at::cat(parts);
  }
  if (flat.is_complex()) {
    auto ri = at::view_as_real(flat.resolve_conj());
    return {ri.select(-1, 0).contiguous(), ri.select(-1, 1).contiguous()};
  }
  return {flat.contiguous(), at::zeros_like(flat)};
}

// What a backward pass needs: the factors' planes and their adjoints' (wr, wi, awr, awi).
inline std::array<at::Tensor, 4> backward_planes(const at::Tensor& w, const Plan& plan) {
  auto [wr, wi] = factor_planes(w, plan, false);
  auto [awr, awi] = factor_planes(w, plan, true);
  return {wr, wi, awr, awi};
}

// Calls f(std::integral_constant<int, NL>{}) for the nonlinearity called `name`.
template <typename F>
void dispatch_nonlinearity(c10::string_view name, F&& f) {
  if (name == "modrelu") return f(std::integral_constant<int, kModRelu>{});
  if (name == "relu") return f(std::integral_constant<int, kRelu>{});
  if (name == "tanh") return f(std::integral_constant<int, kTanh>{});
  TORCH_CHECK(false, "krubench: nonlinearity '", name, "' is not supported: use modrelu, relu or tanh");
}

inline void check_same(const at::Tensor& ref, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "krubench: ", name, " has dtype ", t.scalar_type(),
              " but the state has ", ref.scalar_type(), "; cast them to one dtype");
  TORCH_CHECK(t.device() == ref.device(), "krubench: ", name, " is on ", t.device(), " but the state is on ",
              ref.device(), "; move them to one device");
  TORCH_CHECK(t.is_contiguous(), "krubench: ", name, " must be contiguous");
}

inline void check_dtype_of(at::ScalarType st) {
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kComplexFloat || st == at::kComplexDouble,
              "krubench: dtype ", st, " is not supported: use float32, float64, complex64 or complex128");
}

inline void check_dtype(const at::Tensor& t) { check_dtype_of(t.scalar_type()); }

// An uninitialised output; with KRUBENCH_POISON_OUTPUTS=1 it is filled with NaN first, so that the
// tests can check that a kernel writes every element.
inline void poison(const at::Tensor& t) {
  const char* flag = std::getenv("KRUBENCH_POISON_OUTPUTS");
  if (flag != nullptr && flag[0] == '1') (t.is_complex() ? at::view_as_real(t) : t).fill_(NAN);
}

// grad_u as a backward pass receives it: written over grad_H when it is grad_H itself, else a fresh output.
inline void poison_unless_in_place(const at::Tensor& grad_u, const at::Tensor& grad_H) {
  if (grad_u.data_ptr() != grad_H.data_ptr()) poison(grad_u);
}

inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  poison(t);
  return t;
}

// The compiled recurrence's factors: W = F_0 ⊗ F_1 ⊗ … square, and no stage's output wider than N: the kernels size
// their state buffers by N (a non-square pair such as 4×2 ⊗ 2×4 widens the state to 16 between stages, and wrote past
// them). Square factors always pass.
inline void check_recurrence_factors(const Plan& plan, at::IntArrayRef shapes) {
  TORCH_CHECK(plan.n_in == plan.n_out && plan.max_size == plan.n_in, "krubench: the compiled recurrence needs factors ",
              "whose product is square and whose partial products never widen the state beyond N = ", plan.n_in,
              " (square factors do); got shapes [p0, q0, p1, q1, ...] = ", shapes, ", whose widest stage has ",
              plan.max_size, " elements: use square factors, or kernel='reference'");
}

// u, H: (B, T, N); h0: (B, N); w: (Σ p q,); bias: (N,) real.
inline Plan check_recurrence(const at::Tensor& u, const at::Tensor& h0, const at::Tensor& w,
                             at::IntArrayRef shapes, const at::Tensor& bias) {
  check_dtype(u);
  Plan plan = make_plan(shapes);
  check_recurrence_factors(plan, shapes);
  TORCH_CHECK(u.dim() == 3 && u.size(2) == plan.n_in, "krubench: u must be (B, T, N) with N = ", plan.n_in,
              ", got ", u.sizes());
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == u.size(0) && h0.size(1) == plan.n_in, "krubench: h0 must be (B, N) = (",
              u.size(0), ", ", plan.n_in, "), got ", h0.sizes());
  TORCH_CHECK(w.dim() == 1 && w.numel() == plan.wsize, "krubench: the flat factors must have ", plan.wsize,
              " entries, got ", w.sizes());
  TORCH_CHECK(bias.dim() == 1 && bias.numel() == plan.n_in, "krubench: bias must be (N,) = (", plan.n_in, ",), got ",
              bias.sizes());
  TORCH_CHECK(bias.scalar_type() == c10::toRealValueType(u.scalar_type()), "krubench: bias has dtype ",
              bias.scalar_type(), "; expected the real dtype of u, ", c10::toRealValueType(u.scalar_type()));
  check_same(u, u, "u");
  check_same(u, h0, "h0");
  check_same(u, w, "factors");
  TORCH_CHECK(bias.device() == u.device() && bias.is_contiguous(), "krubench: bias must be contiguous on ", u.device());
  return plan;
}

// The recurrence with its input map (kru_layer_input): x (B, T, I) and uw (C·N, I), ub (C·N,) real, of h0's
// real dtype, C = 2 for complex h0 (uw's rows give u's (Re, Im) pairs); the rest as check_recurrence.
inline Plan check_layer_input(const at::Tensor& x, const at::Tensor& uw, const at::Tensor& ub, const at::Tensor& h0,
                              const at::Tensor& w, at::IntArrayRef shapes, const at::Tensor& bias) {
  check_dtype(h0);
  const long C = h0.is_complex() ? 2 : 1;
  TORCH_CHECK(x.dim() == 3, "krubench: x must be (B, T, I), got ", x.sizes());
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == x.size(0), "krubench: h0 must be (B, N) with B = ", x.size(0),
              ", got ", h0.sizes());
  const long N = h0.size(1), I = x.size(2);
  TORCH_CHECK(uw.dim() == 2 && uw.size(0) == C * N && uw.size(1) == I, "krubench: uw must be (C·N, I) = (", C * N,
              ", ", I, "), got ", uw.sizes());
  TORCH_CHECK(ub.dim() == 1 && ub.size(0) == C * N, "krubench: ub must be (C·N,) = (", C * N, ",), got ", ub.sizes());
  const auto real = c10::toRealValueType(h0.scalar_type());
  for (const auto& [t, name] : {std::pair{&x, "x"}, std::pair{&uw, "uw"}, std::pair{&ub, "ub"}}) {
    TORCH_CHECK(t->scalar_type() == real, "krubench: ", name, " has dtype ", t->scalar_type(), "; expected ", real,
                ", the real dtype of h0");
    TORCH_CHECK(t->device() == h0.device() && t->is_contiguous(), "krubench: ", name, " must be contiguous on ",
                h0.device());
  }
  return check_recurrence(h0.unsqueeze(1), h0, w, shapes, bias);  // u's checks on a (B, 1, N) stand-in
}

// The backward pass's tensors: grad_H, H, grad_u (B, T, N); the rest as check_recurrence. grad_u may be
// grad_H itself.
inline Plan check_recurrence_backward(const at::Tensor& grad_H, const at::Tensor& H, const at::Tensor& h0,
                                      const at::Tensor& w, at::IntArrayRef shapes, const at::Tensor& bias,
                                      const at::Tensor& grad_u) {
  const Plan plan = check_recurrence(H, h0, w, shapes, bias);
  for (const auto& [t, name] : {std::pair{&grad_H, "grad_H"}, std::pair{&grad_u, "grad_u"}}) {
    check_same(H, *t, name);
    TORCH_CHECK(t->sizes() == H.sizes(), "krubench: ", name, " must have the shape of H, ", H.sizes(), ", got ",
                t->sizes());
  }
  poison_unless_in_place(grad_u, grad_H);
  return plan;
}

// Calls f(T{}, std::bool_constant<CPLX>{}) for the tensor's dtype: T the real scalar type, CPLX
// whether the data are complex (interleaved re, im).
template <typename F>
void dispatch_dtype(at::ScalarType st, F&& f) {
  switch (st) {
    case at::kFloat: return f(float{}, std::false_type{});
    case at::kDouble: return f(double{}, std::false_type{});
    case at::kComplexFloat: return f(float{}, std::true_type{});
    case at::kComplexDouble: return f(double{}, std::true_type{});
    default: TORCH_CHECK(false, "krubench: dtype ", st, " is not supported: use float32, float64, complex64 or complex128");
  }
}

// LSTM+KRU's state and products, with `in` (B, T, ·) its input (gx, or x for lstm_kru_layer): h0, c0 (B, N);
// w: G products' flat factors back to back (G · Σ p q,), each with the factor shapes `shapes`; G · n_out = 4N
// and n_in = N.
inline Plan check_lstm_state(const at::Tensor& in, const char* in_name, const at::Tensor& h0, const at::Tensor& c0,
                             const at::Tensor& w, at::IntArrayRef shapes) {
  check_dtype(w);
  const Plan plan = make_plan(shapes);
  const long N = plan.n_in;
  TORCH_CHECK(w.dim() == 1 && w.is_contiguous() && w.numel() % plan.wsize == 0 && w.numel() / plan.wsize * plan.n_out == 4 * N,
              "krubench: w must hold G products of ", plan.wsize, " entries each with G · ", plan.n_out, " = 4 · ", N,
              " output rows (shapes ", shapes, "), got ", w.sizes());
  TORCH_CHECK(in.dim() == 3, "krubench: ", in_name, " must be (B, T, ·), got ", in.sizes());
  const auto real = c10::toRealValueType(w.scalar_type());
  TORCH_CHECK(in.scalar_type() == real, "krubench: ", in_name, " has dtype ", in.scalar_type(),
              "; the factors' real dtype is ", real);
  for (const auto& [t, name] : {std::pair{&h0, "h0"}, std::pair{&c0, "c0"}})
    TORCH_CHECK(t->dim() == 2 && t->size(0) == in.size(0) && t->size(1) == N, "krubench: ", name, " must be (",
                in.size(0), ", ", N, "), got ", t->sizes());
  for (const auto& [t, name] : {std::pair{&in, in_name}, std::pair{&h0, "h0"}, std::pair{&c0, "c0"}})
    check_same(in, *t, name);
  TORCH_CHECK(w.device() == in.device(), "krubench: w is on ", w.device(), " but ", in_name, " is on ", in.device());
  return plan;
}

// LSTM+KRU (lstm_kru_recurrence): gx (B, T, 4N) real, and the state and products as check_lstm_state.
inline Plan check_lstm(const at::Tensor& gx, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w,
                       at::IntArrayRef shapes) {
  const Plan plan = check_lstm_state(gx, "gx", h0, c0, w, shapes);
  TORCH_CHECK(gx.size(2) == 4 * plan.n_in, "krubench: gx must be (B, T, 4N) = (B, T, ", 4 * plan.n_in, "), got ",
              gx.sizes());
  return plan;
}

// The planes of G products' flat factors w (G · wsize,), product by product (adjoint: each factor its
// conjugate transpose), back to back: product g's at g · wsize.
inline std::pair<at::Tensor, at::Tensor> products_planes(const at::Tensor& w, const Plan& plan, bool adjoint) {
  std::vector<at::Tensor> re, im;
  for (long g = 0; g < w.numel() / plan.wsize; ++g) {
    auto [r, i] = factor_planes(w.narrow(0, g * plan.wsize, plan.wsize), plan, adjoint);
    re.push_back(r);
    im.push_back(i);
  }
  return {at::cat(re).contiguous(), at::cat(im).contiguous()};
}

// ---- which CUDA recurrence kernel runs (both directions choose alike) ----
// The register-resident kernels take 2×2 factors, N = 2^log_n with kRegBits <= log_n <= 13, N / kRegs threads a
// sequence; each thread holds kRegs = 2^kRegBits state elements in registers. The fused (shared-memory)
// kernels take any factors. The choice is a pure function of the factors' shapes, the element type and the
// device's shared memory per block, so that it can be tested without a GPU and asked from Python.
constexpr int kRegBits = 3;
constexpr int kRegs = 1 << kRegBits;
constexpr int kRegsMaxLogN = 13;

inline int regs_groups(int log_n) { return (log_n + kRegBits - 1) / kRegBits; }

// Shared memory (bytes) of the register-resident forward: the factors' planes, two transpose buffers.
inline size_t regs_forward_smem(int log_n, size_t elem) { return (8 * log_n + 4 * (size_t{1} << log_n)) * elem; }

// ... and of its backward: the factors' planes, a buffer per recomputed group input (groups - 1), two
// transpose buffers, and each thread's factor-gradient accumulators (8 reals a complex factor, 4 a real one).
inline size_t regs_backward_smem(int log_n, bool cplx, size_t elem) {
  const size_t n = size_t{1} << log_n, threads = n / kRegs;
  return (8 * log_n + 2 * n * (regs_groups(log_n) - 1) + 4 * n + (cplx ? 8 : 4) * log_n * threads) * elem;
}

// log2 N when every factor is 2×2 and N is a power of two the register-resident kernels take, else -1.
inline int regs_log_n(const Plan& plan) {
  for (const Stage& st : plan.stages)
    if (st.p != 2 || st.q != 2) return -1;
  const int log_n = static_cast<int>(plan.stages.size());
  return log_n >= kRegBits && log_n <= kRegsMaxLogN ? log_n : -1;
}

enum class RecurrenceKernel { kFused, kRegisters, kWarp, kTiled };

// The warp kernels (one warp a sequence, N / 32 elements a lane, lane bits by shuffles) take N = 32 ... 128.
constexpr int kWarpMinLogN = 5, kWarpMaxLogN = 7;

// The tiled kernels: a block of kTiledThreads runs up to kTiledMaxSeqs sequences, their states back to back in
// shared memory, and applies a factor of kTiledEntries entries or more as one matrix product over the block's
// rows (sequence, slice), tiles of the factor streamed from global memory into shared memory (tile_entries a
// plane, at least kMinTileEntries: one chunk of the widest pass) and used by every row. Each thread holds a
// register tile of kTileRows × kTileCols outputs; a pass covers at most kTiledMaxRowGroups · kTileRows rows.
constexpr int kTiledThreads = 256, kTiledMaxSeqs = 16;
constexpr int kTileRows = 4, kTileCols = 4, kTiledMaxRowGroups = 16;
constexpr int kMinTileEntries = kTiledThreads * kTileCols, kMaxTileEntries = 8192;
// Why 32×32: the fused stage does 2 shared-memory (or L1) loads a multiply-add, one factor entry and one input;
// the tiled stage kTileRows + kTileCols loads for kTileRows · kTileCols multiply-adds (4× fewer) and one global
// load a factor entry per pass of up to 64 rows, but pays two barriers a chunk and pads rows and columns to its
// tiles. Below 32×32 a factor's row is shorter than a warp and the factors fit shared memory anyway (a 31×31
// complex64 one is 7.7 KB): the fused kernel's per-output rows are as good there. From 32×32 on (PTB's 137×137
// and 331×331) the fused kernel reads every factor entry once a row and sequence from L1/L2 (876 KB a step and
// sequence at 331×331, more than L1 holds), the tiled one once a pass for S·pre·post rows.
constexpr long kTiledEntries = 1024;

// Shared memory (bytes) of the tiled kernels without the factor tile: a PingPong of `seqs` states of max_size,
// the backward's reduction scratch (2 kTiledThreads; the forward takes the same size).
inline size_t tiled_state_smem(const Plan& plan, int seqs, size_t elem) {
  return (4 * static_cast<size_t>(seqs) * plan.max_size + 2 * kTiledThreads) * elem;
}

// The most sequences a tiled block can hold (a power of two up to kTiledMaxSeqs) with a tile of
// kMinTileEntries next to them in `smem_limit` bytes; 0 when not even one fits.
inline int tiled_max_seqs(const Plan& plan, size_t elem, size_t smem_limit) {
  for (int seqs = kTiledMaxSeqs; seqs >= 1; seqs /= 2)
    if (tiled_state_smem(plan, seqs, elem) + 2 * kMinTileEntries * elem <= smem_limit) return seqs;
  return 0;
}

KRU_HD bool tiled_factor(long p, long q, long tiled_entries) { return p * q >= tiled_entries; }

// The CUDA recurrence's kernel: tiled when a factor has `tiled_entries` (kTiledEntries; the emulator's tests
// lower it) entries or more and a block of one sequence fits; for 2×2 factors one warp a sequence for
// N = 32 ... 128 (not latency-bound by a block of N / 8 threads and its barriers), register-resident for N = 8,
// 16 and 256 ... 8192 when both directions' shared memory fits `smem_limit` bytes a block (the device's opt-in
// limit); fused otherwise.
inline RecurrenceKernel cuda_recurrence_kernel(const Plan& plan, at::ScalarType dtype, size_t smem_limit,
                                               long tiled_entries = kTiledEntries) {
  const size_t elem = c10::elementSize(c10::toRealValueType(dtype));
  for (const Stage& st : plan.stages)
    if (tiled_factor(st.p, st.q, tiled_entries) && tiled_max_seqs(plan, elem, smem_limit) > 0)
      return RecurrenceKernel::kTiled;
  const int log_n = regs_log_n(plan);
  if (log_n < 0) return RecurrenceKernel::kFused;
  if (log_n >= kWarpMinLogN && log_n <= kWarpMaxLogN) return RecurrenceKernel::kWarp;
  const bool fits = regs_forward_smem(log_n, elem) <= smem_limit &&
                    regs_backward_smem(log_n, c10::isComplexType(dtype), elem) <= smem_limit;
  return fits ? RecurrenceKernel::kRegisters : RecurrenceKernel::kFused;
}

// The fused and tiled backward kernels leave the last factor's gradient to one matrix product over all steps when
// that factor has at least this many entries (PTB's 137×137 and 331×331): summed in the kernel, every block would
// read and write all of them in global memory at every step.
constexpr long kGemmGradEntries = 1024;

inline bool gemm_last_factor(const Plan& plan) {
  const Stage& last = plan.stages.back();
  return static_cast<long>(last.p) * last.q >= kGemmGradEntries;
}

inline const char* kernel_name(RecurrenceKernel k) {
  return k == RecurrenceKernel::kWarp        ? "warp"
         : k == RecurrenceKernel::kRegisters ? "registers"
         : k == RecurrenceKernel::kTiled     ? "tiled"
                                             : "fused";
}

// The operator kru_recurrence_kernel: the kernel the CUDA recurrence runs for factors of these shapes, by name.
inline std::string recurrence_kernel_name(at::IntArrayRef shapes, at::ScalarType dtype, int64_t smem_limit) {
  check_dtype_of(dtype);
  return kernel_name(cuda_recurrence_kernel(make_plan(shapes), dtype, static_cast<size_t>(smem_limit)));
}

// Factor gradients from their planes: complex when the factors are complex.
inline at::Tensor combine_planes(const at::Tensor& re, const at::Tensor& im, bool complex) {
  return complex ? at::complex(re, im) : re;
}

}  // namespace kru
