// CUDA kernels of the spatial correlation and their launch geometry (see correlation_params.h
// for the definition). Included by correlation_cuda.cu; free of PyTorch so that the kernels
// can also be compiled for the CPU by a test harness that emulates blocks with threads.
//
// Forward: one block per (output row y, displacement row i, tile of output columns, batch).
// Channels are walked in chunks of kChunk: the tile's input1 row segment and the matching
// (shifted) input2 row segment are staged in shared memory as the accumulation type, then each
// thread accumulates a TXT × TDT register tile of (column, horizontal displacement) outputs.
// With unit horizontal stride and displacement step (SLIDE), output (x, j) reads input2 at
// staged column x + j, so a thread loads TXT + TDT − 1 input2 values per channel for TXT·TDT
// products, in whole 16-byte loads (TDT = 4 keeps them aligned); otherwise each product reads
// its own staged value.
//
// Backward (gather form, no atomics, one kernel per input): one block per (row of the input
// whose gradient is computed, tile of its columns, chunk of channels, batch). For every
// (displacement row, kernel tap) the block stages the "other" input's row segment S[c][m] and a
// skewed copy G[m][x] of the gradient rows, where m indexes columns of the other input, so that
//   grad[c, x] += Σ_m S[c][m] · G[m][x].
// G is zero outside the band x ≤ m ≤ x + (pW − 1)·dpW, so this is a banded matrix product;
// each thread holds a TCT × TXT (channel, column) register tile and walks only its band.
//
// The same two banded products on the tensor cores, for fp16/bf16, follow at the end of the file.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "correlation_params.h"
#include "kernel_compat.h"

