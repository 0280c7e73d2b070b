// Fused top-k search of label propagation: for every query position of a target frame, the k
// largest dot products with the keys of its context frames, each context frame searched either
// everywhere or only inside a window around the query. The affinities are never written out.
// Included by context_topk_cuda.cu; free of PyTorch so that the tests can compile it for the
// CPU with an emulation of CUDA blocks (see kernel_compat.h).
//
// Work split: one block per (8×8 tile of queries, split). The keys a tile can see — per context
// slot, the whole frame or the rectangle the tile's windows cover — are cut into chunks of 64
// keys, and the chunks of all slots are dealt out in contiguous runs to the tile's `splits`
// blocks, so that a frame with few tiles still fills the GPU. For every chunk the block stages
// query and key channels in shared memory (fp32), each thread accumulates a 4×4 register tile
// of the 64×64 scores, and then four threads per query scan the chunk's scores into private
// sorted top-k lists (only values above the list's current minimum cost more than one compare).
// At the end the four lists of a query are merged in shared memory and the block writes its
// top-k; the caller merges the `splits` partial lists (a top-k over splits·k values).
//
// Candidates are encoded as slot · H·W + position; a slot with multiplicity m counts as m
// copies of its frame (the CRW protocol pads early context with copies of frame 0).
#pragma once

#include <cmath>
#include <cstdint>

#include "context_topk_params.h"
#include "kernel_compat.h"

