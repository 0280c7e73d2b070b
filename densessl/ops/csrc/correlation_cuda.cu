// Launchers of the correlation kernels (kernels and their geometry: correlation_kernels.h).
#include "correlation.h"
#include "correlation_kernels.h"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace densessl {
namespace {

using namespace kernels;

constexpr int kMaxGridY = 65535;

// Launches one kernel per chunk of at most kMaxGridY batch items (gridDim.y's limit):
// launch(grid, q, in_offset, out_offset) with q.B the chunk's size and the offsets of its first
// item in the inputs and in the output (elements).
template <typename F>
void over_batch_chunks(const CorrParams& p, int grid_x, F&& launch) {
  const int64_t in_batch = int64_t(p.C) * p.H * p.W;
  const int64_t out_batch = int64_t(p.pH) * p.pW * p.oH * p.oW;
  for (int b0 = 0; b0 < p.B; b0 += kMaxGridY) {
    CorrParams q = p;
    q.B = std::min(kMaxGridY, p.B - b0);
    launch(dim3(static_cast<unsigned>(grid_x), static_cast<unsigned>(q.B)), q, b0 * in_batch,
           b0 * out_batch);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename scalar_t, int TDT, bool SLIDE>
void launch_forward(const scalar_t* in1, const scalar_t* in2, scalar_t* out, const CorrParams& p,
                    cudaStream_t stream) {
  using acc_t = typename AccType<scalar_t>::type;
  ForwardGeometry g{};
  const bool fits = forward_geometry<kForwardTXT, TDT>(p, sizeof(acc_t), kForwardThreads, &g);
  TORCH_CHECK(fits, "correlation: patch/stride too large for the CUDA forward kernel");
  over_batch_chunks(p, g.gridX, [&](dim3 grid, const CorrParams& q, int64_t in_off,
                                    int64_t out_off) {
    corr_forward_kernel<scalar_t, kForwardTXT, TDT, SLIDE><<<grid, g.threads, g.smem, stream>>>(
        in1 + in_off, in2 + in_off, out + out_off, q, g.nXg, g.nDg, g.tilesX);
  });
}

template <typename scalar_t, bool FOR_INPUT2>
void launch_backward(const scalar_t* grad, const scalar_t* other, scalar_t* target,
                     const CorrParams& p, cudaStream_t stream) {
  using acc_t = typename AccType<scalar_t>::type;
  BackwardGeometry g{};
  const bool fits =
      backward_geometry<kBackwardTCT, kBackwardTXT>(p, sizeof(acc_t), kBackwardThreads, &g);
  TORCH_CHECK(fits, "correlation: patch too large for the CUDA backward kernel");
  over_batch_chunks(p, g.gridX, [&](dim3 grid, const CorrParams& q, int64_t in_off,
                                    int64_t out_off) {
    corr_backward_kernel<scalar_t, kBackwardTCT, kBackwardTXT, FOR_INPUT2>
        <<<grid, g.threads, g.smem, stream>>>(grad + out_off, other + in_off, target + in_off, q,
                                              g.nCg, g.nXg, g.tilesX, g.chunksC);
  });
}

// WMMA's element type with the same bits as a 16-bit ATen type (void: no tensor-core path).
template <typename scalar_t>
struct MmaElement {
  using type = void;
};
template <>
struct MmaElement<c10::Half> {
  using type = __half;
};
template <>
struct MmaElement<c10::BFloat16> {
  using type = __nv_bfloat16;
};

// Tensor-core kernels run on sm_80 and newer (the WMMA bf16 shapes).
bool tensor_cores_usable(const at::Tensor& t) {
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, t.get_device()));
  return major >= 8;
}

template <typename scalar_t, typename mma_t>
void launch_forward_mma(const scalar_t* in1, const scalar_t* in2, scalar_t* out,
                        const CorrParams& p, cudaStream_t stream) {
  with_mma_bands(p, [&](auto nt) {
    constexpr int NT = decltype(nt)::value;
    const MmaForwardGeometry g = mma_forward_geometry(p, NT, kMmaMaxWarps);
    TORCH_CHECK(g.smem <= kSmemLimit, "correlation: tensor-core forward tile too large");
    over_batch_chunks(p, g.gridX, [&](dim3 grid, const CorrParams& q, int64_t in_off,
                                      int64_t out_off) {
      corr_forward_mma_kernel<scalar_t, mma_t, NT><<<grid, g.warps * 32, g.smem, stream>>>(
          in1 + in_off, in2 + in_off, out + out_off, q, g.warps, g.tilesX, g.ldA, g.ldB, g.ldD);
    });
  });
}

template <typename scalar_t, typename mma_t, bool FOR_INPUT2>
void launch_backward_mma(const scalar_t* grad, const scalar_t* other, scalar_t* target,
                         const CorrParams& p, cudaStream_t stream) {
  with_mma_bands(p, [&](auto nt) {
    constexpr int NT = decltype(nt)::value;
    const MmaBackwardGeometry g =
        mma_backward_geometry(p, NT, kMmaBackwardMaxWarpsX * kMmaBackwardMaxWarpsC);
    TORCH_CHECK(g.smem <= kSmemLimit, "correlation: tensor-core backward tile too large");
    over_batch_chunks(p, g.gridX, [&](dim3 grid, const CorrParams& q, int64_t in_off,
                                      int64_t out_off) {
      corr_backward_mma_kernel<scalar_t, mma_t, NT, FOR_INPUT2>
          <<<grid, g.threads, g.smem, stream>>>(grad + out_off, other + in_off, target + in_off, q,
                                                g.warpsX, g.warpsC, g.tilesX, g.chunksC, g.ldS,
                                                g.ldG);
    });
  });
}

}  // namespace

