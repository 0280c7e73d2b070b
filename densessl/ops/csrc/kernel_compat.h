// Macros that let the kernel headers compile both with nvcc and, for the tests' CPU emulation
// (one std::thread per CUDA thread), with a plain C++ compiler that defines
// DENSESSL_EMULATE_CUDA and its own versions of these macros first.
#pragma once

#ifndef DENSESSL_EMULATE_CUDA
#define DENSESSL_SHARED_BYTES(name) extern __shared__ __align__(16) unsigned char name[]
#define DENSESSL_LAUNCH_BOUNDS(n) __launch_bounds__(n)
#define DENSESSL_CHECK_ALIGNED_16(ptr)
#endif
