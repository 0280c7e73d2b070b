"""Tests of densessl.ops.correlation: reference vs a naive loop, gradients, CUDA kernels, JIT."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import stat
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from densessl.ops import _jit
from conftest import build_kernel_emulator, built_extension, check_first_use_check
from densessl.ops import context_topk as ctk
from densessl.ops import correlation as corr
from densessl.ops.correlation import (
    CorrelationConfig,
    SpatialCorrelationSampler,
    correlation_reference,
    spatial_correlation_sample,
)

HAS_CUDA = torch.cuda.is_available()


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def naive_correlation(in1, in2, kernel_size=1, patch_size=1, stride=1, padding=0, dilation=1,
                      dilation_patch=1) -> np.ndarray:
    """Direct transcription of the package's CPU loops (float64, no padding tricks)."""
    a = in1.detach().double().cpu().numpy()
    b = in2.detach().double().cpu().numpy()
    (kh, kw), (ph, pw), (sh, sw) = _pair(kernel_size), _pair(patch_size), _pair(stride)
    (pad_h, pad_w), (dh, dw), (dph, dpw) = _pair(padding), _pair(dilation), _pair(dilation_patch)
    n, _, height, width = a.shape
    out_h = (height + 2 * pad_h - ((kh - 1) * dh + 1)) // sh + 1
    out_w = (width + 2 * pad_w - ((kw - 1) * dw + 1)) // sw + 1
    rad_h, rad_w = (ph - 1) // 2, (pw - 1) // 2
    out = np.zeros((n, ph, pw, out_h, out_w))
    for bi in range(n):
        for i in range(ph):
            for j in range(pw):
                for y in range(out_h):
                    for x in range(out_w):
                        total = 0.0
                        for ki in range(kh):
                            for kj in range(kw):
                                r1 = y * sh - pad_h + ki * dh
                                c1 = x * sw - pad_w + kj * dw
                                r2 = r1 + (i - rad_h) * dph
                                c2 = c1 + (j - rad_w) * dpw
                                if (0 <= r1 < height and 0 <= c1 < width
                                        and 0 <= r2 < height and 0 <= c2 < width):
                                    total += float(a[bi, :, r1, c1] @ b[bi, :, r2, c2])
                        out[bi, i, j, y, x] = total
    return out


CONFIGS = [
    dict(patch_size=3),
    dict(patch_size=5, dilation_patch=2),
    dict(patch_size=4, dilation_patch=3),  # even patch: displacements -1..2 (times 3)
    dict(patch_size=(3, 5), dilation_patch=(1, 2)),
    dict(kernel_size=3, patch_size=3, padding=1),
    dict(kernel_size=(2, 3), patch_size=3, padding=(1, 2), dilation=(2, 1)),
    dict(kernel_size=3, patch_size=3, stride=2, padding=1),
    dict(patch_size=5, stride=(2, 3)),
    dict(patch_size=1, padding=2),
    dict(kernel_size=3, patch_size=(4, 3), stride=2, padding=(2, 1), dilation=2, dilation_patch=2),
]


def _ids(configs):
    return ["-".join(f"{k}={v}" for k, v in c.items()) for c in configs]


@pytest.mark.parametrize("cfg", CONFIGS, ids=_ids(CONFIGS))
def test_reference_matches_naive_loops(cfg):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64)
    b = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64)
    out = correlation_reference(a, b, **cfg)
    expected = naive_correlation(a, b, **cfg)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "cfg, size, expected",
    [
        (dict(patch_size=9), (10, 12), (9, 9, 10, 12)),
        (dict(patch_size=(3, 5)), (10, 12), (3, 5, 10, 12)),
        (dict(kernel_size=3), (10, 12), (1, 1, 8, 10)),
        (dict(kernel_size=3, padding=1), (10, 12), (1, 1, 10, 12)),
        (dict(kernel_size=3, dilation=2, padding=1), (10, 12), (1, 1, 8, 10)),
        (dict(stride=2), (10, 11), (1, 1, 5, 6)),
        (dict(kernel_size=2, stride=3, padding=(0, 1)), (10, 11), (1, 1, 3, 4)),
    ],
)
def test_output_shape_follows_the_package_formula(cfg, size, expected):
    a = torch.randn(2, 4, *size)
    assert spatial_correlation_sample(a, a, **cfg).shape == (2, *expected)


