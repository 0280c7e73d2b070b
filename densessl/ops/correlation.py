"""Spatial correlation (cost volume), a drop-in for ``spatial_correlation_sampler`` 0.5.0.

For inputs ``input1, input2`` of shape ``B×C×H×W`` the output has shape ``B×PH×PW×oH×oW``::

    out[b, i, j, y, x] = Σ_{ki<kH, kj<kW} Σ_c in1[b, c, r, s] · in2[b, c, r + Δi, s + Δj]
    r  = y·sH − padH + ki·dilH            s  = x·sW − padW + kj·dilW
    Δi = (i − (PH − 1) // 2) · dpH        Δj = (j − (PW − 1) // 2) · dpW

with zeros wherever an index falls outside ``[0, H) × [0, W)`` (for either input) and

    oH = (H + 2·padH − ((kH − 1)·dilH + 1)) // sH + 1     (oW likewise).

The kernel window starts at ``(r, s)`` (it is not centred) and the sum is **not** divided by
``C``. For even patch sizes the displacements run from ``−(P−1)//2`` to ``P//2`` (times
``dilation_patch``): the package's CPU forward and its CUDA backward; its CUDA forward centres
even patches differently when ``dilation_patch > 1`` (an inconsistency of the package).

Two implementations share this definition:

* CUDA kernels (``densessl/ops/csrc``), compiled on first use and cached; fp32/fp16/bf16 inputs,
  fp32 accumulation. fp16/bf16 products run on the tensor cores (sm_80 and newer) when the
  horizontal stride is 1 (forward) and ``(PW − 1)·dilation_patch ≤ 48``; everything else runs
  on the CUDA cores. On first use on a device they are compared with the reference on small
  inputs; if they disagree (or fail to launch) the reference is used there, with one warning.
* A pure-PyTorch reference that loops over displacements (each one a shifted elementwise product
  summed over channels), so it never holds more than one ``B×C×oH×oW`` product at a time. It runs
  on the CPU, and on the GPU whenever the extension cannot be built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from densessl.ops import _jit

IntPair = Union[int, Sequence[int]]

CSRC = Path(__file__).resolve().parent / "csrc"
EXTENSION_NAME = "densessl_correlation"
EXTENSION_SOURCES = ("correlation.cpp", "correlation_cuda.cu")
EXTENSION_HEADERS = ("correlation.h", "correlation_params.h", "correlation_kernels.h",
                     "kernel_compat.h")
# The CUDA kernels stage whole displacement rows in shared memory (48 KiB per block); beyond
# these limits they would not fit, and the reference is used instead.
MAX_CUDA_PATCH_SPAN = 256  # (patch_size - 1) * dilation_patch, per axis
MAX_CUDA_STRIDE = 8


def _pair(value: IntPair, name: str, minimum: int) -> tuple[int, int]:
    """``value`` as an ``(h, w)`` pair of ints ``>= minimum``; ValueError naming ``name``."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        pair = (value, value)
    else:
        try:
            pair = tuple(value)  # type: ignore[arg-type]
        except TypeError:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from None
        if len(pair) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in pair
        ):
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair[0], pair[1]


