"""The training and propagation steps on a CUDA device, checked without one.

Under PyTorch's fake-tensor mode, tensors carry a device and a shape but no data: operators
check that their inputs share a device, and reading a value back to the host (``.item()``,
``int(t)``, data-dependent shapes) raises. Running the CUDA paths this way on a CPU-only machine
catches a tensor made on the host and mixed into GPU work, and a per-step read-back that would
make the host wait for the GPU. (Autocast and the backward pass need a real GPU:
``benchmarks/gpu_session.sh`` runs those.)
"""

from __future__ import annotations

import pytest
import torch

fake_tensor = pytest.importorskip("torch._subclasses.fake_tensor")

from densessl.augment.crw import CRWAugment  # noqa: E402
from densessl.models.backbones import create_backbone  # noqa: E402
from densessl.video.crw import CRW, CRWTrainModel  # noqa: E402
from densessl.video.motion_vos import MotionVOSModel, MotionVOSNetConfig  # noqa: E402
from densessl.video.propagation import make_config, propagate_labels  # noqa: E402

CUDA = torch.device("cuda")


@pytest.fixture
def fake_cuda():
    """Fake mode with CUDA as the default device for tensors and modules made inside it."""
    with fake_tensor.FakeTensorMode(allow_non_fake_inputs=True):
        torch.set_default_device(CUDA)
        try:
            yield
        finally:
            torch.set_default_device(None)


def test_fake_mode_catches_mixed_devices_and_read_backs(fake_cuda):
    on_gpu = torch.ones(3)
    with pytest.raises(RuntimeError, match="device"):
        on_gpu + torch.ones(3, device="cpu")
    with pytest.raises(fake_tensor.DataDependentOutputException):
        on_gpu.sum().item()


@pytest.mark.parametrize("mode", ["patch", "roi", "dense"])
def test_crw_training_step_stays_on_the_gpu(fake_cuda, mode):
    # without colour jitter (off by default): Kornia's ColorJitter reads values back to the host
    augment = CRWAugment(frame_size=128, patch_size=32, patch_stride=16, with_patches=mode == "patch", flip=True)
    model = CRWTrainModel(augment, CRW(create_backbone("resnet18-crw", out_layer="layer2"), mode=mode,
                                       channels_last=True))
    clips = torch.randint(0, 256, (2, 4, 144, 192, 3), dtype=torch.uint8)
    loss, metrics = model(clips)
    assert loss.device.type == "cuda" and loss.shape == ()
    assert all(value.device.type == "cuda" for value in metrics.values())


@pytest.mark.parametrize("camera_fit,context,warm_start",
                         [("none", "mean", 0), ("quadratic", "affine", 1), ("none", "none", 0)])
def test_motion_vos_training_steps_stay_on_the_gpu(fake_cuda, camera_fit, context, warm_start):
    model = MotionVOSModel(MotionVOSNetConfig(
        generator_widths=(8, 16), inpainter_widths=(8, 16), dilations=(2,), generator_camera_fit=camera_fit,
        inpainter_context=context, min_hidden_fraction=0.1, generator_steps=1,
        generator_warm_start_steps=warm_start,
    ))
    batch = {"image": torch.rand(2, 3, 48, 64), "flow": torch.randn(2, 2, 48, 64)}
    for _ in range(2):  # a generator step, then an inpainter step
        loss, metrics = model(batch)
        assert loss.device.type == "cuda"
        assert {k for k, v in metrics.items() if v.device.type == "cuda"} >= {"loss", "inpainter_loss", "mask_mean"}
    assert model.steps_done == 2


@pytest.mark.parametrize("protocol,precision", [("crw", "fp32"), ("dino", "fp32"), ("crw", "bf16")])
def test_label_propagation_stays_on_the_gpu(fake_cuda, protocol, precision):
    # fused_kernel=False: the compiled kernel has no fake-tensor implementation (the GPU
    # session tests it against this path)
    config = make_config(protocol, fused_kernel=False, num_recent=3, search_precision=precision)
    features = torch.nn.functional.normalize(torch.randn(6, 16, 12, 20), dim=1)
    first = torch.rand(3, 12, 20)
    labels = propagate_labels(features, first, 6, config)
    assert labels.device.type == "cuda" and labels.shape == (6, 3, 12, 20)