def test_output_is_a_plain_sum_not_normalised_by_channels():
    channels = 7
    ones = torch.ones(1, channels, 6, 6)
    out = spatial_correlation_sample(ones, ones, kernel_size=3, patch_size=3, padding=1)
    # Interior position, zero displacement: 9 kernel taps × C products of 1·1.
    assert out[0, 1, 1, 2, 2].item() == pytest.approx(9 * channels)
    # Corner with displacement (-1, -1): only the taps whose shifted partner is inside count.
    assert out[0, 0, 0, 0, 0].item() == pytest.approx(1 * channels)


def test_displacement_sign_convention():
    """in2 shifted by (+1, +2) peaks at patch index (r + 1, r + 2)."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(1, 16, 12, 12, generator=g)
    b = torch.roll(a, shifts=(1, 2), dims=(2, 3))
    out = spatial_correlation_sample(a, b, patch_size=5)  # radius 2
    peak = out[0, :, :, 4:8, 4:8].sum(dim=(-1, -2)).argmax().item()
    assert divmod(peak, 5) == (3, 4)


GRAD_CONFIGS = [
    dict(patch_size=3),
    dict(patch_size=(2, 3), dilation_patch=(2, 1)),
    dict(kernel_size=3, patch_size=3, padding=1),
    dict(kernel_size=2, patch_size=3, stride=2, padding=1, dilation=2),
    dict(patch_size=3, stride=(1, 2), padding=(0, 1), dilation_patch=2),
]


@pytest.mark.parametrize("cfg", GRAD_CONFIGS, ids=_ids(GRAD_CONFIGS))
def test_reference_gradcheck(cfg):
    g = torch.Generator().manual_seed(2)
    a = torch.randn(1, 2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, 2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: correlation_reference(x, y, **cfg), (a, b))


def test_reference_gradgradcheck():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(1, 2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, 2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    fn = lambda x, y: correlation_reference(x, y, kernel_size=2, patch_size=(2, 3))  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (a, b))


def test_gradient_of_one_input_only():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(1, 3, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, 3, 5, 5, generator=g, dtype=torch.float64)
    out = correlation_reference(a, b, patch_size=3)
    (grad_a,) = torch.autograd.grad(out.sum(), a)
    # d/da Σ out = Σ over displacements of the shifted in2 (zero outside): check one pixel.
    y, x = 2, 1
    expected = sum(b[0, :, y + dy, x + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                   if 0 <= x + dx < 5)
    torch.testing.assert_close(grad_a[0, :, y, x], expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_16bit_inputs_accumulate_in_fp32(dtype):
    g = torch.Generator().manual_seed(5)
    a = torch.randn(1, 64, 6, 6, generator=g).to(dtype)
    b = torch.randn(1, 64, 6, 6, generator=g).to(dtype)
    out = correlation_reference(a, b, patch_size=3)
    assert out.dtype == dtype
    gold = correlation_reference(a.double(), b.double(), patch_size=3)
    # Only the final rounding to 16 bits remains (accumulating in 16 bits would be far worse).
    eps = torch.finfo(dtype).eps
    assert ((out.double() - gold).abs() <= gold.abs() * eps + 1e-6).all()


def test_module_matches_function_and_reports_its_arguments():
    module = SpatialCorrelationSampler(kernel_size=1, patch_size=(3, 5), stride=1, padding=0,
                                       dilation=1, dilation_patch=2)
    a, b = torch.randn(2, 1, 4, 3, 7).unbind(0)
    torch.testing.assert_close(
        module(a, b), spatial_correlation_sample(a, b, 1, (3, 5), 1, 0, 1, 2)
    )
    assert "patch_size=(3, 5)" in repr(module) and "dilation_patch=2" in repr(module)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(patch_size=0), "patch_size"),
        (dict(kernel_size=(3, 3, 3)), "kernel_size"),
        (dict(stride=True), "stride"),
        (dict(padding=-1), "padding"),
        (dict(dilation_patch=(1.5, 1)), "dilation_patch"),
        (dict(kernel_size=9), "too small"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, message):
    a = torch.randn(1, 2, 5, 5)
    with pytest.raises(ValueError, match=message):
        spatial_correlation_sample(a, a, **kwargs)


def test_bad_inputs_are_rejected():
    a = torch.randn(1, 2, 5, 5)
    with pytest.raises(ValueError, match="same shape"):
        spatial_correlation_sample(a, torch.randn(1, 2, 5, 6))
    with pytest.raises(ValueError, match="4-D"):
        spatial_correlation_sample(a[0], a[0])
    with pytest.raises(ValueError, match="floating-point"):
        spatial_correlation_sample(a.long(), a.long())
    with pytest.raises(ValueError, match="dtype"):
        spatial_correlation_sample(a, a.double())
    with pytest.raises(TypeError, match="input2"):
        spatial_correlation_sample(a, a.numpy())


def test_cpu_inputs_never_touch_the_extension(monkeypatch):
    def boom():
        raise AssertionError("the extension must not be loaded for CPU tensors")

    monkeypatch.setattr(corr, "load_extension", boom)
    a = torch.randn(1, 2, 4, 4)
    assert spatial_correlation_sample(a, a, patch_size=3).shape == (1, 3, 3, 4, 4)


def test_config_validation_and_extension_args():
    cfg = CorrelationConfig.make(kernel_size=(1, 3), patch_size=5, stride=(2, 1), padding=1,
                                 dilation=(1, 2), dilation_patch=3)
    assert cfg.extension_args() == (1, 3, 5, 5, 2, 1, 1, 1, 1, 2, 3, 3)
    assert cfg.radius == (2, 2)
    assert CorrelationConfig.make(patch_size=4).radius == (1, 1)
    assert cfg.output_size(9, 9) == (6, 7)


# --------------------------------------------------------------------------- JIT helper


def test_failed_build_warns_once_and_returns_none(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "cache"))
    broken = tmp_path / "broken.cpp"
    broken.write_text("#error deliberately broken source\n")
    name = "densessl_test_broken"
    _jit.forget(name)
    try:
        with pytest.warns(_jit.ExtensionBuildWarning, match=name):
            assert _jit.load_extension(name, [broken]) is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert _jit.load_extension(name, [broken]) is None  # remembered, no second warning
    finally:
        _jit.forget(name)


def test_correlation_extension_failure_falls_back_with_one_warning(tmp_path, monkeypatch):
    """The real loader, pointed at a broken CUDA source: one warning, then None."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    monkeypatch.delenv("DENSESSL_NO_CUDA_EXT", raising=False)
    (tmp_path / "correlation.cpp").write_text("#error broken\n")
    (tmp_path / "correlation_cuda.cu").write_text("#error broken\n")
    for header in corr.EXTENSION_HEADERS:
        (tmp_path / header).write_text("#pragma once\n")
    monkeypatch.setattr(corr, "CSRC", tmp_path)
    monkeypatch.setattr(corr, "EXTENSION_NAME", "densessl_test_broken_correlation")
    _jit.forget(corr.EXTENSION_NAME)
    try:
        with pytest.warns(_jit.ExtensionBuildWarning):
            assert corr.load_extension() is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert corr.load_extension() is None
    finally:
        _jit.forget(corr.EXTENSION_NAME)