@dataclass(frozen=True)
class CorrelationConfig:
    """Geometry of one correlation; every field is an ``(h, w)`` pair."""

    kernel_size: tuple[int, int] = (1, 1)
    patch_size: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    dilation_patch: tuple[int, int] = (1, 1)

    @classmethod
    def make(
        cls,
        kernel_size: IntPair = 1,
        patch_size: IntPair = 1,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        dilation_patch: IntPair = 1,
    ) -> CorrelationConfig:
        """Validate the package-style arguments (ints or pairs)."""
        return cls(
            kernel_size=_pair(kernel_size, "kernel_size", 1),
            patch_size=_pair(patch_size, "patch_size", 1),
            stride=_pair(stride, "stride", 1),
            padding=_pair(padding, "padding", 0),
            dilation=_pair(dilation, "dilation", 1),
            dilation_patch=_pair(dilation_patch, "dilation_patch", 1),
        )

    @property
    def radius(self) -> tuple[int, int]:
        """Index of the zero displacement along each axis: ``(P − 1) // 2``."""
        return (self.patch_size[0] - 1) // 2, (self.patch_size[1] - 1) // 2

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """``(oH, oW)`` for an ``H×W`` input; ValueError when the kernel does not fit."""
        sizes = []
        for axis, extent in enumerate((height, width)):
            span = (self.kernel_size[axis] - 1) * self.dilation[axis] + 1
            room = extent + 2 * self.padding[axis] - span
            if room < 0:
                raise ValueError(
                    f"input of size {height}x{width} is too small for kernel_size="
                    f"{self.kernel_size} with dilation={self.dilation} and padding={self.padding}"
                )
            sizes.append(room // self.stride[axis] + 1)
        return sizes[0], sizes[1]

    def extension_args(self) -> tuple[int, ...]:
        """Flat argument list of the compiled functions (same order as ``correlation.h``)."""
        return (
            *self.kernel_size, *self.patch_size, *self.stride,
            *self.padding, *self.dilation, *self.dilation_patch,
        )


def _check_inputs(input1: Tensor, input2: Tensor) -> None:
    for name, tensor in (("input1", input1), ("input2", input2)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4:
            raise ValueError(f"{name} must be B×C×H×W (4-D), got shape {tuple(tensor.shape)}")
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    if input1.shape != input2.shape:
        raise ValueError(
            f"input1 and input2 must have the same shape, got {tuple(input1.shape)} "
            f"and {tuple(input2.shape)}"
        )
    if input1.dtype != input2.dtype:
        raise ValueError(f"input1 and input2 differ in dtype: {input1.dtype} vs {input2.dtype}")
    if input1.device != input2.device:
        raise ValueError(
            f"input1 and input2 are on different devices: {input1.device} vs {input2.device}"
        )


# --------------------------------------------------------------------------- reference


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the reference: fp32 for 16-bit inputs, else the input's own."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class _Geometry:
    """Padded inputs and the slices each (kernel tap, displacement) pair multiplies."""

    def __init__(self, cfg: CorrelationConfig, height: int, width: int) -> None:
        self.cfg = cfg
        self.height, self.width = height, width
        self.out_h, self.out_w = cfg.output_size(height, width)
        (ph, pw), (rh, rw) = cfg.patch_size, cfg.radius
        (dph, dpw), (pad_h, pad_w) = cfg.dilation_patch, cfg.padding
        # input2 gets extra zero margins so that every shifted slice stays inside the tensor.
        self.top, self.bottom = rh * dph, (ph - 1 - rh) * dph
        self.left, self.right = rw * dpw, (pw - 1 - rw) * dpw
        self.pad1 = (pad_w, pad_w, pad_h, pad_h)
        self.pad2 = (pad_w + self.left, pad_w + self.right, pad_h + self.top, pad_h + self.bottom)

    def taps(self) -> list[tuple[slice, slice]]:
        """Row/column slices of the padded input1 read by each kernel tap."""
        (kh, kw), (dh, dw), (sh, sw) = self.cfg.kernel_size, self.cfg.dilation, self.cfg.stride
        out = []
        for ki in range(kh):
            for kj in range(kw):
                r0, c0 = ki * dh, kj * dw
                out.append((
                    slice(r0, r0 + (self.out_h - 1) * sh + 1, sh),
                    slice(c0, c0 + (self.out_w - 1) * sw + 1, sw),
                ))
        return out

    def shifted(self, rows: slice, cols: slice, i: int, j: int) -> tuple[slice, slice]:
        """Slices of the padded input2 paired with ``(rows, cols)`` of input1 at patch ``(i, j)``."""
        (rh, rw), (dph, dpw) = self.cfg.radius, self.cfg.dilation_patch
        dr = self.top + (i - rh) * dph
        dc = self.left + (j - rw) * dpw
        return (
            slice(rows.start + dr, rows.stop + dr, rows.step),
            slice(cols.start + dc, cols.stop + dc, cols.step),
        )

    def crop1(self, padded: Tensor) -> Tensor:
        left, top = self.pad1[0], self.pad1[2]
        return padded[:, :, top:top + self.height, left:left + self.width]

    def crop2(self, padded: Tensor) -> Tensor:
        left, top = self.pad2[0], self.pad2[2]
        return padded[:, :, top:top + self.height, left:left + self.width]


def _reference_forward(input1: Tensor, input2: Tensor, cfg: CorrelationConfig) -> Tensor:
    """``B×C×H×W`` × 2 → ``B×PH×PW×oH×oW``; one shifted product per (tap, displacement)."""
    geo = _Geometry(cfg, input1.shape[2], input1.shape[3])
    work = _work_dtype(input1.dtype)
    a = F.pad(input1.to(work), geo.pad1)
    b = F.pad(input2.to(work), geo.pad2)
    ph, pw = cfg.patch_size
    out = a.new_zeros(input1.shape[0], ph, pw, geo.out_h, geo.out_w)
    for rows, cols in geo.taps():
        a_tap = a[:, :, rows, cols]
        for i in range(ph):
            for j in range(pw):
                rows2, cols2 = geo.shifted(rows, cols, i, j)
                out[:, i, j] += (a_tap * b[:, :, rows2, cols2]).sum(dim=1)
    return out.to(input1.dtype)


def _reference_backward(
    grad: Tensor, input1: Tensor, input2: Tensor, cfg: CorrelationConfig,
    need1: bool = True, need2: bool = True,
) -> tuple[Tensor | None, Tensor | None]:
    """Gradients ``(∂/∂input1, ∂/∂input2)``, each ``B×C×H×W`` (None where not needed).

    Uses only differentiable tensor ops, so double backward works too.
    """
    geo = _Geometry(cfg, input1.shape[2], input1.shape[3])
    work = _work_dtype(input1.dtype)
    a = F.pad(input1.to(work), geo.pad1)
    b = F.pad(input2.to(work), geo.pad2)
    grad = grad.to(work)
    grad_a = torch.zeros_like(a) if need1 else None
    grad_b = torch.zeros_like(b) if need2 else None
    ph, pw = cfg.patch_size
    for rows, cols in geo.taps():
        for i in range(ph):
            for j in range(pw):
                rows2, cols2 = geo.shifted(rows, cols, i, j)
                g = grad[:, i, j].unsqueeze(1)
                if grad_a is not None:
                    grad_a[:, :, rows, cols] += g * b[:, :, rows2, cols2]
                if grad_b is not None:
                    grad_b[:, :, rows2, cols2] += g * a[:, :, rows, cols]
    grad1 = None if grad_a is None else geo.crop1(grad_a).to(input1.dtype)
    grad2 = None if grad_b is None else geo.crop2(grad_b).to(input2.dtype)
    return grad1, grad2


class _ReferenceCorrelation(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, input1: Tensor, input2: Tensor, cfg: CorrelationConfig
    ) -> Tensor:
        ctx.save_for_backward(input1, input2)
        ctx.cfg = cfg  # type: ignore[attr-defined]
        return _reference_forward(input1, input2, cfg)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor):  # type: ignore[override]
        input1, input2 = ctx.saved_tensors  # type: ignore[attr-defined]
        need1, need2, _ = ctx.needs_input_grad  # type: ignore[attr-defined]
        grad1, grad2 = _reference_backward(
            grad, input1, input2, ctx.cfg, need1, need2  # type: ignore[attr-defined]
        )
        return grad1, grad2, None


# --------------------------------------------------------------------------- CUDA


def load_extension() -> ModuleType | None:
    """The compiled CUDA extension, built on first call and cached; None when unavailable.

    A failed build warns once and leaves every later call on the reference path. Set
    ``DENSESSL_NO_CUDA_EXT=1`` to skip the extension altogether.
    """
    return _jit.load_op(EXTENSION_NAME, CSRC, EXTENSION_SOURCES, EXTENSION_HEADERS)


# (geometry, B×C×H×W): a dilated patch; a strided, padded, dilated kernel (the CUDA-core forward
# in every dtype); two channel chunks and three 16-column tiles (the tensor-core kernels).
_SELF_CHECK_CASES = (
    (CorrelationConfig.make(patch_size=5, dilation_patch=2), (2, 6, 9, 13)),
    (CorrelationConfig.make(kernel_size=3, patch_size=4, stride=2, padding=1, dilation=2),
     (2, 6, 9, 13)),
    (CorrelationConfig.make(patch_size=9), (1, 70, 4, 40)),
)
_SELF_CHECK_RTOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}