at::Tensor correlation_forward_cuda(const at::Tensor& input1, const at::Tensor& input2,
                                    const CorrParams& p, bool tensor_cores) {
  const c10::cuda::CUDAGuard guard(input1.device());
  at::Tensor out = at::empty({p.B, p.pH, p.pW, p.oH, p.oW}, input1.options());
  if (out.numel() == 0) return out;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input1.scalar_type(), "densessl_correlation_forward", [&] {
        const scalar_t* a = input1.data_ptr<scalar_t>();
        const scalar_t* b = input2.data_ptr<scalar_t>();
        scalar_t* o = out.data_ptr<scalar_t>();
        using mma_t = typename MmaElement<scalar_t>::type;
        if constexpr (!std::is_void_v<mma_t>) {
          if (tensor_cores && mma_forward_applies(p) && tensor_cores_usable(input1)) {
            launch_forward_mma<scalar_t, mma_t>(a, b, o, p, stream);
            return;
          }
        }
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
                                                  bool need_input1, bool need_input2,
                                                  bool tensor_cores) {
  const c10::cuda::CUDAGuard guard(input1.device());
  at::Tensor grad1, grad2;
  if (need_input1) grad1 = at::empty_like(input1, at::MemoryFormat::Contiguous);
  if (need_input2) grad2 = at::empty_like(input2, at::MemoryFormat::Contiguous);
  if (input1.numel() == 0) return {grad1, grad2};
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input1.scalar_type(), "densessl_correlation_backward", [&] {
        const scalar_t* g = grad.data_ptr<scalar_t>();
        using mma_t = typename MmaElement<scalar_t>::type;
        if constexpr (!std::is_void_v<mma_t>) {
          if (tensor_cores && mma_backward_applies(p) && tensor_cores_usable(input1)) {
            if (need_input1)
              launch_backward_mma<scalar_t, mma_t, false>(g, input2.data_ptr<scalar_t>(),
                                                          grad1.data_ptr<scalar_t>(), p, stream);
            if (need_input2)
              launch_backward_mma<scalar_t, mma_t, true>(g, input1.data_ptr<scalar_t>(),
                                                         grad2.data_ptr<scalar_t>(), p, stream);
            return;
          }
        }
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