def test_extension_can_be_disabled(monkeypatch):
    monkeypatch.setenv("DENSESSL_NO_CUDA_EXT", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert corr.load_extension() is None


def _reference_kernels(forward_error: float = 0.0, swap_grads: bool = False,
                       wrong_path: bool | None = None):
    """Stands in for the compiled module on the CPU: the reference with the kernels' calling
    convention, optionally made wrong (``wrong_path``: only 16-bit forwards with
    ``tensor_cores`` equal to it)."""

    def config(args):
        return CorrelationConfig(*(tuple(args[i:i + 2]) for i in range(0, 12, 2)))

    def forward(a, b, *args, tensor_cores=True):
        out = corr._reference_forward(a, b, config(args))
        if wrong_path is None or (a.dtype.itemsize == 2 and tensor_cores == wrong_path):
            out.view(-1)[7] += forward_error
        return out

    def backward(grad, a, b, *args, tensor_cores=True):
        grad1, grad2 = corr._reference_backward(grad, a, b, config(args[:12]), *args[12:])
        return (grad2, grad1) if swap_grads else (grad1, grad2)

    return SimpleNamespace(forward=forward, backward=backward)


@pytest.mark.parametrize("broken,message", [
    (dict(forward_error=1e-2), "forward, torch.float32"),
    (dict(swap_grads=True), "grad of input1"),
    (dict(forward_error=0.5, wrong_path=True), r"forward, torch.float16 CorrelationConfig"),
    (dict(forward_error=0.5, wrong_path=False), "forward, torch.float16 without tensor cores"),
])
def test_first_use_check_accepts_the_reference_and_catches_wrong_kernels(broken, message):
    check_first_use_check("densessl_test_checked_correlation", _reference_kernels(),
                          _reference_kernels(**broken), corr._self_check, message)


@pytest.mark.parametrize("tensor_cores", [True, False])
def test_autograd_wrapper_of_the_kernels_passes_their_options(tensor_cores):
    """The autograd Function around the compiled module (run here with the reference in the
    kernels' calling convention): gradients of both inputs, ``tensor_cores`` both ways."""
    kernels = _reference_kernels()
    seen = []

    def forward(*args, tensor_cores):
        seen.append(("forward", tensor_cores))
        return kernels.forward(*args, tensor_cores=tensor_cores)

    def backward(*args, tensor_cores):
        seen.append(("backward", tensor_cores))
        return kernels.backward(*args, tensor_cores=tensor_cores)

    cfg = CorrelationConfig.make(kernel_size=3, patch_size=5, padding=1, dilation_patch=2)
    a, b = torch.randn(2, 1, 3, 6, 7, dtype=torch.float64).unbind(0)
    a.requires_grad_()
    b.requires_grad_()
    out = corr._CudaCorrelation.apply(a, b, cfg, SimpleNamespace(forward=forward, backward=backward),
                                      tensor_cores)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (a, b), grad)
    want = torch.autograd.grad(correlation_reference(a, b, **dataclasses.asdict(cfg)), (a, b), grad)
    assert seen == [("forward", tensor_cores), ("backward", tensor_cores)]
    for g1, g2 in zip(got, want):
        torch.testing.assert_close(g1, g2)


