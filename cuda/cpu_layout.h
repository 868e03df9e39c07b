// The CPU backend's batch-minor layout: chunks of L batch rows held as planes [n][lane] (real,
// imaginary), moved from and to the row-major (rows, n) tensors by 16×16 register transposes.
#pragma once

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace kru {

// Batch lanes per chunk: one vector register of float. Wider than the register, the stages' working set
// spills (BENCHMARKS.md, "Lanes per chunk on an AVX2 CPU").
#if defined(__AVX512F__)
constexpr int L = 16;  // a zmm register
#else
constexpr int L = 8;  // a ymm register (AVX2; narrower ISAs split it)
#endif

// The L lanes of one state element as a GCC/Clang vector (one register of float, two of double). It may alias T, so planes of T can be read as Lanes<T>.
template <typename T>
struct LanesOf;
template <>
struct LanesOf<float> {
  typedef float type __attribute__((vector_size(L * sizeof(float)), aligned(L * sizeof(float)), may_alias));
};
template <>
struct LanesOf<double> {
  typedef double type __attribute__((vector_size(L * sizeof(double)), aligned(L * sizeof(double)), may_alias));
};
template <typename T>
using Lanes = typename LanesOf<T>::type;

template <typename T>
Lanes<T>* as_lanes(T* p) { return reinterpret_cast<Lanes<T>*>(p); }
template <typename T>
const Lanes<T>* as_lanes(const T* p) { return reinterpret_cast<const Lanes<T>*>(p); }

#if defined(__AVX512F__)
// In-register transpose of 16 rows of 16 floats: afterwards r[c] holds column c, in row order.
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 2; ++i)
    for (int m = 0; m < 4; ++m) {
      t[8 * i + m] = _mm512_shuffle_f32x4(r[8 * i + m], r[8 * i + 4 + m], 0x88);
      t[8 * i + 4 + m] = _mm512_shuffle_f32x4(r[8 * i + m], r[8 * i + 4 + m], 0xdd);
    }
  for (int m = 0; m < 8; ++m) {
    r[m] = _mm512_shuffle_f32x4(t[m], t[8 + m], 0x88);
    r[8 + m] = _mm512_shuffle_f32x4(t[m], t[8 + m], 0xdd);
  }
}
#endif

// Elements [0, done) of all L lanes moved between rows and planes by 16×16 register transposes
// (float, full chunks, AVX-512); 0 where that does not apply. Blocks hold 16 floats of a row:
// 8 complex elements (interleaved re, im) or 16 real ones.
template <typename T, bool CPLX, bool TO_PLANES>
long transpose_blocks(T* rows, long rowstride, long lanes, long n, T* pr, T* pi) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float> && L == 16) {
    constexpr int C = CPLX ? 2 : 1, E = 16 / C;  // elements per block
    if (lanes != L) return 0;
    __m512 r[16];
    long j0 = 0;
    for (; j0 + E <= n; j0 += E) {
      if (TO_PLANES) {
        for (int l = 0; l < 16; ++l) r[l] = _mm512_loadu_ps(rows + l * rowstride * C + j0 * C);
        transpose16(r);
        for (int c = 0; c < 16; ++c) _mm512_storeu_ps((CPLX && c % 2 ? pi : pr) + (j0 + c / C) * L, r[c]);
      } else {
        for (int c = 0; c < 16; ++c) r[c] = _mm512_loadu_ps((CPLX && c % 2 ? pi : pr) + (j0 + c / C) * L);
        transpose16(r);
        for (int l = 0; l < 16; ++l) {  // streaming stores: the rows are not read again soon
          float* dst = rows + l * rowstride * C + j0 * C;
          if (reinterpret_cast<uintptr_t>(dst) % 64 == 0) _mm512_stream_ps(dst, r[l]);
          else _mm512_storeu_ps(dst, r[l]);
        }
      }
    }
    return j0;
  }
#endif
  return 0;
}

