// Parameters and fixed geometry of the fused context top-k kernel (context_topk_kernels.h),
// shared by the kernel, its launcher and the Python bindings; plain C++.
#pragma once

namespace densessl {
namespace topk {

constexpr int kTile = 8;                   // query tile side
constexpr int kQueries = kTile * kTile;    // queries per block
constexpr int kKeys = 64;                  // keys per chunk
constexpr int kChannels = 32;              // channels staged per step
constexpr int kThreads = 256;              // threads per block
constexpr int kParts = kThreads / kQueries;  // threads scanning one query's scores
constexpr int kMaxK = 32;                  // largest k the kernel keeps
constexpr int kStride = 68;                // padded row length of the shared arrays (16-byte
                                           // aligned rows, conflict-free score scans)

struct ContextTopKParams {
  int H, W, C;        // feature map height, width and channels of every frame
  int num_slots;      // context slots searched
  int k;              // neighbours kept, 1..kMaxK
  int reach;          // largest in-window offset along one axis, in cells
  float radius;       // window radius in cells
  int square;         // 1: |dy|, |dx| <= radius; 0: dy² + dx² < radius²
  int tiles_x;        // query tiles per row: ceil(W / kTile)
  int splits;         // blocks per query tile (gridDim.y)
};

// Shared memory: staged queries and keys [kChannels][kStride] and scores [kQueries][kStride],
// reused at the end for the merge of [kQueries][2][k] (value, index) pairs.
inline int context_topk_smem_bytes() {
  const int stage = (2 * kChannels + kQueries) * kStride * 4;
  const int merge = kQueries * 2 * kMaxK * 8;
  return stage > merge ? stage : merge;
}

}  // namespace topk
}  // namespace densessl