namespace densessl {
namespace topk {

struct KeyRegion {
  int y0, x0, rows, cols;
};

// The keys of one slot that a query tile at (qy0, qx0) can reach: the whole frame, or the
// rectangle covering every query's window, clipped to the frame.
__device__ __forceinline__ KeyRegion key_region(const ContextTopKParams& p, bool windowed,
                                                int qy0, int qx0) {
  if (!windowed) return {0, 0, p.H, p.W};
  const int y0 = qy0 - p.reach > 0 ? qy0 - p.reach : 0;
  const int x0 = qx0 - p.reach > 0 ? qx0 - p.reach : 0;
  const int y1 = qy0 + kTile - 1 + p.reach < p.H - 1 ? qy0 + kTile - 1 + p.reach : p.H - 1;
  const int x1 = qx0 + kTile - 1 + p.reach < p.W - 1 ? qx0 + kTile - 1 + p.reach : p.W - 1;
  return {y0, x0, y1 - y0 + 1, x1 - x0 + 1};
}

__device__ __forceinline__ bool in_window(const ContextTopKParams& p, int dy, int dx) {
  const float fy = static_cast<float>(dy), fx = static_cast<float>(dx);
  if (p.square) return fabsf(fy) <= p.radius && fabsf(fx) <= p.radius;
  return fy * fy + fx * fx < p.radius * p.radius;
}

// Inserts (value, index) into a list sorted in descending order, keeping its length k.
__device__ __forceinline__ void insert_sorted(float* values, int* indices, int k, float value,
                                              int index) {
  int i = k - 1;
  while (i > 0 && values[i - 1] < value) {
    values[i] = values[i - 1];
    indices[i] = indices[i - 1];
    --i;
  }
  values[i] = value;
  indices[i] = index;
}

// Merges the sorted list (other_values, other_indices) into (values, indices), keeping k.
__device__ __forceinline__ void merge_sorted(float* values, int* indices, int k,
                                             const float* other_values,
                                             const int* other_indices) {
  float merged_values[kMaxK];
  int merged_indices[kMaxK];
  int a = 0, b = 0;
  for (int i = 0; i < k; ++i) {
    if (other_values[b] > values[a]) {
      merged_values[i] = other_values[b];
      merged_indices[i] = other_indices[b];
      ++b;
    } else {
      merged_values[i] = values[a];
      merged_indices[i] = indices[a];
      ++a;
    }
  }
  for (int i = 0; i < k; ++i) {
    values[i] = merged_values[i];
    indices[i] = merged_indices[i];
  }
}

// queries: H·W×C (one frame, channels last); keys: F×H·W×C; slot_frame[s]: the row of `keys`
// searched by slot s; slot_flags[s]: bit 0 set = windowed, bits 1.. = multiplicity.
// Outputs: splits×H·W×k values (descending, -inf where fewer than k keys were seen) and
// encoded candidates (slot · H·W + position, -1 where none).
template <typename scalar_t>
__global__ void DENSESSL_LAUNCH_BOUNDS(kThreads)
    context_topk_kernel(const scalar_t* __restrict__ queries, const scalar_t* __restrict__ keys,
                        const int* __restrict__ slot_frame, const int* __restrict__ slot_flags,
                        float* __restrict__ out_values, int* __restrict__ out_indices,
                        const ContextTopKParams p) {
  DENSESSL_SHARED_BYTES(smem_raw);
  float* Qs = reinterpret_cast<float*>(smem_raw);  // [kChannels][kStride]: queries
  float* Ks = Qs + kChannels * kStride;            // [kChannels][kStride]: keys of the chunk
  float* Ss = Ks + kChannels * kStride;            // [kQueries][kStride]: scores of the chunk

  const int tid = threadIdx.x;
  const int tile = blockIdx.x;
  const int split = blockIdx.y;
  const int qy0 = (tile / p.tiles_x) * kTile;
  const int qx0 = (tile % p.tiles_x) * kTile;
  const int N = p.H * p.W;
  const int k = p.k;

  // Score micro-tile of this thread: queries 4·qg .. +3, keys 4·kg .. +3.
  const int qg = tid / (kKeys / 4);
  const int kg = tid % (kKeys / 4);
  // Selection: query `own` and every kParts-th key of the chunk from `part`.
  const int own = tid / kParts;
  const int part = tid % kParts;
  const int own_y = qy0 + own / kTile;
  const int own_x = qx0 + own % kTile;
  const bool own_valid = own_y < p.H && own_x < p.W;

  float best_values[kMaxK];
  int best_indices[kMaxK];
  for (int i = 0; i < kMaxK; ++i) {
    best_values[i] = -INFINITY;
    best_indices[i] = -1;
  }

  // The chunks of all slots, in slot order; this block takes run [first, last).
  int total_chunks = 0;
  for (int s = 0; s < p.num_slots; ++s) {
    const KeyRegion r = key_region(p, slot_flags[s] & 1, qy0, qx0);
    total_chunks += (r.rows * r.cols + kKeys - 1) / kKeys;
  }
  const int per_split = (total_chunks + p.splits - 1) / p.splits;
  const int first = split * per_split;
  const int last = first + per_split < total_chunks ? first + per_split : total_chunks;

  int slot_start = 0;  // chunk number of the slot's first chunk
  for (int s = 0; s < p.num_slots && slot_start < last; ++s) {
    const int flags = slot_flags[s];
    const bool windowed = flags & 1;
    const int multiplicity = flags >> 1;
    const KeyRegion r = key_region(p, windowed, qy0, qx0);
    const int region_keys = r.rows * r.cols;
    const int slot_chunks = (region_keys + kKeys - 1) / kKeys;
    const int begin = first > slot_start ? first - slot_start : 0;
    const int end = last - slot_start < slot_chunks ? last - slot_start : slot_chunks;
    const scalar_t* frame = keys + static_cast<int64_t>(slot_frame[s]) * N * p.C;
    for (int chunk = begin; chunk < end; ++chunk) {
      const int key0 = chunk * kKeys;
      float acc[4][4];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
      for (int c0 = 0; c0 < p.C; c0 += kChannels) {
        __syncthreads();
        // Consecutive threads read consecutive channels of one position (coalesced).
        for (int e = tid; e < kQueries * kChannels; e += kThreads) {
          const int row = e / kChannels, c = e % kChannels;
          const int y = qy0 + row / kTile, x = qx0 + row % kTile;
          float v = 0.0f;
          if (y < p.H && x < p.W && c0 + c < p.C)
            v = static_cast<float>(queries[(static_cast<int64_t>(y) * p.W + x) * p.C + c0 + c]);
          Qs[c * kStride + row] = v;
        }
        for (int e = tid; e < kKeys * kChannels; e += kThreads) {
          const int row = e / kChannels, c = e % kChannels;
          const int key = key0 + row;
          float v = 0.0f;
          if (key < region_keys && c0 + c < p.C) {
            const int y = r.y0 + key / r.cols, x = r.x0 + key % r.cols;
            v = static_cast<float>(frame[(static_cast<int64_t>(y) * p.W + x) * p.C + c0 + c]);
          }
          Ks[c * kStride + row] = v;
        }
        __syncthreads();
        const int steps = p.C - c0 < kChannels ? p.C - c0 : kChannels;
        for (int c = 0; c < steps; ++c) {
          float q[4], kv[4];
          for (int i = 0; i < 4; ++i) q[i] = Qs[c * kStride + 4 * qg + i];
          for (int j = 0; j < 4; ++j) kv[j] = Ks[c * kStride + 4 * kg + j];
          for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) acc[i][j] += q[i] * kv[j];
        }
      }
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) Ss[(4 * qg + i) * kStride + 4 * kg + j] = acc[i][j];
      __syncthreads();
      if (own_valid) {
        for (int j = part; j < kKeys; j += kParts) {
          const int key = key0 + j;
          if (key >= region_keys) break;
          const float value = Ss[own * kStride + j];
          if (!(value > best_values[k - 1])) continue;
          const int y = r.y0 + key / r.cols, x = r.x0 + key % r.cols;
          if (windowed && !in_window(p, y - own_y, x - own_x)) continue;
          const int index = s * N + y * p.W + x;
          for (int m = 0; m < multiplicity && value > best_values[k - 1]; ++m)
            insert_sorted(best_values, best_indices, k, value, index);
        }
      }
    }
    slot_start += slot_chunks;
  }

  // Merge the kParts lists of each query: parts 2, 3 into 0, 1, then 1 into 0.
  __syncthreads();
  float* merge_values = reinterpret_cast<float*>(smem_raw);          // [kQueries][2][k]
  int* merge_indices = reinterpret_cast<int*>(merge_values + kQueries * 2 * k);
  for (int half = kParts / 2; half >= 1; half /= 2) {
    if (part >= half && part < 2 * half) {
      float* mv = merge_values + (own * 2 + (part - half)) * k;
      int* mi = merge_indices + (own * 2 + (part - half)) * k;
      for (int i = 0; i < k; ++i) {
        mv[i] = best_values[i];
        mi[i] = best_indices[i];
      }
    }
    __syncthreads();
    if (part < half) {
      merge_sorted(best_values, best_indices, k, merge_values + (own * 2 + part) * k,
                   merge_indices + (own * 2 + part) * k);
    }
    __syncthreads();
  }
  if (part == 0 && own_valid) {
    const int64_t base = (static_cast<int64_t>(split) * N + own_y * p.W + own_x) * k;
    for (int i = 0; i < k; ++i) {
      out_values[base + i] = best_values[i];
      out_indices[base + i] = best_indices[i];
    }
  }
}

}  // namespace topk
}  // namespace densessl