namespace densessl {
namespace kernels {

constexpr int kChunk = 16;              // channels staged at a time by the forward kernel
constexpr int kSmemLimit = 48 * 1024;   // dynamic shared memory per block, no opt-in needed
constexpr int kForwardThreads = 256;    // forward block size cap (register tile kernels)
constexpr int kBackwardThreads = 128;   // backward block size
constexpr int kBackwardTCT = 8;         // backward register tile: channels
constexpr int kBackwardTXT = 4;         // backward register tile: columns
constexpr int kForwardTXT = 8;          // forward register tile: output columns
constexpr int kForwardTDT = 4;          // forward register tile: displacements (SLIDE variant)

// fp32 accumulation for float/half/bfloat16, fp64 for double.
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Row pitch of the forward's staged input2 rows: a multiple of 4 (16-byte aligned rows) with at
// least one column to spare, which the whole 16-byte loads of the last thread group reach.
constexpr int forward_b_pitch(int columns) { return (columns + 4) & ~3; }

// Row pitch of the backward's staged rows S[c][·]: odd, so that the rows that the lanes of a
// warp read at the same column fall in different shared-memory banks (constexpr: host and device).
constexpr int odd_pitch(int columns) { return columns | 1; }

// Visits the flat indices tid, tid + step, ... < rows·cols as (row, col), dividing only once.
template <typename F>
__device__ __forceinline__ void for_each_2d(int rows, int cols, int tid, int step, F&& body) {
  if (cols <= 0) return;
  int r = tid / cols;
  int c = tid - r * cols;
  const int dr = step / cols;
  const int dc = step - dr * cols;
  while (r < rows) {
    body(r, c);
    r += dr;
    c += dc;
    if (c >= cols) {
      c -= cols;
      ++r;
    }
  }
}

// Block coordinates: blockIdx.x = tile + tilesX·(inner + inner_count·row), blockIdx.y = batch.
struct BlockCoords {
  int tile, inner, row, batch;
};

__device__ __forceinline__ BlockCoords block_coords(int tilesX, int inner_count) {
  const int bx = blockIdx.x;
  const int rest = bx / tilesX;
  return {bx - rest * tilesX, rest % inner_count, rest / inner_count,
          static_cast<int>(blockIdx.y)};
}

// Stages rows × cols values of one image row of channels c0, c0 + 1, ...:
//   dst[c·ld + m] = row[(c0 + c)·HW + col0 + m·step]  (converted to dst_t),
// zero for channels ≥ C and for columns outside [0, W).
template <typename dst_t, typename src_t>
__device__ __forceinline__ void stage_rows(dst_t* dst, int ld, int rows, int cols,
                                           const src_t* row, int c0, int C, int64_t HW, int col0,
                                           int step, int W, int tid, int nthreads) {
  for_each_2d(rows, cols, tid, nthreads, [&](int c, int m) {
    const int col = col0 + m * step;
    dst[c * ld + m] = (c0 + c < C && col >= 0 && col < W)
                          ? static_cast<dst_t>(row[int64_t(c0 + c) * HW + col])
                          : static_cast<dst_t>(0.0f);
  });
}

// The inverse of stage_rows for the rows × cols results of a block, from shared memory to one
// image row of channels c0, c0 + 1, ...:
//   row[(c0 + c)·HW + col0 + m] = src[c·ld + m]  (converted to dst_t),
// skipping channels ≥ C and columns ≥ W.
template <typename dst_t, typename src_t>
__device__ __forceinline__ void store_rows(dst_t* row, const src_t* src, int ld, int rows,
                                           int cols, int c0, int C, int64_t HW, int col0, int W,
                                           int tid, int nthreads) {
  for_each_2d(rows, cols, tid, nthreads, [&](int c, int m) {
    const int col = col0 + m;
    if (c0 + c < C && col < W)
      row[int64_t(c0 + c) * HW + col] = static_cast<dst_t>(src[c * ld + m]);
  });
}

// Stages, for one (displacement row ph, output row y, kernel column kj), the band of the output
// gradient that a backward block multiplies with the staged row of the other input: target
// column x0 + x pairs with staged column m = x + j·dpW (input1's gradient) or
// m = x + (pW − 1 − j)·dpW (input2's), and dst[m·ld + x] = grad[ph, j, y, output column], zero
// where no output column pairs them. Cells off the band are never written.
template <bool FOR_INPUT2, typename dst_t, typename src_t>
__device__ __forceinline__ void stage_grad_band(dst_t* dst, int ld, const src_t* grad_b,
                                                const CorrParams& p, int ph, int y, int kj,
                                                int x0, int base, int TX, int tid,
                                                int nthreads) {
  const int64_t plane = int64_t(p.oH) * p.oW;
  for_each_2d(p.pW, TX, tid, nthreads, [&](int j, int xl) {
    const int m = FOR_INPUT2 ? xl + (p.pW - 1 - j) * p.dpW : xl + j * p.dpW;
    const int col1 = FOR_INPUT2 ? base + m : x0 + xl;  // input1 column
    const int u = col1 + p.padW - kj * p.dilW;         // = x·sW for the output column
    dst[m * ld + xl] =
        (u >= 0 && u % p.sW == 0 && u / p.sW < p.oW)
            ? static_cast<dst_t>(
                  grad_b[(int64_t(ph) * p.pW + j) * plane + int64_t(y) * p.oW + u / p.sW])
            : static_cast<dst_t>(0.0f);
  });
}

// One kernel tap (tap = ki·kW + kj) of a forward block: the rows of the two inputs that output
// row y and displacement row ph read, the in1 column of output column x0 and the in2 column that
// the first displacement (j = 0, a shift of −rW·dpW) pairs with it.
template <typename scalar_t>
struct ForwardTap {
  const scalar_t* in1_row;
  const scalar_t* in2_row;
  int col1_0, col2_0;
};

// False when either row lies outside the image; that is the same for the whole block, so
// skipping the tap keeps every __syncthreads matched.
template <typename scalar_t>
__device__ __forceinline__ bool forward_tap(const scalar_t* in1_b, const scalar_t* in2_b,
                                            const CorrParams& p, int y, int ph, int x0, int tap,
                                            ForwardTap<scalar_t>* t) {
  const int ki = tap / p.kW;
  const int kj = tap - ki * p.kW;
  const int row1 = y * p.sH - p.padH + ki * p.dilH;
  const int row2 = row1 + (ph - p.rH) * p.dpH;
  if (row1 < 0 || row1 >= p.H || row2 < 0 || row2 >= p.H) return false;
  t->in1_row = in1_b + int64_t(row1) * p.W;
  t->in2_row = in2_b + int64_t(row2) * p.W;
  t->col1_0 = x0 * p.sW - p.padW + kj * p.dilW;
  t->col2_0 = t->col1_0 - p.rW * p.dpW;
  return true;
}

// Column of the other input that a backward block for target columns x0, x0 + 1, ... stages
// at m = 0. For input1's gradient, target column x pairs with input2 column x + (j − rW)·dpW at
// m = (x − x0) + j·dpW; for input2's gradient, target column x pairs with input1 column
// x − (j − rW)·dpW at m = (x − x0) + (pW − 1 − j)·dpW.
template <bool FOR_INPUT2>
__device__ __forceinline__ int backward_base(const CorrParams& p, int x0) {
  return FOR_INPUT2 ? x0 - (p.pW - 1 - p.rW) * p.dpW : x0 - p.rW * p.dpW;
}

// One (displacement row ph, kernel row ki) step of a backward block for row yt of the target
// input (step = ph·kH + ki): the row of the other input that it pairs with and the output row
// y that reads the pair.
struct BackwardTap {
  int ph, other_row, y;
};

// False when the other row lies outside the image or no output row reads the pair; that is the
// same for the whole block, so skipping the step keeps every __syncthreads matched.
template <bool FOR_INPUT2>
__device__ __forceinline__ bool backward_tap(const CorrParams& p, int yt, int step,
                                             BackwardTap* t) {
  const int ph = step / p.kH;
  const int ki = step - ph * p.kH;
  const int shift_h = (ph - p.rH) * p.dpH;
  const int r1 = FOR_INPUT2 ? yt - shift_h : yt;  // input1 row
  const int r2 = FOR_INPUT2 ? yt : yt + shift_h;  // input2 row
  if (r1 < 0 || r1 >= p.H || r2 < 0 || r2 >= p.H) return false;
  const int u = r1 + p.padH - ki * p.dilH;  // = y·sH for the output row reading row r1
  if (u < 0 || u % p.sH != 0 || u / p.sH >= p.oH) return false;
  t->ph = ph;
  t->other_row = FOR_INPUT2 ? r1 : r2;
  t->y = u / p.sH;
  return true;
}

// N consecutive values from shared memory; 16-byte loads for float when N % 4 == 0 (callers
// guarantee 16-byte alignment in that case).
template <int N, typename acc_t>
__device__ __forceinline__ void load_row(const acc_t* src, acc_t (&dst)[N]) {
  if constexpr (std::is_same_v<acc_t, float> && N % 4 == 0) {
    DENSESSL_CHECK_ALIGNED_16(src);
    const float4* v = reinterpret_cast<const float4*>(src);
#pragma unroll
    for (int k = 0; k < N / 4; ++k) {
      const float4 q = v[k];
      dst[4 * k + 0] = q.x;
      dst[4 * k + 1] = q.y;
      dst[4 * k + 2] = q.z;
      dst[4 * k + 3] = q.w;
    }
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) dst[k] = src[k];
  }
}

// ------------------------------------------------------------------------------ forward

struct ForwardGeometry {
  int nXg;       // thread groups along output columns (TXT columns each)
  int nDg;       // thread groups along horizontal displacements (TDT each)
  int tilesX;    // column tiles per output row
  int threads;   // nXg · nDg
  int smem;      // dynamic shared memory, bytes
  int gridX;     // tilesX · pH · oH
};

template <int TXT, int TDT>
inline int forward_smem_bytes(const CorrParams& p, int nXg, int nDg, int acc_size) {
  const int64_t TX = int64_t(nXg) * TXT, ND = int64_t(nDg) * TDT;
  const int64_t TXB = (TX - 1) * p.sW + (ND - 1) * p.dpW + 1;
  const int64_t ldB = forward_b_pitch(static_cast<int>(TXB));
  const int64_t elems = std::max<int64_t>(kChunk * (TX + ldB), ND * TX);
  return static_cast<int>(std::min<int64_t>(elems * acc_size, INT32_MAX));
}

// Returns false when even the smallest tile does not fit in shared memory.
template <int TXT, int TDT>
inline bool forward_geometry(const CorrParams& p, int acc_size, int max_threads,
                             ForwardGeometry* g) {
  g->nDg = ceil_div(p.pW, TDT);
  g->nXg = std::min(ceil_div(p.oW, TXT), std::max(1, max_threads / g->nDg));
  while (g->nXg > 1 && forward_smem_bytes<TXT, TDT>(p, g->nXg, g->nDg, acc_size) > kSmemLimit)
    g->nXg = (g->nXg + 1) / 2;
  g->smem = forward_smem_bytes<TXT, TDT>(p, g->nXg, g->nDg, acc_size);
  g->tilesX = ceil_div(p.oW, g->nXg * TXT);
  g->threads = g->nXg * g->nDg;
  g->gridX = g->tilesX * p.pH * p.oH;
  return g->smem <= kSmemLimit && g->threads <= 1024;
}

// Calls f(std::integral_constant<int, TDT>, std::bool_constant<SLIDE>) for the forward kernel
// variant suited to p.
template <typename F>
inline void with_forward_variant(const CorrParams& p, F&& f) {
  if (p.sW != 1 || p.dpW != 1)
    f(std::integral_constant<int, 1>{}, std::false_type{});
  else
    f(std::integral_constant<int, kForwardTDT>{}, std::true_type{});
}

template <typename scalar_t, int TXT, int TDT, bool SLIDE>
__global__ void DENSESSL_LAUNCH_BOUNDS(SLIDE ? kForwardThreads : 1024)
    corr_forward_kernel(const scalar_t* __restrict__ in1, const scalar_t* __restrict__ in2,
                        scalar_t* __restrict__ out, const CorrParams p, const int nXg,
                        const int nDg, const int tilesX) {
  using acc_t = typename AccType<scalar_t>::type;
  DENSESSL_SHARED_BYTES(smem_raw);
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);

