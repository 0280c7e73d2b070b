// Spatial correlation (cost volume): the CUDA entry points called by the Python bindings.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "correlation_params.h"

namespace densessl {

// input1, input2: contiguous B×C×H×W CUDA tensors (float, double, half or bfloat16).
// Returns B×pH×pW×oH×oW in the input dtype; accumulation in fp32 (fp64 for double).
// tensor_cores: fp16/bf16 products on the tensor cores where the geometry allows (sm_80+);
// false keeps every dtype on the CUDA-core kernels.
at::Tensor correlation_forward_cuda(const at::Tensor& input1, const at::Tensor& input2,
                                    const CorrParams& p, bool tensor_cores);

// grad: contiguous B×pH×pW×oH×oW. Returns {grad_input1, grad_input2}; an undefined tensor
// where the corresponding need flag is false.
std::vector<at::Tensor> correlation_backward_cuda(const at::Tensor& grad,
                                                  const at::Tensor& input1,
                                                  const at::Tensor& input2, const CorrParams& p,
                                                  bool need_input1, bool need_input2,
                                                  bool tensor_cores);

}  // namespace densessl