def test_a_kernel_that_cannot_launch_falls_back_with_its_error():
    name = "densessl_test_unlaunchable_correlation"

    def no_image(*args, **kwargs):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    _jit.forget(name)
    try:
        with pytest.warns(_jit.ExtensionSelfCheckWarning, match="no kernel image"):
            assert _jit.checked_on(name, SimpleNamespace(forward=no_image), torch.device("cpu"),
                                   corr._self_check) is None
    finally:
        _jit.forget(name)


def test_find_cuda_home_follows_wrapper_scripts(tmp_path, monkeypatch):
    real = tmp_path / "toolkit"
    (real / "bin").mkdir(parents=True)
    (real / "lib64").mkdir()
    (real / "bin" / "nvcc").write_text("#!/bin/sh\n")
    (real / "lib64" / "libcudart.so").write_bytes(b"")
    wrapper_dir = tmp_path / "wrapper"
    wrapper_dir.mkdir()
    wrapper = wrapper_dir / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {real}/bin/nvcc "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(wrapper_dir))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "not-a-toolkit"))
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert _jit.find_cuda_home() == str(real)


def test_cache_location_and_tag(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert _jit.cache_root() == tmp_path
    src = tmp_path / "a.cu"
    src.write_text("int x;\n")
    first = _jit.build_tag([src])
    assert _jit.build_tag([src]) == first
    src.write_text("int y;\n")
    assert _jit.build_tag([src]) != first


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("DENSESSL_TEST_BUILD") != "1",
                    reason="set DENSESSL_TEST_BUILD=1 to compile the CUDA sources (minutes)")
@pytest.mark.parametrize("op,entry_points", [(corr, ("forward", "backward")),
                                               (ctk, ("context_topk",))], ids=["correlation", "context_topk"])
def test_cuda_sources_compile(monkeypatch, op, entry_points):
    if _jit.find_cuda_home() is None:
        pytest.skip("no CUDA toolkit")
    if not HAS_CUDA:
        monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0"))
    module = _jit.build_op(op.EXTENSION_NAME, op.CSRC, op.EXTENSION_SOURCES, op.EXTENSION_HEADERS)
    assert all(hasattr(module, name) for name in entry_points)


# --------------------------------------------------------------- CUDA kernels, CPU emulation

