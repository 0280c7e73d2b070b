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
#define DENSESSL_CHECK_ALIGNED_16(ptr)                                              \
  do {                                                                              \
    if (reinterpret_cast<std::uintptr_t>(ptr) % 16 != 0) {                          \
      std::fprintf(stderr, "misaligned 16-byte shared memory load at %s:%d\n", __FILE__, \
                   __LINE__);                                                       \
      std::abort();                                                                 \
    }                                                                               \
  } while (0)

// Runs body() as grid_x × grid_y blocks of `threads` threads, one block at a time.
template <typename F>
void launch(int grid_x, int grid_y, int threads, int smem_bytes, F body) {
  std::vector<unsigned char> shared(static_cast<size_t>(smem_bytes));
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
