// What kru_cuda.cu needs from the CUDA runtime, behind these names, so that the same file compiles either
// with nvcc for a GPU or, with KRU_EMULATE defined, as host C++ for the emulator (kru_emu.h), which runs
// each block's threads as cooperative fibers on the CPU (see cuda/README.md, "Testing the CUDA kernels
// without a GPU"):
//   KRU_DYNAMIC_SHARED(name)   the block's dynamic shared memory as `unsigned char* name`
//   KRU_LAUNCH(kernel, grid, block, smem, stream, args...)   a launch, checked
//   gpu::Guard, gpu::stream()  the device guard and the current stream
//   gpu::smem_optin(device)    the device's opt-in limit of shared memory per block (queried, not assumed)
//   gpu::allow_smem(kernel, bytes)   cudaFuncSetAttribute(MaxDynamicSharedMemorySize)
//   gpu::sm_count(device)      the device's multiprocessors (the tiled kernels' sequences a block)
//   gpu::tiled_entries()       the factor size from which the recurrence runs tiled: kTiledEntries on a GPU (or
//                              KRUBENCH_CUDA_TILED_ENTRIES: scripts/gpu_check.py times the fused kernels beside the
//                              tiled ones), lowered by the emulator's tests to take the tiled kernels on small factors
#pragma once

#if defined(KRU_EMULATE)
#include "kru_emu.h"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#define KRU_DYNAMIC_SHARED(name) extern __shared__ unsigned char name[]
#define KRU_LAUNCH(kernel, grid, block, smem, stream, ...)      \
  do {                                                          \
    kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__); \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                             \
  } while (0)

namespace kru::gpu {
using Guard = c10::cuda::CUDAGuard;
inline cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }
inline size_t smem_optin(int device) {
  int bytes = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return static_cast<size_t>(bytes);
}
template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}
inline int sm_count(int device) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}
inline long tiled_entries() {
  const char* entries = std::getenv("KRUBENCH_CUDA_TILED_ENTRIES");
  return entries != nullptr && entries[0] != '\0' ? std::atol(entries) : kTiledEntries;
}
}  // namespace kru::gpu
#endif