# B,C,H,W, kH,kW, pH,pW, sH,sW, padH,padW, dilH,dilW, dpH,dpW, max threads per block
EMULATION_CASES = [
    "2,19,7,21,1,1,9,9,1,1,0,0,1,1,1,1,32",      # P9, two channel chunks
    "1,5,6,75,1,1,25,25,1,1,0,0,1,1,1,1,32",     # P25, two column tiles
    "1,4,5,40,1,1,7,7,1,1,0,0,1,1,1,1,16",       # P7, 16 threads
    "1,3,6,33,1,1,3,13,1,1,0,0,1,1,1,1,32",      # rectangular patch
    "1,6,8,20,1,1,4,4,1,1,0,0,1,1,2,2,32",       # even patch, dilation_patch
    "1,5,9,19,1,1,5,5,1,1,0,0,1,1,2,3,32",
    "2,3,6,7,3,3,3,3,1,1,1,1,1,1,1,1,32",        # kernel 3, padding 1
    "1,4,7,15,3,2,3,3,1,1,1,2,1,2,1,1,32",
    "1,5,9,17,1,1,5,5,2,2,1,1,1,1,1,1,32",       # stride 2
    "2,3,6,7,3,3,4,3,2,2,2,1,2,2,2,2,32",
    "1,17,6,30,2,3,5,7,2,3,1,2,2,1,2,3,16",
    "1,9,5,50,1,1,1,1,1,1,0,0,1,1,1,1,16",       # patch 1
    "1,1,3,3,1,1,3,3,1,1,0,0,1,1,1,1,32",
    "1,64,2,40,1,1,9,9,1,1,0,0,1,1,1,1,128",     # production block sizes
    "1,2,2,10,1,1,1,257,1,8,0,0,1,1,1,1,256",    # largest reach and stride sent to the GPU
    "1,2,3,12,1,1,3,2,1,1,0,0,1,1,1,256,128",
    "1,3,2,12,1,1,2,257,1,1,0,0,1,1,1,1,256",
    # tensor-core kernels (16-bit): two channel chunks and two tiles of five warps; the widest
    # band (span 48, four column tiles), with a dilated patch; a kernel window with padding
    "1,70,3,150,1,1,3,9,1,1,0,0,1,1,1,1,256",
    "1,3,2,20,1,1,1,49,1,1,0,0,1,1,1,1,64",
    "1,5,3,30,1,1,3,25,1,1,0,0,1,1,1,2,64",
    "1,20,5,40,3,3,5,25,1,1,1,1,1,1,1,1,64",
]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> Path:
    """The kernels of correlation_kernels.h compiled for the CPU (with AddressSanitizer)."""
    return build_kernel_emulator("correlation_kernels_emulation.cpp", corr.CSRC,
                                 tmp_path_factory.mktemp("emulation"))


@pytest.mark.parametrize("dtype", ["float", "double", "half", "bfloat16"])
def test_cuda_kernels_emulated_on_cpu_match_naive_loops(emulator, dtype):
    """The real kernel code, one CPU thread per CUDA thread, against the definition's loops."""
    import subprocess

    result = subprocess.run([str(emulator), dtype, *EMULATION_CASES], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" OK") == len(EMULATION_CASES)


# --------------------------------------------------------------------------- CUDA kernels

CUDA_CONFIGS = [
    dict(patch_size=9),
    dict(patch_size=25),
    dict(patch_size=7),
    dict(patch_size=(3, 13)),
    dict(patch_size=4, dilation_patch=2),
    dict(patch_size=5, dilation_patch=(2, 3)),
    dict(kernel_size=3, patch_size=5, padding=1),
    dict(kernel_size=(3, 2), patch_size=3, padding=(1, 2), dilation=(1, 2)),
    dict(patch_size=5, stride=2, padding=1),
    dict(kernel_size=3, patch_size=(4, 3), stride=(2, 3), padding=2, dilation=2,
         dilation_patch=2),
    dict(patch_size=1),
]
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _rel_error(value: torch.Tensor, gold: torch.Tensor) -> float:
    return ((value.double() - gold).abs().max() / gold.abs().max().clamp_min(1e-30)).item()


def _ext():
    return built_extension(corr)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("cfg", CUDA_CONFIGS, ids=_ids(CUDA_CONFIGS))