  const int TX = nXg * TXT;               // output columns of the tile
  const int ND = nDg * TDT;               // horizontal displacements, padded to the thread tile
  const int TXB = (TX - 1) * p.sW + (ND - 1) * p.dpW + 1;  // input2 columns staged
  const int ldB = forward_b_pitch(TXB);
  acc_t* As = smem;                       // [kChunk][TX]
  acc_t* Bs = smem + kChunk * TX;         // [kChunk][ldB]

  const BlockCoords blk = block_coords(tilesX, p.pH);
  const int ph = blk.inner;
  const int y = blk.row;
  const int b = blk.batch;
  const int x0 = blk.tile * TX;
  const int tid = threadIdx.x;
  const int nthreads = blockDim.x;
  const int dg = tid % nDg;
  const int xg = tid / nDg;
  const int xl0 = xg * TXT;
  const int d0 = dg * TDT;

  acc_t acc[TXT][TDT];
#pragma unroll
  for (int i = 0; i < TXT; ++i)
#pragma unroll
    for (int j = 0; j < TDT; ++j) acc[i][j] = acc_t(0);

  const int64_t HW = int64_t(p.H) * p.W;
  const scalar_t* in1_b = in1 + int64_t(b) * p.C * HW;
  const scalar_t* in2_b = in2 + int64_t(b) * p.C * HW;
  for (int tap = 0; tap < p.kH * p.kW; ++tap) {
    ForwardTap<scalar_t> t;
    if (!forward_tap(in1_b, in2_b, p, y, ph, x0, tap, &t)) continue;
    for (int c0 = 0; c0 < p.C; c0 += kChunk) {
      __syncthreads();
      stage_rows(As, TX, kChunk, TX, t.in1_row, c0, p.C, HW, t.col1_0, p.sW, p.W, tid, nthreads);
      stage_rows(Bs, ldB, kChunk, TXB, t.in2_row, c0, p.C, HW, t.col2_0, 1, p.W, tid, nthreads);
      __syncthreads();
#pragma unroll 2
      for (int c = 0; c < kChunk; ++c) {
        acc_t a[TXT];
        load_row<TXT>(As + c * TX + xl0, a);
        const acc_t* brow = Bs + c * ldB;
        if constexpr (SLIDE) {
          static_assert(TXT % 4 == 0 && TDT % 4 == 0, "whole 16-byte loads of input2");
          acc_t bv[TXT + TDT];  // the last value is loaded and never used
          load_row<TXT + TDT>(brow + xl0 + d0, bv);
#pragma unroll
          for (int i = 0; i < TXT; ++i)
#pragma unroll
            for (int j = 0; j < TDT; ++j) acc[i][j] += a[i] * bv[i + j];
        } else {
#pragma unroll
          for (int i = 0; i < TXT; ++i)
#pragma unroll
            for (int j = 0; j < TDT; ++j)
              acc[i][j] += a[i] * brow[(xl0 + i) * p.sW + (d0 + j) * p.dpW];
        }
      }
    }
  }