def _self_check(ext: ModuleType, device: torch.device) -> None:
    """Forward and backward of ``ext`` against the reference on small inputs, in each dtype;
    16-bit inputs with and without the tensor-core kernels."""
    gen = torch.Generator().manual_seed(0)
    for cfg, shape in _SELF_CHECK_CASES:
        a, b = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
        grad = torch.randn(shape[0], *cfg.patch_size, *cfg.output_size(*shape[2:]), generator=gen)
        for dtype, rtol in _SELF_CHECK_RTOL.items():
            x1, x2, g = (t.to(device=device, dtype=dtype) for t in (a, b, grad))
            want_out = _reference_forward(x1, x2, cfg)
            want_grads = _reference_backward(g, x1, x2, cfg)
            for tensor_cores in (True, False) if dtype.itemsize == 2 else (True,):
                where = f"{dtype}{'' if tensor_cores else ' without tensor cores'} {cfg}"
                out = ext.forward(x1, x2, *cfg.extension_args(), tensor_cores=tensor_cores)
                _jit.assert_close(out, want_out, rtol, f"forward, {where}")
                got = ext.backward(g, x1, x2, *cfg.extension_args(), True, True,
                                   tensor_cores=tensor_cores)
                for index in range(2):
                    _jit.assert_close(got[index], want_grads[index], rtol,
                                      f"grad of input{index + 1}, {where}")