// Planes [n][lane] of `lanes` rows of a row-major (rows, n) tensor; the padding lanes are zero.
template <typename T, bool CPLX>
void gather(const T* src, long rowstride, long lanes, long n, T* pr, T* pi) {
  constexpr int C = CPLX ? 2 : 1;
  const long done = transpose_blocks<T, CPLX, true>(const_cast<T*>(src), rowstride, lanes, n, pr, pi);
  for (long l = 0; l < L; ++l) {
    const T* row = src + l * rowstride * C;
    for (long j = done; j < n; ++j) {
      pr[j * L + l] = l < lanes ? row[j * C] : T(0);
      pi[j * L + l] = CPLX && l < lanes ? row[j * C + 1] : T(0);
    }
  }
}

template <typename T, bool CPLX>
void scatter(const T* pr, const T* pi, long lanes, long n, T* dst, long rowstride) {
  constexpr int C = CPLX ? 2 : 1;
  const long done = transpose_blocks<T, CPLX, false>(dst, rowstride, lanes, n, const_cast<T*>(pr), const_cast<T*>(pi));
  for (long l = 0; l < lanes; ++l) {
    T* row = dst + l * rowstride * C;
    for (long j = done; j < n; ++j) {
      row[j * C] = pr[j * L + l];
      if (CPLX) row[j * C + 1] = pi[j * L + l];
    }
  }
}

// dst[0, n) = src[0, n) with streaming (non-temporal) stores where they apply: output written once and
// not read again soon, so it need not be fetched into the cache first. Call stream_fence() before
// another thread reads it.
template <typename T>
void stream_copy(const T* src, T* dst, long n) {
  long i = 0;
#if defined(__AVX512F__)
  if (reinterpret_cast<uintptr_t>(dst) % 64 == 0) {
    constexpr long V = 64 / sizeof(T);
    for (; i + V <= n; i += V) {
      if constexpr (std::is_same_v<T, float>) _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
      else _mm512_stream_pd(dst + i, _mm512_loadu_pd(src + i));
    }
  }
#elif defined(__AVX__)
  if (reinterpret_cast<uintptr_t>(dst) % 32 == 0) {
    constexpr long V = 32 / sizeof(T);
    for (; i + V <= n; i += V) {
      if constexpr (std::is_same_v<T, float>) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
      else _mm256_stream_pd(dst + i, _mm256_loadu_pd(src + i));
    }
  }
#endif
  std::copy(src + i, src + n, dst + i);
}

inline void stream_fence() {
#if defined(__AVX__)
  _mm_sfence();
#endif
}

// Prefetches into L2 part n of N of the `size` elements at p (one step of a sequence), so that a loop over
// n of this step brings in the next step's planes while it computes: the hardware prefetcher alone
// starts each step's burst of reads cold (BENCHMARKS.md).
template <typename T>
void prefetch_part(const T* p, long size, long n, long N) {
  const char* bytes = reinterpret_cast<const char*>(p);
  const long share = size * static_cast<long>(sizeof(T)) / N;
  for (long b = n * share; b < (n + 1) * share; b += 64) __builtin_prefetch(bytes + b, 0, 2);
}

// Per-thread scratch: `count` pairs of planes (real, imaginary) of `size` elements × L lanes, 64-byte
// aligned (whole vectors of lanes).
template <typename T>
struct Scratch {
  std::vector<Lanes<T>> buf;
  long m;  // elements × lanes of one plane
  Scratch(long count, long size) : buf(2 * count * size, Lanes<T>{}), m(size * L) {}
  T* re(long k) { return reinterpret_cast<T*>(buf.data()) + 2 * k * m; }
  T* im(long k) { return reinterpret_cast<T*>(buf.data()) + (2 * k + 1) * m; }
  void zero(long k) { std::fill(re(k), re(k) + 2 * m, T(0)); }  // both planes of slot k (adjacent)
};

}  // namespace kru