  // Write through shared memory so that the global stores are contiguous along x.
  __syncthreads();
  acc_t* Os = smem;  // [ND][TX]
#pragma unroll
  for (int i = 0; i < TXT; ++i)
#pragma unroll
    for (int j = 0; j < TDT; ++j) Os[(d0 + j) * TX + xl0 + i] = acc[i][j];
  __syncthreads();
  const int64_t plane = int64_t(p.oH) * p.oW;
  scalar_t* out_row = out + (int64_t(b) * p.pH + ph) * p.pW * plane + int64_t(y) * p.oW;
  for_each_2d(p.pW, TX, tid, nthreads, [&](int j, int xl) {
    const int x = x0 + xl;
    if (x < p.oW) out_row[j * plane + x] = static_cast<scalar_t>(Os[j * TX + xl]);
  });
}

// ------------------------------------------------------------------------------ backward

struct BackwardGeometry {
  int nCg;       // thread groups along channels (TCT channels each)
  int nXg;       // thread groups along columns (TXT columns each)
  int tilesX;    // column tiles per row
  int chunksC;   // channel chunks (nCg · TCT channels each)
  int threads;   // nCg · nXg
  int smem;      // dynamic shared memory, bytes
  int gridX;     // tilesX · chunksC · H
};

template <int TCT, int TXT>
inline int backward_smem_bytes(const CorrParams& p, int nCg, int nXg, int acc_size) {
  const int64_t CB = int64_t(nCg) * TCT, TX = int64_t(nXg) * TXT;
  const int64_t U = TX + int64_t(p.pW - 1) * p.dpW;
  return static_cast<int>(
      std::min<int64_t>((CB * odd_pitch(static_cast<int>(U)) + U * TX) * acc_size, INT32_MAX));
}

