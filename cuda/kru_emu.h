// The CUDA emulator's side of kru_device.h: compiles kru_cuda.cu's kernels as host C++ and runs them on
// the CPU, one block at a time, each CUDA thread a cooperative fiber (ucontext) that runs until its next
// __syncthreads(). What it checks that a plain host build would not:
//   - barriers: a block runs in rounds; in each round every live thread runs from one barrier to the next,
//     in an order set by configure() (ascending, descending, or shuffled per round). A missing barrier
//     lets one thread read data another has not yet written (or overwrite data another has not yet read)
//     under one of these orders, and the results differ. A barrier reached by some threads while others
//     exit, or threads waiting at different barriers (different source lines), is an error: a GPU hangs
//     or is undefined there.
//   - shared memory: each block's dynamic shared memory is filled with NaN (all-ones bytes) before it runs,
//     followed by a NaN guard zone that must be intact afterwards (a write past the requested size fails).
//   - launches: more than 48 KB of dynamic shared memory needs cudaFuncSetAttribute first and at most the
//     configured opt-in limit of the emulated device, as on a GPU; blockDim is at most 1024.
//   - warps: __shfl_xor_sync (full warps, full mask) exchanges values among a warp's 32 fibers, and
//     __syncwarp() waits for them; a warp's lanes run on once all its live lanes wait at the same one, so
//     warps proceed independently between block barriers. A lane that exits or waits at a __syncthreads()
//     while its warp waits at a shuffle is an error (a GPU hangs or is undefined there).
// Not emulated: warp-synchronous code without __syncwarp (lanes do not run in lockstep), grid-wide parallelism
// (blocks run one after another, which is a valid GPU schedule for independent blocks), memory ordering,
// device-side bounds on global memory. compute-sanitizer covers those on a GPU (scripts/gpu_check.sh).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
using cudaStream_t = void*;

namespace kru_emu {

// order: 0 threads in ascending order each round, 1 descending, 2 shuffled per round (seeded).
// skip_barrier_line: a __syncthreads() on this line of kru_cuda.cu does nothing (a planted missing barrier).
// smem_optin: the emulated device's opt-in limit of shared memory per block, in bytes.
// tiled_entries: the factor size from which the recurrence runs its tiled kernels (-1: kTiledEntries, as on a GPU).
struct Config {
  int order = 0;
  uint64_t seed = 0;
  long skip_barrier_line = -1;
  long smem_optin = 227 * 1024;
  long tiled_entries = -1;
};
Config& config();

const dim3& thread_idx();
const dim3& block_idx();
const dim3& block_dim();
unsigned char* dynamic_shared();
void syncthreads(int line);
void syncwarp(unsigned mask, int line);
uint64_t* shuffle_slot(int thread);  // the running block's exchange slot of `thread`
int current_thread();

// __shfl_xor_sync: deposit v, wait for the warp, read the partner's value, wait again (so that no lane
// overwrites its slot before every lane has read it).
template <typename T>
T shfl_xor_sync(unsigned mask, T v, int lane_mask, int line) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "kru_emu: shuffles of at most 8 bytes");
  const int t = current_thread();
  std::memcpy(shuffle_slot(t), &v, sizeof(T));
  syncwarp(mask, -line);
  T r;
  std::memcpy(&r, shuffle_slot((t & ~31) | ((t & 31) ^ (lane_mask & 31))), sizeof(T));
  syncwarp(mask, -line);
  return r;
}
void set_max_dynamic_smem(const void* kernel, size_t bytes);
void run_grid(const void* kernel, unsigned grid, unsigned block, size_t smem, const std::function<void()>& body);

template <typename Kernel, typename... Args>
void launch(Kernel kernel, long grid, int block, size_t smem, Args... args) {
  run_grid(reinterpret_cast<const void*>(kernel), static_cast<unsigned>(grid), static_cast<unsigned>(block), smem,
           [&] { kernel(args...); });
}

}  // namespace kru_emu

#define threadIdx (::kru_emu::thread_idx())
#define blockIdx (::kru_emu::block_idx())
#define blockDim (::kru_emu::block_dim())
#define __syncthreads() ::kru_emu::syncthreads(__LINE__)
#define __syncwarp(...) ::kru_emu::syncwarp(0xffffffffu, __LINE__)
#define __shfl_xor_sync(mask, v, lane_mask) ::kru_emu::shfl_xor_sync(mask, v, lane_mask, __LINE__)
#define KRU_DYNAMIC_SHARED(name) unsigned char* name = ::kru_emu::dynamic_shared()
#define KRU_LAUNCH(kernel, grid, block, smem, stream, ...) ::kru_emu::launch(kernel, grid, block, smem, __VA_ARGS__)

namespace kru {
inline int max(int a, int b) { return a > b ? a : b; }  // CUDA's device max(int, int)
inline int min(int a, int b) { return a < b ? a : b; }

namespace gpu {
struct Guard {
  explicit Guard(const c10::Device&) {}
};
inline cudaStream_t stream() { return nullptr; }
inline size_t smem_optin(int) { return static_cast<size_t>(kru_emu::config().smem_optin); }
template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  kru_emu::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), bytes);
}
// One multiprocessor: the tiled kernels then put as many sequences in a block as its shared memory holds.
inline int sm_count(int) { return 1; }
inline long tiled_entries() {
  return kru_emu::config().tiled_entries > 0 ? kru_emu::config().tiled_entries : kTiledEntries;
}
}  // namespace gpu
}  // namespace kru
