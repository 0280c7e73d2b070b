// Launcher of the fused context top-k kernel (the kernel itself: context_topk_kernels.h).
#include "context_topk.h"
#include "context_topk_kernels.h"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace densessl {

std::vector<at::Tensor> context_topk_cuda(const at::Tensor& queries, const at::Tensor& keys,
                                          const at::Tensor& slot_frame,
                                          const at::Tensor& slot_flags,
                                          const topk::ContextTopKParams& p) {
  const c10::cuda::CUDAGuard guard(queries.device());
  const int64_t n = int64_t(p.H) * p.W;
  at::Tensor values = at::empty({p.splits, n, p.k}, queries.options().dtype(at::kFloat));
  at::Tensor indices = at::empty({p.splits, n, p.k}, queries.options().dtype(at::kInt));
  if (n == 0) return {values, indices};
  const int tiles_y = (p.H + topk::kTile - 1) / topk::kTile;
  const dim3 grid(static_cast<unsigned>(tiles_y * p.tiles_x), static_cast<unsigned>(p.splits));
  const int smem = topk::context_topk_smem_bytes();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, queries.scalar_type(), "densessl_context_topk", [&] {
        topk::context_topk_kernel<scalar_t><<<grid, topk::kThreads, smem, stream>>>(
            queries.data_ptr<scalar_t>(), keys.data_ptr<scalar_t>(), slot_frame.data_ptr<int>(),
            slot_flags.data_ptr<int>(), values.data_ptr<float>(), indices.data_ptr<int>(), p);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {values, indices};
}

}  // namespace densessl