template <int TCT, int TXT>
inline bool backward_geometry(const CorrParams& p, int acc_size, int max_threads,
                              BackwardGeometry* g) {
  g->nCg = std::max(1, std::min(ceil_div(p.C, TCT), max_threads / 16));
  g->nXg = std::max(1, std::min(ceil_div(p.W, TXT), max_threads / g->nCg));
  while (backward_smem_bytes<TCT, TXT>(p, g->nCg, g->nXg, acc_size) > kSmemLimit &&
         (g->nXg > 1 || g->nCg > 1)) {
    if (g->nXg > 1)
      g->nXg = (g->nXg + 1) / 2;
    else
      g->nCg = (g->nCg + 1) / 2;
  }
  g->smem = backward_smem_bytes<TCT, TXT>(p, g->nCg, g->nXg, acc_size);
  g->tilesX = ceil_div(p.W, g->nXg * TXT);
  g->chunksC = ceil_div(p.C, g->nCg * TCT);
  g->threads = g->nCg * g->nXg;
  g->gridX = g->tilesX * g->chunksC * p.H;
  return g->smem <= kSmemLimit;
}

template <typename scalar_t, int TCT, int TXT, bool FOR_INPUT2>
__global__ void DENSESSL_LAUNCH_BOUNDS(kBackwardThreads)
    corr_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ other,
                         scalar_t* __restrict__ target_grad, const CorrParams p, const int nCg,
                         const int nXg, const int tilesX, const int chunksC) {
  using acc_t = typename AccType<scalar_t>::type;
  DENSESSL_SHARED_BYTES(smem_raw);
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);

  const int CB = nCg * TCT;                // channels of the block
  const int TX = nXg * TXT;                // target columns of the tile
  const int span = (p.pW - 1) * p.dpW;     // horizontal reach of the patch
  const int U = TX + span;                 // columns of the other input staged
  const int ldS = odd_pitch(U);
  acc_t* S = smem;                         // [CB][ldS]
  acc_t* G = smem + CB * ldS;              // [U][TX]

  const BlockCoords blk = block_coords(tilesX, chunksC);
  const int yt = blk.row;                  // row of the target input
  const int b = blk.batch;
  const int x0 = blk.tile * TX;
  const int c0 = blk.inner * CB;
  const int tid = threadIdx.x;
  const int nthreads = blockDim.x;
  const int cg = tid % nCg;
  const int xg = tid / nCg;
  const int xl0 = xg * TXT;

  acc_t acc[TCT][TXT];
#pragma unroll
  for (int k = 0; k < TCT; ++k)
#pragma unroll
    for (int i = 0; i < TXT; ++i) acc[k][i] = acc_t(0);

  const int64_t HW = int64_t(p.H) * p.W;
  const int64_t plane = int64_t(p.oH) * p.oW;
  const scalar_t* other_b = other + int64_t(b) * p.C * HW;
  const scalar_t* grad_b = grad + int64_t(b) * p.pH * p.pW * plane;
  const int base = backward_base<FOR_INPUT2>(p, x0);

  // The scatter below rewrites the same band cells at every step, so the rest of G stays zero.
  for (int idx = tid; idx < U * TX; idx += nthreads) G[idx] = acc_t(0);

  for (int step = 0; step < p.pH * p.kH; ++step) {
    BackwardTap tap;
    if (!backward_tap<FOR_INPUT2>(p, yt, step, &tap)) continue;
    const scalar_t* other_row = other_b + int64_t(tap.other_row) * p.W;
    for (int kj = 0; kj < p.kW; ++kj) {
      __syncthreads();
      stage_rows(S, ldS, CB, U, other_row, c0, p.C, HW, base, 1, p.W, tid, nthreads);
      stage_grad_band<FOR_INPUT2>(G, TX, grad_b, p, tap.ph, tap.y, kj, x0, base, TX, tid,
                                  nthreads);
      __syncthreads();
      const int m_end = xl0 + TXT + span;
      for (int m = xl0; m < m_end; ++m) {
        acc_t s[TCT];
#pragma unroll
        for (int k = 0; k < TCT; ++k) s[k] = S[(cg + k * nCg) * ldS + m];
        acc_t g[TXT];
        load_row<TXT>(G + m * TX + xl0, g);
#pragma unroll
        for (int k = 0; k < TCT; ++k)
#pragma unroll
          for (int i = 0; i < TXT; ++i) acc[k][i] += s[k] * g[i];
      }
    }
  }

  __syncthreads();
  acc_t* Os = smem;  // [CB][TX]
#pragma unroll
  for (int k = 0; k < TCT; ++k)
#pragma unroll
    for (int i = 0; i < TXT; ++i) Os[(cg + k * nCg) * TX + xl0 + i] = acc[k][i];
  __syncthreads();
  store_rows(target_grad + int64_t(b) * p.C * HW + int64_t(yt) * p.W, Os, TX, CB, TX, c0, p.C,
             HW, x0, p.W, tid, nthreads);
}


