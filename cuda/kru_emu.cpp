// The CUDA kernels of kru_cuda.cu, compiled as host C++ and run by the emulator of kru_emu.h; registered as
// CPU operators `torch.ops.krubench_emu.*` with the schemas of `torch.ops.krubench.*`, plus `configure`
// (schedule order, seed, a planted missing barrier, the opt-in shared-memory limit, the factor size from which the
// recurrence runs tiled) and `barrier_lines`
// (the source lines of kru_cuda.cu whose __syncthreads() ran since the last configure), plus self-tests of
// the emulator (`lane_stage`, `misbehave`). Built by krubench/ops/build.py (backend
// "emu"); tested by tests/test_kernels_emu.py against the reference. Test code, not a backend to train with.
#define KRU_EMULATE 1

#include <ucontext.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "kru_cuda.cu"
#include "kru_schemas.h"

namespace kru_emu {
namespace {

constexpr size_t kDefaultSmem = 48 * 1024;  // dynamic shared memory a launch gets without opting in
constexpr size_t kGuard = 256;               // NaN bytes after a block's shared memory, checked after it runs
constexpr size_t kStack = 256 * 1024;        // each fiber's stack

enum class State { kRunnable, kBlockBarrier, kWarpSync, kDone };

struct Fiber {
  ucontext_t ctx;
  dim3 tid;
  State state = State::kRunnable;
  int line = 0;  // the barrier or warp sync it waits at (a shuffle's: minus its line)
};

struct Block {
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  std::vector<char> stacks;
  std::vector<unsigned char> smem;
  std::vector<uint64_t> shuffle;  // one exchange slot per thread
  const std::function<void()>* body = nullptr;
  dim3 idx, dim;
  int current = -1;
};

Config g_config;
Block* g_block = nullptr;  // the block running now (one at a time, on the calling OS thread)
std::map<const void*, size_t> g_smem_attr;
std::set<long> g_lines;

Block& running() {
  TORCH_CHECK(g_block != nullptr, "kru_emu: a CUDA builtin was used outside an emulated kernel");
  return *g_block;
}

void fiber_main() {
  Block& b = *g_block;
  (*b.body)();
  b.fibers[b.current].state = State::kDone;  // returns to the scheduler through uc_link
}

// Lets each warp whose live lanes all wait at one warp sync run on; returns whether any did. A warp with
// lanes at a warp sync and others at a block barrier, exited, or at another warp sync never gets there.
bool release(Block& b, unsigned blk) {
  bool any = false;
  for (size_t w = 0; w < b.fibers.size(); w += 32) {
    const auto first = b.fibers.begin() + w, last = b.fibers.begin() + std::min(w + 32, b.fibers.size());
    const auto at_sync = std::find_if(first, last, [](const Fiber& f) { return f.state == State::kWarpSync; });
    if (at_sync == last) continue;
    for (auto f = first; f != last; ++f) {
      TORCH_CHECK(f->state == State::kWarpSync && f->line == at_sync->line, "kru_emu: block ", blk, ": lane ",
                  f->tid.x % 32, " of warp ", w / 32, (f->state == State::kDone ? " exited" : " waits elsewhere"),
                  " while lane ", at_sync->tid.x % 32, " waits at the warp operation on line ", std::abs(at_sync->line),
                  " (a GPU hangs or is undefined)");
    }
    for (auto f = first; f != last; ++f) f->state = State::kRunnable;
    any = true;
  }
  return any;
}

}  // namespace

Config& config() { return g_config; }
const dim3& thread_idx() { return running().fibers[running().current].tid; }
const dim3& block_idx() { return running().idx; }
const dim3& block_dim() { return running().dim; }
unsigned char* dynamic_shared() { return running().smem.data(); }

namespace {
void wait(State state, int line) {
  Block& b = running();
  Fiber& f = b.fibers[b.current];
  f.state = state;
  f.line = line;
  swapcontext(&f.ctx, &b.scheduler);
}
}  // namespace

void syncthreads(int line) {
  g_lines.insert(line);
  if (line != g_config.skip_barrier_line) wait(State::kBlockBarrier, line);
}

void syncwarp(unsigned mask, int line) {
  TORCH_CHECK(mask == 0xffffffffu && running().dim.x % 32 == 0, "kru_emu: only full-mask warp operations in blocks of ",
              "whole warps are emulated");
  if (line > 0) g_lines.insert(line);
  if (line != g_config.skip_barrier_line) wait(State::kWarpSync, line);
}

uint64_t* shuffle_slot(int thread) { return &running().shuffle[thread]; }
int current_thread() { return running().current; }

void set_max_dynamic_smem(const void* kernel, size_t bytes) {
  TORCH_CHECK(bytes <= static_cast<size_t>(g_config.smem_optin), "kru_emu: cudaFuncSetAttribute(",
              "MaxDynamicSharedMemorySize, ", bytes, ") exceeds the device's opt-in limit ", g_config.smem_optin,
              " (cudaErrorInvalidValue on a GPU)");
  g_smem_attr[kernel] = bytes;
}

void run_grid(const void* kernel, unsigned grid, unsigned block, size_t smem, const std::function<void()>& body) {
  TORCH_CHECK(block >= 1 && block <= 1024, "kru_emu: a block of ", block, " threads (1 to 1024 on a GPU)");
  const auto attr = g_smem_attr.find(kernel);
  const size_t allowed = attr == g_smem_attr.end() ? kDefaultSmem : std::max(kDefaultSmem, attr->second);
  TORCH_CHECK(smem <= allowed, "kru_emu: a launch with ", smem, " bytes of dynamic shared memory, but the kernel ",
              "allows ", allowed, " (set cudaFuncAttributeMaxDynamicSharedMemorySize first): a GPU refuses it");
  TORCH_CHECK(g_block == nullptr, "kru_emu: a kernel launched from inside a kernel");
  Block b;
  b.body = &body;
  b.dim = {block, 1, 1};
  b.fibers.resize(block);
  b.shuffle.resize(block);
  b.stacks.resize(block * kStack);
  std::vector<int> order(block);
  std::mt19937_64 rng(g_config.seed);
  g_block = &b;
  struct Reset {
    ~Reset() { g_block = nullptr; }
  } reset;
  for (unsigned blk = 0; blk < grid; ++blk) {
    b.idx = {blk, 1, 1};
    b.smem.assign(smem + kGuard, 0xFF);  // all-ones bytes: NaN as float and as double
    for (unsigned t = 0; t < block; ++t) {
      Fiber& f = b.fibers[t];
      f = Fiber{};
      f.tid = {t, 0, 0};
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = b.stacks.data() + t * kStack;
      f.ctx.uc_stack.ss_size = kStack;
      f.ctx.uc_link = &b.scheduler;
      makecontext(&f.ctx, fiber_main, 0);
    }
    for (;;) {  // one round: every runnable thread runs to its next barrier or warp sync (or its end)
      std::iota(order.begin(), order.end(), 0);
      if (g_config.order == 1) std::reverse(order.begin(), order.end());
      if (g_config.order == 2) std::shuffle(order.begin(), order.end(), rng);
      for (int t : order) {
        if (b.fibers[t].state != State::kRunnable) continue;
        b.current = t;
        swapcontext(&b.scheduler, &b.fibers[t].ctx);
      }
      b.current = -1;
      if (release(b, blk)) continue;
      const auto live = std::find_if(b.fibers.begin(), b.fibers.end(),
                                     [](const Fiber& f) { return f.state != State::kDone; });
      if (live == b.fibers.end()) break;
      for (Fiber& f : b.fibers) {  // every live thread is at a block barrier: the same one, or the GPU hangs
        TORCH_CHECK(f.state != State::kDone, "kru_emu: block ", blk, ": thread ", f.tid.x, " exited while thread ",
                    live->tid.x, " waits at the __syncthreads() on line ", live->line, " (a GPU hangs)");
        TORCH_CHECK(f.line == live->line, "kru_emu: block ", blk, ": threads wait at different barriers, lines ",
                    live->line, " (thread ", live->tid.x, ") and ", f.line, " (thread ", f.tid.x, ")");
        f.state = State::kRunnable;
      }
    }
    const bool intact = std::all_of(b.smem.begin() + smem, b.smem.end(), [](unsigned char c) { return c == 0xFF; });
    TORCH_CHECK(intact, "kru_emu: block ", blk, " wrote past its ", smem, " bytes of dynamic shared memory");
  }
}

}  // namespace kru_emu

