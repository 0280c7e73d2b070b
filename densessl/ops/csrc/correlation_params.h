// Geometry of one spatial correlation (plain C++, shared by the host code and the kernels).
//
// out[b, i, j, y, x] = sum_{ki, kj, c} in1[b, c, r, s] * in2[b, c, r + (i - rH) * dpH, s + (j - rW) * dpW]
//   r = y * sH - padH + ki * dilH,  s = x * sW - padW + kj * dilW,  rH = (pH - 1) / 2,
// zero outside the image; the semantics of spatial_correlation_sampler 0.5.0.
#pragma once

namespace densessl {

struct CorrParams {
  int B, C, H, W;      // input size
  int oH, oW;          // output size
  int kH, kW;          // kernel window
  int pH, pW;          // patch (number of displacements per axis)
  int sH, sW;          // stride
  int padH, padW;      // zero padding
  int dilH, dilW;      // kernel dilation
  int dpH, dpW;        // displacement step (dilation_patch)
  int rH, rW;          // index of the zero displacement: (p - 1) / 2
};

}  // namespace densessl