// ------------------------------------------------------------------ tensor-core kernels (16-bit)
//
// For fp16 and bf16 inputs (fp32 accumulation) on sm_80 and newer, both products are computed
// on the tensor cores with WMMA 16×16×16 tiles; the staged operands stay 16-bit in shared memory.
//
// Forward (unit horizontal stride): for one (output row, displacement row, kernel tap) block,
//   D[x, m] = Σ_c in1[c, x] · in2[c, m]        (a dense GEMM over a tile of columns)
// holds every wanted output on the band out[j, x] = D[x, x + j·dpW]. Each warp owns 16 output
// columns and the NT = ⌈(16 + span)/16⌉ column tiles of in2 that its band touches, so it computes
// 16·16·NT products for its 16·pW outputs (1.9× for P25, 3.6× for P9): cheap on tensor cores.
//
// Backward (gather form, as above): grad[c, x] = Σ_m S[c, m] · G[m, x] with G banded; a warp
// owns WC tiles of 16 channels × one tile of 16 columns and walks the NT tiles of m of its band.

constexpr int kMma = 16;                  // WMMA tile edge (m16n16k16)
constexpr int kMmaChunk = 64;             // forward: channels staged at a time
constexpr int kMmaMaxWarps = 8;           // forward: warps (16 output columns each) per block
constexpr int kMmaMaxBands = 4;           // largest NT: span = (pW − 1)·dpW ≤ 48
constexpr int kMmaPad = 8;                // row padding of the staged 16-bit tiles (bank spread)
constexpr int kMmaBackwardWC = 2;         // backward: channel tiles per warp
constexpr int kMmaBackwardMaxWarpsX = 4;  // backward: warps along columns, at most
constexpr int kMmaBackwardMaxWarpsC = 2;  // backward: warps along channels, at most

// Column tiles of 16 that the band of one 16-column tile reaches: ⌈(16 + span) / 16⌉.
inline int mma_bands(const CorrParams& p) { return ceil_div(kMma + (p.pW - 1) * p.dpW, kMma); }

// Whether the tensor-core forward applies (the backward needs only the band bound).
inline bool mma_forward_applies(const CorrParams& p) {
  return p.sW == 1 && mma_bands(p) <= kMmaMaxBands;
}
inline bool mma_backward_applies(const CorrParams& p) { return mma_bands(p) <= kMmaMaxBands; }

struct MmaForwardGeometry {
  int warps;    // 16-column tiles per block
  int tilesX;   // blocks per output row
  int ldA;      // staged in1 row pitch (elements)
  int ldB;      // staged in2 row pitch
  int ldD;      // per-warp fp32 result pitch
  int smem;     // bytes
  int gridX;    // tilesX · pH · oH
};

inline MmaForwardGeometry mma_forward_geometry(const CorrParams& p, int nt, int max_warps) {
  MmaForwardGeometry g{};
  const int mtiles = ceil_div(p.oW, kMma);
  g.tilesX = ceil_div(mtiles, std::max(1, max_warps));
  g.warps = ceil_div(mtiles, g.tilesX);
  const int TX = g.warps * kMma;
  g.ldA = TX + kMmaPad;
  g.ldB = TX - kMma + nt * kMma + kMmaPad;
  g.ldD = nt * kMma + 4;
  const int staged = kMmaChunk * (g.ldA + g.ldB) * 2;
  const int results = g.warps * kMma * g.ldD * 4;
  g.smem = std::max(staged, results);
  g.gridX = g.tilesX * p.pH * p.oH;
  return g;
}

