// Launchers of the correlation kernels (kernels and their geometry: correlation_kernels.h).
#include "correlation.h"
#include "correlation_kernels.h"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

namespace densessl {
namespace {

using namespace kernels;

constexpr int kMaxGridY = 65535;

template <typename scalar_t, int TDT, bool SLIDE>
void launch_forward(const scalar_t* in1, const scalar_t* in2, scalar_t* out, const CorrParams& p,
                    cudaStream_t stream) {
  using acc_t = typename AccType<scalar_t>::type;
  ForwardGeometry g{};
  const bool fits = forward_geometry<kForwardTXT, TDT>(p, sizeof(acc_t), kForwardThreads, &g);
  TORCH_CHECK(fits, "correlation: patch/stride too large for the CUDA forward kernel");
  const int64_t in_batch = int64_t(p.C) * p.H * p.W;
  const int64_t out_batch = int64_t(p.pH) * p.pW * p.oH * p.oW;
  for (int b0 = 0; b0 < p.B; b0 += kMaxGridY) {
    CorrParams q = p;
    q.B = std::min(kMaxGridY, p.B - b0);
    const dim3 grid(static_cast<unsigned>(g.gridX), static_cast<unsigned>(q.B));
    corr_forward_kernel<scalar_t, kForwardTXT, TDT, SLIDE><<<grid, g.threads, g.smem, stream>>>(
        in1 + b0 * in_batch, in2 + b0 * in_batch, out + b0 * out_batch, q, g.nXg, g.nDg,
        g.tilesX);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename scalar_t, bool FOR_INPUT2>
void launch_backward(const scalar_t* grad, const scalar_t* other, scalar_t* target,
                     const CorrParams& p, cudaStream_t stream) {
  using acc_t = typename AccType<scalar_t>::type;
  BackwardGeometry g{};
  const bool fits =
      backward_geometry<kBackwardTCT, kBackwardTXT>(p, sizeof(acc_t), kBackwardThreads, &g);
  TORCH_CHECK(fits, "correlation: patch too large for the CUDA backward kernel");
  const int64_t in_batch = int64_t(p.C) * p.H * p.W;
  const int64_t out_batch = int64_t(p.pH) * p.pW * p.oH * p.oW;
  for (int b0 = 0; b0 < p.B; b0 += kMaxGridY) {
    CorrParams q = p;
    q.B = std::min(kMaxGridY, p.B - b0);
    const dim3 grid(static_cast<unsigned>(g.gridX), static_cast<unsigned>(q.B));
    corr_backward_kernel<scalar_t, kBackwardTCT, kBackwardTXT, FOR_INPUT2>
        <<<grid, g.threads, g.smem, stream>>>(grad + b0 * out_batch, other + b0 * in_batch,
                                              target + b0 * in_batch, q, g.nCg, g.nXg, g.tilesX,
                                              g.chunksC);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

at::Tensor correlation_forward_cuda(const at::Tensor& input1, const at::Tensor& input2,
                                    const CorrParams& p) {
  const c10::cuda::CUDAGuard guard(input1.device());
  at::Tensor out = at::empty({p.B, p.pH, p.pW, p.oH, p.oW}, input1.options());
  if (out.numel() == 0) return out;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input1.scalar_type(), "densessl_correlation_forward", [&] {
        const scalar_t* a = input1.data_ptr<scalar_t>();
        const scalar_t* b = input2.data_ptr<scalar_t>();
        scalar_t* o = out.data_ptr<scalar_t>();
        with_forward_variant(p, [&](auto tdt, auto slide) {
          launch_forward<scalar_t, decltype(tdt)::value, decltype(slide)::value>(a, b, o, p,
                                                                                stream);
        });
      });
  return out;
}

std::vector<at::Tensor> correlation_backward_cuda(const at::Tensor& grad,
                                                  const at::Tensor& input1,
                                                  const at::Tensor& input2, const CorrParams& p,
                                                  bool need_input1, bool need_input2) {
  const c10::cuda::CUDAGuard guard(input1.device());
  at::Tensor grad1, grad2;
  if (need_input1) grad1 = at::empty_like(input1, at::MemoryFormat::Contiguous);
  if (need_input2) grad2 = at::empty_like(input2, at::MemoryFormat::Contiguous);
  if (input1.numel() == 0) return {grad1, grad2};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input1.scalar_type(), "densessl_correlation_backward", [&] {
        const scalar_t* g = grad.data_ptr<scalar_t>();
        if (need_input1)
          launch_backward<scalar_t, false>(g, input2.data_ptr<scalar_t>(),
                                           grad1.data_ptr<scalar_t>(), p, stream);
        if (need_input2)
          launch_backward<scalar_t, true>(g, input1.data_ptr<scalar_t>(),
                                          grad2.data_ptr<scalar_t>(), p, stream);
      });
  return {grad1, grad2};
}

}  // namespace densessl