def usable_extension(device: torch.device) -> ModuleType | None:
    """:func:`load_extension`, once it has passed its first-use check on ``device`` (else None,
    after one warning)."""
    ext = load_extension()
    return None if ext is None else _jit.checked_on(EXTENSION_NAME, ext, device, _self_check)


def _cuda_supported(cfg: CorrelationConfig) -> bool:
    (ph, pw), (dph, dpw) = cfg.patch_size, cfg.dilation_patch
    return (
        max((ph - 1) * dph, (pw - 1) * dpw) <= MAX_CUDA_PATCH_SPAN
        and max(cfg.stride) <= MAX_CUDA_STRIDE
    )


class _CudaCorrelation(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, input1: Tensor, input2: Tensor, cfg: CorrelationConfig,
        ext: ModuleType, tensor_cores: bool,
    ) -> Tensor:
        input1, input2 = input1.contiguous(), input2.contiguous()
        ctx.save_for_backward(input1, input2)
        ctx.cfg, ctx.ext, ctx.tensor_cores = cfg, ext, tensor_cores  # type: ignore[attr-defined]
        return ext.forward(input1, input2, *cfg.extension_args(), tensor_cores=tensor_cores)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor):  # type: ignore[override]
        input1, input2 = ctx.saved_tensors  # type: ignore[attr-defined]
        need1, need2 = ctx.needs_input_grad[:2]  # type: ignore[attr-defined]
        ext, cfg, tensor_cores = ctx.ext, ctx.cfg, ctx.tensor_cores  # type: ignore[attr-defined]
        grad1, grad2 = ext.backward(grad.contiguous(), input1, input2, *cfg.extension_args(),
                                    bool(need1), bool(need2), tensor_cores=tensor_cores)
        return (grad1 if need1 else None), (grad2 if need2 else None), None, None, None


# --------------------------------------------------------------------------- public API