namespace {

void configure(int64_t order, int64_t seed, int64_t skip_barrier_line, int64_t smem_optin, int64_t tiled_entries) {
  TORCH_CHECK(order >= 0 && order <= 2, "kru_emu: order must be 0 (ascending), 1 (descending) or 2 (shuffled)");
  kru_emu::g_config = {static_cast<int>(order), static_cast<uint64_t>(seed), skip_barrier_line, smem_optin,
                       tiled_entries};
  kru_emu::g_lines.clear();  // barrier_lines() reports what runs from here on
}

std::vector<int64_t> barrier_lines() { return {kru_emu::g_lines.begin(), kru_emu::g_lines.end()}; }

// The emulator's warp self-test, and the lane-bit stage of a register-resident kernel in miniature: a 2×2
// complex factor w (row-major, [re, im] pairs) applied to index bit `bit` of rows of 32 complex elements
// held one per lane, the partner's element fetched with __shfl_xor_sync. Two warps a block, a row a warp;
// x, y: (rows, 32, 2) float.
__global__ void lane_stage_kernel(const float* x, const float* w, int bit, int rows, float* y) {
  const int lane = threadIdx.x % 32, row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;  // a whole warp at once
  const float ar = x[(row * 32 + lane) * 2], ai = x[(row * 32 + lane) * 2 + 1];
  const float br = __shfl_xor_sync(0xffffffffu, ar, 1 << bit);
  const float bi = __shfl_xor_sync(0xffffffffu, ai, 1 << bit);
  const int i = (lane >> bit) & 1;  // this lane's output row: its own element is x_i, the partner's x_{1-i}
  const float *own = w + (3 * i) * 2, *other = w + (2 * i + 1 - i) * 2;
  y[(row * 32 + lane) * 2] = own[0] * ar - own[1] * ai + other[0] * br - other[1] * bi;
  y[(row * 32 + lane) * 2 + 1] = own[0] * ai + own[1] * ar + other[0] * bi + other[1] * br;
}

// The emulator's own checks, each planted in a tiny kernel (one block of 64 threads, 64 bytes of shared
// memory): 1 a thread exits while the others wait at a barrier; 2 threads wait at different barriers; 3 a lane
// exits while its warp shuffles; 4 a write past the shared memory; 0 none of these (runs clean).
__global__ void misbehaving_kernel(int mode) {
  KRU_DYNAMIC_SHARED(smem);
  const int t = threadIdx.x;
  if (mode == 1 && t == 5) return;
  if (mode == 2 && t < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  if (mode == 3 && t == 40) return;
  if (mode == 3) __shfl_xor_sync(0xffffffffu, t, 1);
  smem[mode == 4 ? 64 + t : t] = static_cast<unsigned char>(t);
}

void misbehave(int64_t mode) {
  KRU_LAUNCH(misbehaving_kernel, 1, 64, 64, nullptr, static_cast<int>(mode));
}

at::Tensor lane_stage(const at::Tensor& x, const at::Tensor& w, int64_t bit) {
  TORCH_CHECK(x.scalar_type() == at::kComplexFloat && x.dim() == 2 && x.size(1) == 32 && w.numel() == 4 &&
                  w.scalar_type() == at::kComplexFloat && bit >= 0 && bit < 5,
              "kru_emu: lane_stage takes x (rows, 32) and w (2, 2) complex64 and a bit in 0..4");
  const at::Tensor xs = at::view_as_real(x.contiguous()).contiguous(), ws = at::view_as_real(w.contiguous()).contiguous();
  at::Tensor y = kru::new_output(xs.sizes(), xs.options());
  const int rows = static_cast<int>(x.size(0));
  if (rows > 0)
    KRU_LAUNCH(lane_stage_kernel, (rows + 1) / 2, 64, 0, nullptr, xs.data_ptr<float>(), ws.data_ptr<float>(),
               static_cast<int>(bit), rows, y.data_ptr<float>());
  return at::view_as_complex(y);
}

}  // namespace

// The operator namespace: krubench_emu, or another for a mutant built alongside it (tests/test_kernels_emu.py).
#ifndef KRU_EMU_LIB
#define KRU_EMU_LIB krubench_emu
#endif
#define KRU_EMU_TORCH_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)  // expands KRU_EMU_LIB before TORCH_LIBRARY pastes it
#define KRU_EMU_TORCH_LIBRARY_IMPL(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)

KRU_EMU_TORCH_LIBRARY(KRU_EMU_LIB, m) {
  kru::define_schemas(m);  // those of torch.ops.krubench; the emulator implements the CUDA backend's
  m.def("configure(int order, int seed, int skip_barrier_line, int smem_optin, int tiled_entries=-1) -> ()", &configure);
  m.def("barrier_lines() -> int[]", &barrier_lines);
  m.def("lane_stage(Tensor x, Tensor w, int bit) -> Tensor", &lane_stage);
  m.def("misbehave(int mode) -> ()", &misbehave);
}

KRU_EMU_TORCH_LIBRARY_IMPL(KRU_EMU_LIB, CPU, m) {
  m.impl("kru_recurrence", &kru::kru_recurrence_cuda);
  m.impl("kru_layer_input", &kru::kru_layer_input_cuda);
  m.impl("kru_recurrence_backward", &kru::kru_recurrence_backward_cuda);
  m.impl("kru_recurrence_regs", &kru::kru_recurrence_regs_cuda);
  m.impl("lstm_kru_recurrence", &kru::lstm_kru_recurrence_cuda);
  m.impl("lstm_kru_recurrence_backward", &kru::lstm_kru_recurrence_backward_cuda);
}