def test_cuda_kernels_match_reference(cfg, dtype):
    _ext()
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (2, 37, 11, 75)  # channels not a multiple of the chunk, several column tiles
    a = torch.randn(shape, device="cuda", generator=g).to(dtype).requires_grad_()
    b = torch.randn(shape, device="cuda", generator=g).to(dtype).requires_grad_()
    out = corr.correlation_cuda(a, b, **cfg)
    a64 = a.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_()
    gold = correlation_reference(a64, b64, **cfg)
    assert out.dtype == dtype and out.shape == gold.shape
    assert _rel_error(out, gold) <= TOLERANCE[dtype]

    grad = torch.randn(out.shape, device="cuda", generator=g).to(dtype)
    ga, gb = torch.autograd.grad(out, (a, b), grad)
    ga64, gb64 = torch.autograd.grad(gold, (a64, b64), grad.double())
    assert ga.dtype == dtype and gb.dtype == dtype
    assert _rel_error(ga, ga64) <= TOLERANCE[dtype]
    assert _rel_error(gb, gb64) <= TOLERANCE[dtype]


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_cuda_kernels_pass_their_first_use_check():
    ext = _ext()
    _jit.forget(corr.EXTENSION_NAME)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert corr.usable_extension(torch.device("cuda")) is ext


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_cuda_benchmark_shapes_and_dispatch():
    _ext()
    g = torch.Generator(device="cuda").manual_seed(1)
    a = torch.randn(2, 64, 40, 107, device="cuda", generator=g, requires_grad=True)
    b = torch.randn(2, 64, 40, 107, device="cuda", generator=g, requires_grad=True)
    out = spatial_correlation_sample(a, b, patch_size=25)
    torch.testing.assert_close(out, corr.correlation_cuda(a, b, patch_size=25), rtol=0, atol=0)
    gold = correlation_reference(a.detach().double(), b.detach().double(), patch_size=25)
    assert _rel_error(out, gold) <= 1e-5
    out.square().mean().backward()  # gradients flow through the dispatcher
    assert a.grad is not None and b.grad is not None


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cfg", [dict(patch_size=25), dict(patch_size=9), dict(patch_size=49),
                                 dict(patch_size=(3, 13), dilation_patch=(1, 4))],
                         ids=["P25", "P9", "P49", "dilated"])