// scalar_t: the 16-bit storage type of the inputs; mma_t: the same bits as WMMA's element type.
template <typename scalar_t, typename mma_t, int NT>
__global__ void DENSESSL_LAUNCH_BOUNDS(kMmaMaxWarps * 32)
    corr_forward_mma_kernel(const scalar_t* __restrict__ in1, const scalar_t* __restrict__ in2,
                            scalar_t* __restrict__ out, const CorrParams p, const int warps,
                            const int tilesX, const int ldA, const int ldB, const int ldD) {
#if DENSESSL_HAS_MMA
  namespace wmma = nvcuda::wmma;
  DENSESSL_SHARED_BYTES(smem_raw);
  scalar_t* As = reinterpret_cast<scalar_t*>(smem_raw);  // [kMmaChunk][ldA]: in1[c, x]
  scalar_t* Bs = As + kMmaChunk * ldA;                    // [kMmaChunk][ldB]: in2[c, m]

  const int TX = warps * kMma;
  const int TXB = TX - kMma + NT * kMma;  // staged in2 columns
  const BlockCoords blk = block_coords(tilesX, p.pH);
  const int ph = blk.inner;
  const int y = blk.row;
  const int b = blk.batch;
  const int x0 = blk.tile * TX;
  const int tid = threadIdx.x;
  const int nthreads = blockDim.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int xw = warp * kMma;  // the warp's first column in the tile

  wmma::fragment<wmma::accumulator, kMma, kMma, kMma, float> acc[NT];
#pragma unroll
  for (int n = 0; n < NT; ++n) wmma::fill_fragment(acc[n], 0.0f);

  const int64_t HW = int64_t(p.H) * p.W;
  const scalar_t* in1_b = in1 + int64_t(b) * p.C * HW;
  const scalar_t* in2_b = in2 + int64_t(b) * p.C * HW;
  for (int tap = 0; tap < p.kH * p.kW; ++tap) {
    ForwardTap<scalar_t> t;
    if (!forward_tap(in1_b, in2_b, p, y, ph, x0, tap, &t)) continue;
    for (int c0 = 0; c0 < p.C; c0 += kMmaChunk) {
      __syncthreads();
      stage_rows(As, ldA, kMmaChunk, TX, t.in1_row, c0, p.C, HW, t.col1_0, 1, p.W, tid, nthreads);
      stage_rows(Bs, ldB, kMmaChunk, TXB, t.in2_row, c0, p.C, HW, t.col2_0, 1, p.W, tid, nthreads);
      __syncthreads();
      const int k_left = (p.C - c0 + kMma - 1) / kMma * kMma;  // skip all-zero channel tiles
      const int k_end = k_left < kMmaChunk ? k_left : kMmaChunk;
      for (int k = 0; k < k_end; k += kMma) {
        // in1 tile: x × c, stored c-major → col_major with pitch ldA.
        wmma::fragment<wmma::matrix_a, kMma, kMma, kMma, mma_t, wmma::col_major> a;
        wmma::load_matrix_sync(a, reinterpret_cast<const mma_t*>(As + k * ldA + xw), ldA);
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          wmma::fragment<wmma::matrix_b, kMma, kMma, kMma, mma_t, wmma::row_major> bf;
          wmma::load_matrix_sync(bf, reinterpret_cast<const mma_t*>(Bs + k * ldB + xw + n * kMma),
                                 ldB);
          wmma::mma_sync(acc[n], a, bf, acc[n]);
        }
      }
    }
  }

  // D of each warp to shared memory (aliasing the staged tiles), then the band to global.
  __syncthreads();
  float* Dw = reinterpret_cast<float*>(smem_raw) + warp * kMma * ldD;  // [16][ldD]: D[x, m]
#pragma unroll
  for (int n = 0; n < NT; ++n)
    wmma::store_matrix_sync(Dw + n * kMma, acc[n], ldD, wmma::mem_row_major);
  __syncthreads();
  const int64_t plane = int64_t(p.oH) * p.oW;
  scalar_t* out_row = out + (int64_t(b) * p.pH + ph) * p.pW * plane + int64_t(y) * p.oW;
  for_each_2d(p.pW, kMma, lane, 32, [&](int j, int xl) {
    const int x = x0 + xw + xl;
    if (x < p.oW) out_row[j * plane + x] = static_cast<scalar_t>(Dw[xl * ldD + xl + j * p.dpW]);
  });
#endif
}

struct MmaBackwardGeometry {
  int warpsX;   // warps along columns (16 columns each)
  int warpsC;   // warps along channels (16 · kMmaBackwardWC channels each)
  int tilesX;   // column tiles per row (16 · warpsX columns each)
  int chunksC;  // channel chunks (16 · kMmaBackwardWC · warpsC channels each)
  int ldS;      // staged "other" input row pitch
  int ldG;      // staged gradient band pitch
  int smem;     // bytes
  int gridX;    // tilesX · chunksC · H
  int threads;  // 32 · warpsX · warpsC
};

// Up to kMmaBackwardMaxWarpsX × kMmaBackwardMaxWarpsC warps (and at most max_warps), fewer for
// narrow or thin inputs.
inline MmaBackwardGeometry mma_backward_geometry(const CorrParams& p, int nt, int max_warps) {
  MmaBackwardGeometry g{};
  g.warpsX = std::max(1, std::min({kMmaBackwardMaxWarpsX, ceil_div(p.W, kMma), max_warps}));
  g.warpsC = std::max(1, std::min({kMmaBackwardMaxWarpsC, ceil_div(p.C, kMmaBackwardWC * kMma),
                                   max_warps / g.warpsX}));
  const int TX = g.warpsX * kMma;
  const int CB = g.warpsC * kMmaBackwardWC * kMma;
  const int U = TX - kMma + nt * kMma;
  g.tilesX = ceil_div(p.W, TX);
  g.chunksC = ceil_div(p.C, CB);
  g.ldS = U + kMmaPad;
  g.ldG = TX + kMmaPad;
  const int staged = (CB * g.ldS + U * g.ldG) * 2;
  const int results = CB * (TX + 4) * 4;
  g.smem = std::max(staged, results);
  g.gridX = g.tilesX * g.chunksC * p.H;
  g.threads = g.warpsX * g.warpsC * 32;
  return g;
}

