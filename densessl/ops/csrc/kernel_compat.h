// Macros that let the kernel headers compile both with nvcc and, for the tests' CPU emulation
// (one std::thread per CUDA thread), with a plain C++ compiler that defines
// DENSESSL_EMULATE_CUDA and its own versions of these macros (and of nvcuda::wmma) first.
#pragma once

#ifndef DENSESSL_EMULATE_CUDA
#include <mma.h>

// 128-byte aligned: WMMA tile loads and stores need 32-byte aligned shared-memory addresses.
#define DENSESSL_SHARED_BYTES(name) extern __shared__ __align__(128) unsigned char name[]
#define DENSESSL_LAUNCH_BOUNDS(n) __launch_bounds__(n)
#define DENSESSL_CHECK_ALIGNED_16(ptr)
// Tensor-core (WMMA) kernel bodies exist only in device code for sm_80 and newer (bf16 WMMA);
// the launchers use those kernels only on such devices.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define DENSESSL_HAS_MMA 1
#else
#define DENSESSL_HAS_MMA 0
#endif
#endif