def correlation_reference(
    input1: Tensor,
    input2: Tensor,
    kernel_size: IntPair = 1,
    patch_size: IntPair = 1,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    dilation_patch: IntPair = 1,
) -> Tensor:
    """The pure-PyTorch path of :func:`spatial_correlation_sample`, on any device.

    Differentiable (explicit backward, itself differentiable). 16-bit inputs are accumulated
    in fp32 and the result is returned in the input dtype.
    """
    cfg = CorrelationConfig.make(kernel_size, patch_size, stride, padding, dilation, dilation_patch)
    _check_inputs(input1, input2)
    return _ReferenceCorrelation.apply(input1, input2, cfg)


def correlation_cuda(
    input1: Tensor,
    input2: Tensor,
    kernel_size: IntPair = 1,
    patch_size: IntPair = 1,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    dilation_patch: IntPair = 1,
    *,
    tensor_cores: bool = True,
) -> Tensor:
    """The compiled CUDA path only; RuntimeError when it cannot run for these inputs.

    ``tensor_cores=False`` keeps fp16/bf16 inputs on the CUDA-core kernels (for comparisons);
    by default they use the tensor-core kernels where those apply (see the module doc).
    """
    cfg = CorrelationConfig.make(kernel_size, patch_size, stride, padding, dilation, dilation_patch)
    _check_inputs(input1, input2)
    if not input1.is_cuda:
        raise RuntimeError("correlation_cuda needs CUDA tensors")
    if not _cuda_supported(cfg):
        raise RuntimeError(
            f"the kernels support (patch_size - 1) * dilation_patch <= {MAX_CUDA_PATCH_SPAN} "
            f"and stride <= {MAX_CUDA_STRIDE}"
        )
    ext = usable_extension(input1.device)
    if ext is None:
        raise RuntimeError("the CUDA correlation extension is not available (see the warning)")
    cfg.output_size(input1.shape[2], input1.shape[3])
    return _CudaCorrelation.apply(input1, input2, cfg, ext, tensor_cores)


def spatial_correlation_sample(
    input1: Tensor,
    input2: Tensor,
    kernel_size: IntPair = 1,
    patch_size: IntPair = 1,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    dilation_patch: IntPair = 1,
) -> Tensor:
    """Correlation cost volume of ``input1`` against shifted ``input2`` (see the module doc).

    Args:
        input1, input2: ``B×C×H×W`` floating-point tensors on the same device.
        kernel_size, patch_size, stride, padding, dilation, dilation_patch: ints or ``(h, w)``
            pairs, as in ``spatial_correlation_sampler``.

    Returns:
        ``B×PH×PW×oH×oW`` in the input dtype; not normalised by ``C``.

    CUDA tensors use the compiled kernels when they build and pass their first-use check on
    the device (fp32 accumulation), else the reference; CPU tensors always use the reference.
    """
    cfg = CorrelationConfig.make(kernel_size, patch_size, stride, padding, dilation, dilation_patch)
    _check_inputs(input1, input2)
    cfg.output_size(input1.shape[2], input1.shape[3])
    if input1.is_cuda and _cuda_supported(cfg):
        ext = usable_extension(input1.device)
        if ext is not None:
            return _CudaCorrelation.apply(input1, input2, cfg, ext, True)
    return _ReferenceCorrelation.apply(input1, input2, cfg)


class SpatialCorrelationSampler(nn.Module):
    """Module form of :func:`spatial_correlation_sample` (same constructor as the package).

    ``forward(input1, input2)``: ``B×C×H×W`` × 2 → ``B×PH×PW×oH×oW``.
    """

    def __init__(
        self,
        kernel_size: IntPair = 1,
        patch_size: IntPair = 1,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        dilation_patch: IntPair = 1,
    ) -> None:
        super().__init__()
        CorrelationConfig.make(kernel_size, patch_size, stride, padding, dilation, dilation_patch)
        self.kernel_size = kernel_size
        self.patch_size = patch_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.dilation_patch = dilation_patch

    def forward(self, input1: Tensor, input2: Tensor) -> Tensor:
        return spatial_correlation_sample(
            input1, input2, self.kernel_size, self.patch_size, self.stride,
            self.padding, self.dilation, self.dilation_patch,
        )

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, patch_size={self.patch_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, "
            f"dilation_patch={self.dilation_patch}"
        )
