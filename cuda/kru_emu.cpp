// The CUDA kernels of kru_cuda.cu, compiled as host C++ and run by the emulator of kru_emu.h; registered as
// CPU operators `torch.ops.krubench_emu.*` with the schemas of `torch.ops.krubench.*`, plus `configure`
// (schedule order, seed, a planted missing barrier, the opt-in shared-memory limit) and `barrier_lines`
// (the source lines of kru_cuda.cu whose __syncthreads() ran). Built by krubench/ops/build.py (backend
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

namespace kru_emu {
namespace {

constexpr size_t kDefaultSmem = 48 * 1024;  // dynamic shared memory a launch gets without opting in
constexpr size_t kGuard = 256;               // NaN bytes after a block's shared memory, checked after it runs
constexpr size_t kStack = 256 * 1024;        // each fiber's stack

struct Fiber {
  ucontext_t ctx;
  dim3 tid;
  long barriers = 0;
  int line = 0;  // the barrier it waits at
  bool done = false;
};

struct Block {
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  std::vector<char> stacks;
  std::vector<unsigned char> smem;
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
  b.fibers[b.current].done = true;  // returns to the scheduler through uc_link
}

}  // namespace

Config& config() { return g_config; }
const dim3& thread_idx() { return running().fibers[running().current].tid; }
const dim3& block_idx() { return running().idx; }
const dim3& block_dim() { return running().dim; }
unsigned char* dynamic_shared() { return running().smem.data(); }

void syncthreads(int line) {
  g_lines.insert(line);
  if (line == g_config.skip_barrier_line) return;
  Block& b = running();
  Fiber& f = b.fibers[b.current];
  ++f.barriers;
  f.line = line;
  swapcontext(&f.ctx, &b.scheduler);
}

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
    for (;;) {  // one round: every live thread runs to its next barrier (or its end)
      std::iota(order.begin(), order.end(), 0);
      if (g_config.order == 1) std::reverse(order.begin(), order.end());
      if (g_config.order == 2) std::shuffle(order.begin(), order.end(), rng);
      for (int t : order) {
        if (b.fibers[t].done) continue;
        b.current = t;
        swapcontext(&b.scheduler, &b.fibers[t].ctx);
      }
      b.current = -1;
      const auto waiting = std::find_if(b.fibers.begin(), b.fibers.end(), [](const Fiber& f) { return !f.done; });
      if (waiting == b.fibers.end()) break;
      for (const Fiber& f : b.fibers) {
        TORCH_CHECK(!f.done, "kru_emu: block ", blk, ": thread ", f.tid.x, " exited while thread ", waiting->tid.x,
                    " waits at the __syncthreads() on line ", waiting->line, " of kru_cuda.cu (a GPU hangs)");
        TORCH_CHECK(f.line == waiting->line, "kru_emu: block ", blk, ": threads wait at different barriers, lines ",
                    waiting->line, " (thread ", waiting->tid.x, ") and ", f.line, " (thread ", f.tid.x, ")");
      }
    }
    const bool intact = std::all_of(b.smem.begin() + smem, b.smem.end(), [](unsigned char c) { return c == 0xFF; });
    TORCH_CHECK(intact, "kru_emu: block ", blk, " wrote past its ", smem, " bytes of dynamic shared memory");
  }
}

}  // namespace kru_emu

namespace {

void configure(int64_t order, int64_t seed, int64_t skip_barrier_line, int64_t smem_optin) {
  TORCH_CHECK(order >= 0 && order <= 2, "kru_emu: order must be 0 (ascending), 1 (descending) or 2 (shuffled)");
  kru_emu::g_config = {static_cast<int>(order), static_cast<uint64_t>(seed), skip_barrier_line, smem_optin};
}

std::vector<int64_t> barrier_lines() { return {kru_emu::g_lines.begin(), kru_emu::g_lines.end()}; }

}  // namespace

// The operator namespace: krubench_emu, or another for a mutant built alongside it (tests/test_kernels_emu.py).
#ifndef KRU_EMU_LIB
#define KRU_EMU_LIB krubench_emu
#endif
#define KRU_EMU_TORCH_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)  // expands KRU_EMU_LIB before TORCH_LIBRARY pastes it
#define KRU_EMU_TORCH_LIBRARY_IMPL(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)

KRU_EMU_TORCH_LIBRARY(KRU_EMU_LIB, m) {
  m.def("kron_matvec(Tensor x, Tensor w, int[] shapes) -> Tensor");
  m.def("kron_matvec_backward(Tensor grad_y, Tensor x, Tensor w, int[] shapes) -> (Tensor, Tensor)");
  m.def("kru_recurrence(Tensor u, Tensor h0, Tensor w, int[] shapes, str nonlinearity, Tensor bias) -> Tensor");
  m.def("kru_recurrence_backward(Tensor grad_H, Tensor H, Tensor h0, Tensor w, int[] shapes, str nonlinearity, "
        "Tensor bias, Tensor(a!) grad_u) -> (Tensor, Tensor, Tensor)");
  m.def("configure(int order, int seed, int skip_barrier_line, int smem_optin) -> ()", &configure);
  m.def("barrier_lines() -> int[]", &barrier_lines);
}

KRU_EMU_TORCH_LIBRARY_IMPL(KRU_EMU_LIB, CPU, m) {
  m.impl("kron_matvec", &kru::kron_matvec_cuda);
  m.impl("kron_matvec_backward", &kru::kron_matvec_backward_cuda);
  m.impl("kru_recurrence", &kru::kru_recurrence_cuda);
  m.impl("kru_recurrence_backward", &kru::kru_recurrence_backward_cuda);
}