def test_cuda_tensor_core_and_cuda_core_kernels_agree(cfg, dtype):
    """16-bit inputs at benchmark-like sizes: the tensor-core kernels (the default) and the
    CUDA-core ones each match the float64 reference in forward and backward."""
    _ext()
    g = torch.Generator(device="cuda").manual_seed(3)
    a = torch.randn(2, 80, 12, 107, device="cuda", generator=g).to(dtype).requires_grad_()
    b = torch.randn(2, 80, 12, 107, device="cuda", generator=g).to(dtype).requires_grad_()
    a64, b64 = (t.detach().double().requires_grad_() for t in (a, b))
    gold = correlation_reference(a64, b64, **cfg)
    grad = torch.randn(gold.shape, device="cuda", generator=g).to(dtype)
    gold_grads = torch.autograd.grad(gold, (a64, b64), grad.double())
    for tensor_cores in (True, False):
        out = corr.correlation_cuda(a, b, **cfg, tensor_cores=tensor_cores)
        assert _rel_error(out, gold) <= TOLERANCE[dtype], tensor_cores
        for got, want in zip(torch.autograd.grad(out, (a, b), grad), gold_grads):
            assert _rel_error(got, want) <= TOLERANCE[dtype], tensor_cores


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_cuda_one_input_grad_and_non_contiguous_inputs():
    _ext()
    g = torch.Generator(device="cuda").manual_seed(2)
    base = torch.randn(1, 13, 24, 16, device="cuda", generator=g)
    a = base.transpose(2, 3).requires_grad_()  # non-contiguous 1×13×16×24
    b = torch.randn(1, 13, 16, 24, device="cuda", generator=g).to(memory_format=torch.channels_last)
    out = corr.correlation_cuda(a, b, patch_size=5, padding=1, kernel_size=3)
    ref = correlation_reference(a.detach().double().requires_grad_(), b.double(), patch_size=5,
                                padding=1, kernel_size=3)
    assert _rel_error(out, ref) <= 1e-5
    (ga,) = torch.autograd.grad(out.sum(), a)
    a64 = a.detach().double().requires_grad_()
    (ga64,) = torch.autograd.grad(
        correlation_reference(a64, b.double(), patch_size=5, padding=1, kernel_size=3).sum(), a64
    )
    assert _rel_error(ga, ga64) <= 1e-5


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_cuda_falls_back_to_reference_when_the_build_fails(monkeypatch):
    monkeypatch.setattr(corr, "load_extension", lambda: None)
    a = torch.randn(1, 4, 6, 6, device="cuda", dtype=torch.float64)
    b = torch.randn(1, 4, 6, 6, device="cuda", dtype=torch.float64)
    out = spatial_correlation_sample(a, b, patch_size=3)
    np.testing.assert_allclose(out.cpu().numpy(), naive_correlation(a, b, patch_size=3),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_reference_memory_stays_far_below_unfold():
    a = torch.randn(1, 64, 64, 64, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    correlation_reference(a, a, patch_size=41)
    peak = torch.cuda.max_memory_allocated() - start
    unfold_bytes = 64 * 41 * 41 * 64 * 64 * 4
    assert peak < unfold_bytes / 50


# --------------------------------------------------------------------------- package parity

CUDA_MARKS = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")]


def _even_dilated_patch(cfg) -> bool:
    return any(p % 2 == 0 and d > 1 for p, d in zip(_pair(cfg.get("patch_size", 1)), _pair(cfg.get("dilation_patch", 1))))


# Every configuration on the CPU; on CUDA not the even patches with dilation_patch > 1, which the
# package's CUDA forward centres differently from its own CPU forward and CUDA backward.
PARITY_CASES = [pytest.param(c, "cpu", id=f"{_ids([c])[0]}-cpu") for c in CONFIGS] + [
    pytest.param(c, "cuda", id=f"{_ids([c])[0]}-cuda", marks=CUDA_MARKS) for c in CONFIGS if not _even_dilated_patch(c)
]


@pytest.mark.parametrize("cfg, device", PARITY_CASES)
def test_parity_with_spatial_correlation_sampler(cfg, device):
    """Forward and backward equal the package's (installed, e.g. built for the CPU with
    ``-std=c++20``; skipped otherwise)."""
    package = pytest.importorskip("spatial_correlation_sampler")
    g = torch.Generator().manual_seed(6)
    a = torch.randn(2, 5, 9, 10, generator=g, dtype=torch.float64).to(device).requires_grad_()
    b = torch.randn(2, 5, 9, 10, generator=g, dtype=torch.float64).to(device).requires_grad_()
    theirs = package.spatial_correlation_sample(a, b, **cfg)
    ours = spatial_correlation_sample(a, b, **cfg)
    torch.testing.assert_close(ours, theirs)
    grad = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad(ours, (a, b), grad),
                               torch.autograd.grad(theirs, (a, b), grad))


def test_benchmark_unfold_baseline_matches_reference(monkeypatch):
    """The unfold implementation used by the benchmark is a valid baseline."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_correlation.py"
    spec = importlib.util.spec_from_file_location("bench_correlation", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_correlation", bench)
    spec.loader.exec_module(bench)
    unfold_correlation = bench.unfold_correlation

    a, b = torch.randn(2, 2, 3, 7, 9).unbind(0)
    torch.testing.assert_close(unfold_correlation(a, b, 5),
                               correlation_reference(a, b, patch_size=5))


def test_csrc_ships_next_to_the_module():
    for name in (*corr.EXTENSION_SOURCES, *corr.EXTENSION_HEADERS):
        assert (Path(corr.__file__).parent / "csrc" / name).is_file()


def test_build_ops_reports_the_first_use_check(monkeypatch, capsys):
    from densessl.tools import build_ops

    monkeypatch.setattr(_jit, "build_op", lambda name, *a, **k: SimpleNamespace(__file__=f"/x/{name}.so"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(corr, "usable_extension", lambda device: object())
    monkeypatch.setattr(ctk, "usable_extension", lambda device: None)
    assert build_ops.main([]) == 1
    out, err = capsys.readouterr()
    assert f"checked {corr.EXTENSION_NAME} against the reference on cuda:0: equal" in out
    assert f"{ctk.EXTENSION_NAME} failed its check" in err
