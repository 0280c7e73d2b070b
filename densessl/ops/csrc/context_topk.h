// Fused context top-k of label propagation: the CUDA entry point called by the Python bindings.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "context_topk_params.h"

namespace densessl {

// queries: contiguous H·W×C; keys: contiguous F×H·W×C (same dtype: float, half or bfloat16);
// slot_frame, slot_flags: int32 CUDA tensors of length p.num_slots (see the kernel).
// Returns {values: splits×H·W×k float32, indices: splits×H·W×k int32}.
std::vector<at::Tensor> context_topk_cuda(const at::Tensor& queries, const at::Tensor& keys,
                                          const at::Tensor& slot_frame,
                                          const at::Tensor& slot_flags,
                                          const topk::ContextTopKParams& p);

}  // namespace densessl
