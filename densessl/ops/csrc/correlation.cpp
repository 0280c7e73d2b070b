// Python bindings of the correlation kernels: argument checks, then the CUDA launchers.
#include <torch/extension.h>

#include "correlation.h"

namespace {

using densessl::CorrParams;

void check_input(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.dim() == 4, name, " must be B×C×H×W, got ", t.dim(), " dimensions");
  const auto type = t.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kDouble || type == at::kHalf ||
                  type == at::kBFloat16,
              name, " must be float32, float64, float16 or bfloat16, got ", type);
}

int to_int(int64_t value, const char* name, int64_t minimum) {
  TORCH_CHECK(value >= minimum, name, " must be >= ", minimum, ", got ", value);
  TORCH_CHECK(value <= INT32_MAX, name, " is too large: ", value);
  return static_cast<int>(value);
}

CorrParams make_params(const at::Tensor& input1, const at::Tensor& input2, int64_t kH,
                       int64_t kW, int64_t pH, int64_t pW, int64_t sH, int64_t sW, int64_t padH,
                       int64_t padW, int64_t dilH, int64_t dilW, int64_t dpH, int64_t dpW) {
  check_input(input1, "input1");
  check_input(input2, "input2");
  TORCH_CHECK(input1.sizes() == input2.sizes(), "input1 and input2 must have the same shape, got ",
              input1.sizes(), " and ", input2.sizes());
  TORCH_CHECK(input1.scalar_type() == input2.scalar_type(), "input1 and input2 differ in dtype");
  TORCH_CHECK(input1.device() == input2.device(), "input1 and input2 are on different devices");
  TORCH_CHECK(input1.size(2) * input1.size(3) <= INT32_MAX, "H×W is too large");

  CorrParams p{};
  p.B = to_int(input1.size(0), "batch size", 0);
  p.C = to_int(input1.size(1), "channels", 0);
  p.H = to_int(input1.size(2), "height", 0);
  p.W = to_int(input1.size(3), "width", 0);
  p.kH = to_int(kH, "kernel_size", 1);
  p.kW = to_int(kW, "kernel_size", 1);
  p.pH = to_int(pH, "patch_size", 1);
  p.pW = to_int(pW, "patch_size", 1);
  p.sH = to_int(sH, "stride", 1);
  p.sW = to_int(sW, "stride", 1);
  p.padH = to_int(padH, "padding", 0);
  p.padW = to_int(padW, "padding", 0);
  p.dilH = to_int(dilH, "dilation", 1);
  p.dilW = to_int(dilW, "dilation", 1);
  p.dpH = to_int(dpH, "dilation_patch", 1);
  p.dpW = to_int(dpW, "dilation_patch", 1);
  p.rH = (p.pH - 1) / 2;
  p.rW = (p.pW - 1) / 2;
  const int64_t roomH = int64_t(p.H) + 2 * int64_t(p.padH) - (int64_t(p.kH) - 1) * p.dilH - 1;
  const int64_t roomW = int64_t(p.W) + 2 * int64_t(p.padW) - (int64_t(p.kW) - 1) * p.dilW - 1;
  TORCH_CHECK(roomH >= 0 && roomW >= 0, "input of size ", p.H, "x", p.W,
              " is too small for the kernel window");
  p.oH = static_cast<int>(roomH / p.sH + 1);
  p.oW = static_cast<int>(roomW / p.sW + 1);
  return p;
}

at::Tensor forward(const at::Tensor& input1, const at::Tensor& input2, int64_t kH, int64_t kW,
                   int64_t pH, int64_t pW, int64_t sH, int64_t sW, int64_t padH, int64_t padW,
                   int64_t dilH, int64_t dilW, int64_t dpH, int64_t dpW, bool tensor_cores) {
  const CorrParams p =
      make_params(input1, input2, kH, kW, pH, pW, sH, sW, padH, padW, dilH, dilW, dpH, dpW);
  return densessl::correlation_forward_cuda(input1.contiguous(), input2.contiguous(), p,
                                            tensor_cores);
}

std::vector<at::Tensor> backward(const at::Tensor& grad, const at::Tensor& input1,
                                 const at::Tensor& input2, int64_t kH, int64_t kW, int64_t pH,
                                 int64_t pW, int64_t sH, int64_t sW, int64_t padH, int64_t padW,
                                 int64_t dilH, int64_t dilW, int64_t dpH, int64_t dpW,
                                 bool need_input1, bool need_input2, bool tensor_cores) {
  const CorrParams p =
      make_params(input1, input2, kH, kW, pH, pW, sH, sW, padH, padW, dilH, dilW, dpH, dpW);
  TORCH_CHECK(grad.is_cuda() && grad.device() == input1.device(),
              "grad must be on the device of the inputs");
  TORCH_CHECK(grad.sizes() == at::IntArrayRef({p.B, p.pH, p.pW, p.oH, p.oW}),
              "grad has shape ", grad.sizes(), ", expected [", p.B, ", ", p.pH, ", ", p.pW, ", ",
              p.oH, ", ", p.oW, "]");
  const at::Tensor g = grad.to(input1.scalar_type()).contiguous();
  return densessl::correlation_backward_cuda(g, input1.contiguous(), input2.contiguous(), p,
                                             need_input1, need_input2, tensor_cores);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Spatial correlation (cost volume) CUDA kernels";
  m.def("forward", &forward, "correlation forward (CUDA)", py::arg("input1"), py::arg("input2"),
        py::arg("kH"), py::arg("kW"), py::arg("pH"), py::arg("pW"), py::arg("sH"), py::arg("sW"),
        py::arg("padH"), py::arg("padW"), py::arg("dilH"), py::arg("dilW"), py::arg("dpH"),
        py::arg("dpW"), py::arg("tensor_cores") = true);
  m.def("backward", &backward, "correlation backward (CUDA)", py::arg("grad"),
        py::arg("input1"), py::arg("input2"), py::arg("kH"), py::arg("kW"), py::arg("pH"),
        py::arg("pW"), py::arg("sH"), py::arg("sW"), py::arg("padH"), py::arg("padW"),
        py::arg("dilH"), py::arg("dilW"), py::arg("dpH"), py::arg("dpW"),
        py::arg("need_input1") = true, py::arg("need_input2") = true,
        py::arg("tensor_cores") = true);
}
