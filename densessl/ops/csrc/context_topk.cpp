// Python bindings of the fused context top-k: argument checks, then the CUDA launcher.
#include <torch/extension.h>

#include <cmath>

#include "context_topk.h"

namespace {

using densessl::topk::ContextTopKParams;

std::vector<at::Tensor> context_topk(const at::Tensor& queries, const at::Tensor& keys,
                                     const at::Tensor& slot_frame, const at::Tensor& slot_flags,
                                     int64_t height, int64_t width, int64_t k, double radius,
                                     bool square, int64_t reach, int64_t splits) {
  TORCH_CHECK(queries.is_cuda() && keys.is_cuda() && slot_frame.is_cuda() && slot_flags.is_cuda(),
              "context_topk: every tensor must be on a CUDA device");
  TORCH_CHECK(queries.device() == keys.device() && keys.device() == slot_frame.device() &&
                  keys.device() == slot_flags.device(),
              "context_topk: tensors are on different devices");
  TORCH_CHECK(queries.dim() == 2, "queries must be H·W×C, got ", queries.sizes());
  TORCH_CHECK(keys.dim() == 3, "keys must be F×H·W×C, got ", keys.sizes());
  TORCH_CHECK(queries.scalar_type() == keys.scalar_type(), "queries and keys differ in dtype");
  const auto type = queries.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kHalf || type == at::kBFloat16,
              "context_topk: features must be float32, float16 or bfloat16, got ", type);
  TORCH_CHECK(height >= 1 && width >= 1, "height and width must be positive");
  TORCH_CHECK(queries.size(0) == height * width && keys.size(1) == height * width,
              "queries and keys must have H·W = ", height * width, " rows");
  TORCH_CHECK(queries.size(1) == keys.size(2) && queries.size(1) >= 1,
              "queries and keys must have the same, positive number of channels");
  TORCH_CHECK(k >= 1 && k <= densessl::topk::kMaxK, "k must be in 1..", densessl::topk::kMaxK,
              ", got ", k);
  TORCH_CHECK(slot_frame.scalar_type() == at::kInt && slot_flags.scalar_type() == at::kInt &&
                  slot_frame.dim() == 1 && slot_flags.sizes() == slot_frame.sizes(),
              "slot_frame and slot_flags must be int32 vectors of one length");
  TORCH_CHECK(slot_frame.numel() * height * width <= INT32_MAX,
              "too many context slots for int32 candidate indices");
  TORCH_CHECK(splits >= 1 && splits <= 65535, "splits must be in 1..65535");
  TORCH_CHECK(radius > 0 && std::isfinite(radius), "radius must be positive");

  ContextTopKParams p{};
  p.H = static_cast<int>(height);
  p.W = static_cast<int>(width);
  p.C = static_cast<int>(queries.size(1));
  p.num_slots = static_cast<int>(slot_frame.numel());
  p.k = static_cast<int>(k);
  p.reach = static_cast<int>(reach);
  p.radius = static_cast<float>(radius);
  p.square = square ? 1 : 0;
  p.tiles_x = static_cast<int>((width + densessl::topk::kTile - 1) / densessl::topk::kTile);
  p.splits = static_cast<int>(splits);
  return densessl::context_topk_cuda(queries.contiguous(), keys.contiguous(),
                                     slot_frame.contiguous(), slot_flags.contiguous(), p);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused top-k search of label propagation (CUDA)";
  m.def("context_topk", &context_topk, "joint top-k over windowed and whole context frames",
        py::arg("queries"), py::arg("keys"), py::arg("slot_frame"), py::arg("slot_flags"),
        py::arg("height"), py::arg("width"), py::arg("k"), py::arg("radius"), py::arg("square"),
        py::arg("reach"), py::arg("splits"));
}
