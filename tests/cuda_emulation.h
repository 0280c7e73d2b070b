// CPU emulation of CUDA blocks for the kernel tests: each CUDA thread of a block is a
// std::thread, __syncthreads is a std::barrier, and shared memory is one buffer of exactly the
// launch size, filled with NaN bytes before every block so that reading an unstaged cell
// poisons the result (reading past it is caught by AddressSanitizer with -fsanitize=address).
// Include this before a kernel header.
#pragma once

#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <span>
#include <type_traits>
#include <string>
#include <thread>
#include <vector>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
};
struct float4 {
  float x, y, z, w;
};

thread_local uint3 blockIdx;
thread_local uint3 threadIdx;
thread_local dim3 blockDim;

namespace emu {
thread_local std::barrier<>* block_barrier = nullptr;
thread_local unsigned char* shared_memory = nullptr;
}  // namespace emu

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

#define __global__
#define __device__
#define __forceinline__ inline
#define DENSESSL_EMULATE_CUDA
#define DENSESSL_SHARED_BYTES(name) unsigned char* name = emu::shared_memory
#define DENSESSL_LAUNCH_BOUNDS(n)
#define DENSESSL_HAS_MMA 1
#define DENSESSL_CHECK_ALIGNED_16(ptr)                                              \
  do {                                                                              \
    if (reinterpret_cast<std::uintptr_t>(ptr) % 16 != 0) {                          \
      std::fprintf(stderr, "misaligned 16-byte shared memory load at %s:%d\n", __FILE__, \
                   __LINE__);                                                       \
      std::abort();                                                                 \
    }                                                                               \
  } while (0)

// WMMA (m16n16k16) for the tensor-core kernels: lane 0 of each warp holds the whole tile in fp32
// (the products of 16-bit values are exact in fp32, which then accumulates, as on the tensor
// cores), does the warp's loads, products and stores, and so reads every cell a load covers (an
// unstaged one poisons the result). Every lane checks WMMA's address rules: 32-byte aligned
// pointers and a pitch that is a multiple of 16 bytes. The kernels synchronise the block before
// reading a stored tile back.
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  float v[rows * cols];
};

inline void check_tile_address(const void* ptr, unsigned ldm, size_t element_size,
                               const char* what) {
  if (reinterpret_cast<std::uintptr_t>(ptr) % 32 != 0 || (ldm * element_size) % 16 != 0) {
    std::fprintf(stderr, "wmma %s: pointer %p or pitch %u elements of %zu bytes misaligned\n",
                 what, ptr, ldm, element_size);
    std::abort();
  }
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* ptr, unsigned ldm) {
  check_tile_address(ptr, ldm, sizeof(T), "load_matrix_sync");
  if (threadIdx.x % 32 != 0) return;
  using Frag = fragment<Use, M, N, K, T, Layout>;
  for (int r = 0; r < Frag::rows; ++r)
    for (int c = 0; c < Frag::cols; ++c)
      f.v[r * Frag::cols + c] = static_cast<float>(
          std::is_same_v<Layout, col_major> ? ptr[size_t(c) * ldm + r] : ptr[size_t(r) * ldm + c]);
}

template <typename Frag>
void fill_fragment(Frag& f, float value) {
  for (float& x : f.v) x = value;
}

template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d,
              const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TB, LB>& b,
              const fragment<accumulator, M, N, K, float>& c) {
  if (threadIdx.x % 32 != 0) return;
  float result[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float sum = c.v[i * N + j];
      for (int k = 0; k < K; ++k) sum += a.v[i * K + k] * b.v[k * N + j];
      result[i * N + j] = sum;
    }
  std::memcpy(d.v, result, sizeof(result));
}

template <int M, int N, int K>
void store_matrix_sync(float* ptr, const fragment<accumulator, M, N, K, float>& f, unsigned ldm,
                       layout_t layout) {
  check_tile_address(ptr, ldm, sizeof(float), "store_matrix_sync");
  if (threadIdx.x % 32 != 0) return;
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c)
      (layout == mem_col_major ? ptr[size_t(c) * ldm + r] : ptr[size_t(r) * ldm + c]) =
          f.v[r * N + c];
}
}  // namespace wmma
}  // namespace nvcuda

// Runs body() as grid_x × grid_y blocks of `threads` threads, one block at a time.
template <typename F>
void launch(int grid_x, int grid_y, int threads, int smem_bytes, F body) {
  // 128-byte aligned, as the kernels declare their dynamic shared memory.
  std::vector<unsigned char> storage(static_cast<size_t>(smem_bytes) + 128);
  const size_t skew = (128 - reinterpret_cast<std::uintptr_t>(storage.data()) % 128) % 128;
  const std::span<unsigned char> shared(storage.data() + skew, static_cast<size_t>(smem_bytes));
  std::barrier<> barrier(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      threadIdx = {unsigned(t), 0, 0};
      blockDim = {unsigned(threads), 1, 1};
      emu::block_barrier = &barrier;
      emu::shared_memory = shared.data();
      for (int by = 0; by < grid_y; ++by) {
        for (int bx = 0; bx < grid_x; ++bx) {
          blockIdx = {unsigned(bx), unsigned(by), 0};
          barrier.arrive_and_wait();  // the previous block is done with shared memory
          if (t == 0) std::memset(shared.data(), 0xFF, shared.size());
          barrier.arrive_and_wait();
          body();
        }
      }
    });
  }
  for (auto& th : pool) th.join();
}