template <typename scalar_t, typename mma_t, int NT, bool FOR_INPUT2>
__global__ void DENSESSL_LAUNCH_BOUNDS(kMmaBackwardMaxWarpsX * kMmaBackwardMaxWarpsC * 32)
    corr_backward_mma_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ other,
                             scalar_t* __restrict__ target_grad, const CorrParams p,
                             const int warpsX, const int warpsC, const int tilesX,
                             const int chunksC, const int ldS, const int ldG) {
#if DENSESSL_HAS_MMA
  namespace wmma = nvcuda::wmma;
  DENSESSL_SHARED_BYTES(smem_raw);
  const int TX = warpsX * kMma;                       // target columns of the tile
  const int CB = warpsC * kMmaBackwardWC * kMma;      // channels of the block
  const int U = TX - kMma + NT * kMma;                // other-input columns staged
  scalar_t* S = reinterpret_cast<scalar_t*>(smem_raw);          // [CB][ldS]: other[c, m]
  scalar_t* G = S + CB * ldS;                                    // [U][ldG]: band of grad[m, x]

  const BlockCoords blk = block_coords(tilesX, chunksC);
  const int yt = blk.row;
  const int b = blk.batch;
  const int x0 = blk.tile * TX;
  const int c0 = blk.inner * CB;
  const int tid = threadIdx.x;
  const int nthreads = blockDim.x;
  const int warp = tid / 32;
  const int xw = (warp % warpsX) * kMma;                   // warp's first column
  const int cw = (warp / warpsX) * kMmaBackwardWC * kMma;  // warp's first channel

  wmma::fragment<wmma::accumulator, kMma, kMma, kMma, float> acc[kMmaBackwardWC];
#pragma unroll
  for (int t = 0; t < kMmaBackwardWC; ++t) wmma::fill_fragment(acc[t], 0.0f);

  const int64_t HW = int64_t(p.H) * p.W;
  const int64_t plane = int64_t(p.oH) * p.oW;
  const scalar_t* other_b = other + int64_t(b) * p.C * HW;
  const scalar_t* grad_b = grad + int64_t(b) * p.pH * p.pW * plane;
  const int base = backward_base<FOR_INPUT2>(p, x0);
  const scalar_t zero = static_cast<scalar_t>(0.0f);

  for (int idx = tid; idx < U * ldG; idx += nthreads) G[idx] = zero;

  for (int step = 0; step < p.pH * p.kH; ++step) {
    BackwardTap tap;
    if (!backward_tap<FOR_INPUT2>(p, yt, step, &tap)) continue;
    const scalar_t* other_row = other_b + int64_t(tap.other_row) * p.W;
    for (int kj = 0; kj < p.kW; ++kj) {
      __syncthreads();
      stage_rows(S, ldS, CB, U, other_row, c0, p.C, HW, base, 1, p.W, tid, nthreads);
      stage_grad_band<FOR_INPUT2>(G, ldG, grad_b, p, tap.ph, tap.y, kj, x0, base, TX, tid,
                                  nthreads);
      __syncthreads();
#pragma unroll
      for (int k = 0; k < NT; ++k) {
        // band rows m ∈ [xw + 16k, xw + 16k + 16) of G: m × x, row_major with pitch ldG.
        wmma::fragment<wmma::matrix_b, kMma, kMma, kMma, mma_t, wmma::row_major> gf;
        wmma::load_matrix_sync(
            gf, reinterpret_cast<const mma_t*>(G + (xw + k * kMma) * ldG + xw), ldG);
#pragma unroll
        for (int t = 0; t < kMmaBackwardWC; ++t) {
          wmma::fragment<wmma::matrix_a, kMma, kMma, kMma, mma_t, wmma::row_major> sf;
          wmma::load_matrix_sync(
              sf, reinterpret_cast<const mma_t*>(S + (cw + t * kMma) * ldS + xw + k * kMma), ldS);
          wmma::mma_sync(acc[t], sf, gf, acc[t]);
        }
      }
    }
  }

  __syncthreads();
  float* Os = reinterpret_cast<float*>(smem_raw);  // [CB][TX + 4]
  const int ldO = TX + 4;
#pragma unroll
  for (int t = 0; t < kMmaBackwardWC; ++t)
    wmma::store_matrix_sync(Os + (cw + t * kMma) * ldO + xw, acc[t], ldO, wmma::mem_row_major);
  __syncthreads();
  store_rows(target_grad + int64_t(b) * p.C * HW + int64_t(yt) * p.W, Os, ldO, CB, TX, c0, p.C,
             HW, x0, p.W, tid, nthreads);
#endif
}

// Calls f(std::integral_constant<int, NT>{}) for NT = mma_bands(p) (1 … kMmaMaxBands).
template <typename F>
inline void with_mma_bands(const CorrParams& p, F&& f) {
  switch (mma_bands(p)) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    default: f(std::integral_constant<int, 4>{}); break;
  }
}

}  // namespace kernels
}  // namespace densessl
