"""Backbones: shapes/strides per kind, CRW ResNet vs a hand-written reference, the Lab baseline
vs a naive implementation, timm CNN/ViT wrapping, and local weight loading."""

from __future__ import annotations

import argparse
import math
import warnings

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

from densessl.errors import InputError
from densessl.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    create_backbone,
    list_backbones,
    load_weights,
    read_state_dict,
)

SIZES = [(64, 96), (60, 90)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a busy 2-core machine, thread spin-waits slow the many small ops
    of model construction by an order of magnitude."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _randomise_norm_stats(model: torch.nn.Module, seed: int = 0) -> None:
    """Give batch norms non-trivial statistics and affine terms (eval outputs depend on them)."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


def _imagenet_normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# ------------------------------------------------------------------------------------------
# CRW ResNets
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,out_layer,channels,stride",
    [
        ("resnet18-crw", "layer1", 64, 4),
        ("resnet18-crw", "layer2", 128, 8),
        ("resnet18-crw", "layer3", 256, 8),
        ("resnet18-crw", "layer4", 512, 8),
        ("resnet50-crw", "layer3", 1024, 8),
    ],
)
def test_crw_shapes_and_strides(name: str, out_layer: str, channels: int, stride: int) -> None:
    model = create_backbone(name, out_layer=out_layer)
    assert (model.out_channels, model.stride) == (channels, stride)
    sizes = SIZES if name == "resnet18-crw" else SIZES[:1]
    for height, width in sizes:
        with torch.no_grad():
            out = model(torch.rand(2, 3, height, width))
        assert out.shape == (2, channels, math.ceil(height / stride), math.ceil(width / stride))


def test_crw_default_is_layer3_r18_256_stride8() -> None:
    model = create_backbone("resnet18-crw")
    assert model.out_layer == "layer3"
    assert (model.out_channels, model.stride) == (256, 8)
    # Layers after layer3 and the classifier are dropped.
    assert not hasattr(model, "layer4") and not hasattr(model, "fc")
    with torch.no_grad():  # 480×854 DAVIS frames give the 60×107 node grid of the CRW protocol
        assert model(torch.rand(1, 3, 24, 854)).shape[-2:] == (3, 107)


def test_crw_reflect_padding_and_strides() -> None:
    model = create_backbone("resnet18-crw", out_layer="layer4")
    padded = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and sum(m.padding) > 0]
    assert padded and all(m.padding_mode == "reflect" for m in padded)
    for layer in (model.layer3, model.layer4):
        convs = [m for m in layer.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(m.stride == (1, 1) for m in convs)
    assert model.layer2[0].conv1.stride == (2, 2)


def _reference_crw_r18(net: torchvision.models.ResNet, x: torch.Tensor) -> torch.Tensor:
    """Layer3 of a torchvision ResNet-18, written out: reflect padding, layer3 stride 1."""

    def conv(inp: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
        pad = weight.shape[-1] // 2
        if pad:
            inp = F.pad(inp, (pad, pad, pad, pad), mode="reflect")
        return F.conv2d(inp, weight, stride=stride)

    def block(b: torch.nn.Module, inp: torch.Tensor, stride: int) -> torch.Tensor:
        out = F.relu(b.bn1(conv(inp, b.conv1.weight, stride)))
        out = b.bn2(conv(out, b.conv2.weight, 1))
        skip = inp
        if b.downsample is not None:
            skip = b.downsample[1](conv(inp, b.downsample[0].weight, stride))
        return F.relu(out + skip)

    x = _imagenet_normalise(x)
    x = F.relu(net.bn1(conv(x, net.conv1.weight, 2)))
    x = F.max_pool2d(x, 3, 2, 1)
    for layer, stride in ((net.layer1, 1), (net.layer2, 2), (net.layer3, 1)):
        for i, b in enumerate(layer):
            x = block(b, x, stride if i == 0 else 1)
    return x


def test_crw_r18_matches_handwritten_reference(tmp_path) -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    _randomise_norm_stats(net)
    net.eval()
    path = tmp_path / "imagenet_r18.pth"
    torch.save(net.state_dict(), path)  # includes fc and layer4: ignored silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = create_backbone("resnet18-crw", weights=path)
    x = torch.rand(2, 3, 40, 56)
    with torch.no_grad():
        assert torch.allclose(model(x), _reference_crw_r18(net, x), atol=1e-4)
        assert torch.equal(model(x), model.features(x))


# ------------------------------------------------------------------------------------------
# pixels-lab
# ------------------------------------------------------------------------------------------


def _naive_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (H×W×3 in [0, 1]) -> CIE Lab (D65), the CIE formulas pixel by pixel."""
    matrix = np.array(
        [
            [0.412453, 0.357580, 0.180423],
            [0.212671, 0.715160, 0.072169],
            [0.019334, 0.119193, 0.950227],
        ]
    )
    white = np.array([0.950456, 1.0, 1.088754])
    delta = 6.0 / 29.0

    def f(t: float) -> float:
        return t ** (1.0 / 3.0) if t > delta**3 else t / (3 * delta**2) + 4.0 / 29.0

    out = np.zeros_like(rgb, dtype=np.float64)
    for i in range(rgb.shape[0]):
        for j in range(rgb.shape[1]):
            linear = [
                c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[i, j]
            ]
            fx, fy, fz = (f(v) for v in (matrix @ np.array(linear)) / white)
            out[i, j] = (116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz))
    return out


def _naive_block_means(image: np.ndarray, block: int) -> np.ndarray:
    height, width = image.shape[:2]
    rows, cols = math.ceil(height / block), math.ceil(width / block)
    out = np.zeros((rows, cols, image.shape[2]))
    for r in range(rows):
        for c in range(cols):
            cell = image[r * block : (r + 1) * block, c * block : (c + 1) * block]
            out[r, c] = cell.mean(axis=(0, 1))
    return out


@pytest.mark.parametrize("height,width,center", [(16, 24, True), (20, 30, True), (16, 24, False)])
def test_pixels_lab_matches_naive(height: int, width: int, center: bool) -> None:
    model = create_backbone("pixels-lab", center=center)
    assert (model.stride, model.out_channels) == (8, 3)
    x = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(1))
    x[0, :, :4, :4] = 0.0  # black (the linear branch of f) and white corners
    x[0, :, -4:, -4:] = 1.0
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 3, math.ceil(height / 8), math.ceil(width / 8))
    for b in range(2):
        lab = _naive_block_means(_naive_lab(x[b].permute(1, 2, 0).double().numpy()), 8)
        if center:
            expected = np.stack([(lab[..., 0] - 50) / 50, lab[..., 1] / 127, lab[..., 2] / 127])
        else:
            expected = np.stack([lab[..., 0] / 100, lab[..., 1] / 127, lab[..., 2] / 127])
        np.testing.assert_allclose(out[b].numpy(), expected, atol=2e-3)


def test_pixels_lab_has_no_weights(tmp_path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"x": torch.zeros(1)}, path)
    with pytest.raises(InputError, match="no weights"):
        create_backbone("pixels-lab", weights=path)


# ------------------------------------------------------------------------------------------
# timm CNNs
# ------------------------------------------------------------------------------------------


def test_timm_cnn_stages_and_shapes() -> None:
    last = create_backbone("resnet18")
    assert (last.stride, last.out_channels) == (32, 512)
    stage2 = create_backbone("resnet18", out_index=2)
    assert (stage2.stride, stage2.out_channels) == (8, 128)
    dilated = create_backbone("resnet18", output_stride=8)  # extra kwargs reach timm
    assert (dilated.stride, dilated.out_channels) == (8, 512)
    for model in (last, stage2, dilated):
        for height, width in SIZES:
            with torch.no_grad():
                out = model(torch.rand(1, 3, height, width))
            grid = (math.ceil(height / model.stride), math.ceil(width / model.stride))
            assert out.shape == (1, model.out_channels, *grid)
    with pytest.raises(InputError, match="out_index=9 is out of range"):
        create_backbone("resnet18", out_index=9)


def test_timm_cnn_loads_plain_checkpoint_and_matches_plain_model(tmp_path) -> None:
    # convnext: timm's features-only wrapper renames 'stages.1' to 'stages_1'; the plain
    # model's checkpoint must still load, and the stage output must equal the plain model's.
    torch.manual_seed(0)
    plain = timm.create_model("convnext_atto", pretrained=False).eval()
    path = tmp_path / "convnext.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in plain.state_dict().items()}}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = create_backbone("convnext_atto", weights=path, out_index=1)
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        expected = plain.stages[1](plain.stages[0](plain.stem(_imagenet_normalise(x))))
        assert torch.allclose(model(x), expected, atol=1e-5)
    assert model.stride == 8


# ------------------------------------------------------------------------------------------
# ViTs
# ------------------------------------------------------------------------------------------


def test_vit_patch_features_any_size() -> None:
    torch.manual_seed(0)
    model = create_backbone("vit_tiny_patch16_224")
    assert (model.stride, model.out_channels) == (16, 192)
    for height, width in [(64, 96), (32, 48)]:
        x = torch.rand(2, 3, height, width)
        with torch.no_grad():
            out = model(x)
            tokens = model.model.forward_features(_imagenet_normalise(x))
        h, w = height // 16, width // 16
        assert out.shape == (2, 192, h, w)
        # Cell (i, j) is patch token 1 + i*w + j (class token dropped), after the final norm.
        for i, j in [(0, 0), (h - 1, w - 1), (h // 2, 0)]:
            assert torch.allclose(out[:, :, i, j], tokens[:, 1 + i * w + j], atol=1e-5)
    # At the native size, the dynamic-size model computes what the fixed-size model computes.
    fixed = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0).eval()
    fixed.load_state_dict(model.model.state_dict())
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        expected = fixed.forward_features(_imagenet_normalise(x))[:, 1:]
        assert torch.allclose(model(x).flatten(2).transpose(1, 2), expected, atol=1e-5)


def test_vit_register_tokens_dropped_and_size_check() -> None:
    model = create_backbone("vit_tiny_patch16_224", reg_tokens=4)
    assert model.model.num_prefix_tokens == 5
    x = torch.rand(1, 3, 48, 80)
    with torch.no_grad():
        out = model(x)
        tokens = model.model.forward_features(_imagenet_normalise(x))
    assert out.shape == (1, 192, 3, 5)
    assert torch.allclose(out.flatten(2).transpose(1, 2), tokens[:, 5:], atol=1e-5)
    with pytest.raises(InputError, match="multiples of the patch size 16"):
        model(torch.rand(1, 3, 60, 96))


def test_vit_checkpoint_with_other_grid_is_resampled(tmp_path) -> None:
    source = timm.create_model("vit_tiny_patch16_224", img_size=128, num_classes=10)
    path = tmp_path / "dino_like.pth"
    # DINO-style: teacher, backbone. prefix, a head that the backbone does not have.
    teacher = {
        f"backbone.{k}": v for k, v in source.state_dict().items() if not k.startswith("head")
    }
    teacher["head.mlp.0.weight"] = torch.zeros(4, 192)
    args = argparse.Namespace(arch="vit_tiny")
    torch.save({"teacher": teacher, "student": {}, "args": args}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = create_backbone("vit_tiny_patch16_224", weights=path)
    assert model.model.pos_embed.shape == (1, 1 + 14 * 14, 192)
    assert torch.equal(model.model.pos_embed[:, 0], source.pos_embed[:, 0])  # class position kept
    assert torch.equal(model.model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


# ------------------------------------------------------------------------------------------
# Weights files
# ------------------------------------------------------------------------------------------


def _trained_r18_crw() -> Backbone:
    torch.manual_seed(0)
    model = create_backbone("resnet18-crw")
    _randomise_norm_stats(model, seed=3)
    return model


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_weights_round_trip(tmp_path, fmt: str) -> None:
    model = _trained_r18_crw()
    state = {f"module.{k}": v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / f"w.{fmt}"
    if fmt == "pth":
        torch.save({"model": state, "epoch": 3}, path)
    else:
        save_file(state, str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = create_backbone("resnet18-crw", weights=path)
    x = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not torch.equal(create_backbone("resnet18-crw")(x), model(x))  # the load did something


def test_crw_reference_checkpoint_layout(tmp_path) -> None:
    # The CRW reference saves {'model': CRW.state_dict(), 'args': Namespace, ...}; its encoder is
    # under 'encoder.model.', the projection head is 'selfsim_fc', and older files name some
    # convs 'convN.1.weight'.
    model = _trained_r18_crw()
    state = {f"encoder.model.{k}": v for k, v in model.state_dict().items()}
    state["encoder.model.layer1.0.conv1.1.weight"] = state.pop(
        "encoder.model.layer1.0.conv1.weight"
    )
    state["selfsim_fc.0.weight"] = torch.zeros(128, 256)
    path = tmp_path / "crw.pth"
    torch.save({"model": state, "args": argparse.Namespace(model_type="scratch"), "epoch": 1}, path)
    loaded = create_backbone("resnet18-crw")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = loaded.load_weights(path)
    assert report.ignored == ["selfsim_fc.0.weight"]
    assert not report.missing and not report.unexpected
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_missing_keys_warn(tmp_path) -> None:
    model = _trained_r18_crw()  # up to layer3
    path = tmp_path / "l3.pth"
    torch.save(model.state_dict(), path)
    with pytest.warns(UserWarning, match=r"layer4\.0\.conv1\.weight"):
        report = create_backbone("resnet18-crw", out_layer="layer4").load_weights(path)
    assert report.missing and all(k.startswith("layer4.") for k in report.missing)


def test_foreign_file_names_keys(tmp_path) -> None:
    path = tmp_path / "foreign.pth"
    torch.save({"state_dict": {"generator.net.0.weight": torch.zeros(3)}}, path)
    with pytest.raises(InputError) as info:
        create_backbone("resnet18-crw", weights=path)
    message = str(info.value)
    assert "generator.net.0.weight" in message and "conv1.weight" in message
    assert str(path) in message


def test_shape_mismatch_names_keys_and_shapes(tmp_path) -> None:
    path = tmp_path / "r50.pth"
    torch.save(create_backbone("resnet50-crw").state_dict(), path)
    with pytest.raises(InputError) as info:
        create_backbone("resnet18-crw", weights=path)
    assert "layer1.0.conv1.weight: file (64, 64, 1, 1) vs model (64, 64, 3, 3)" in str(info.value)


def test_bad_weight_files(tmp_path) -> None:
    with pytest.raises(InputError, match="not found"):
        create_backbone("resnet18-crw", weights=tmp_path / "absent.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="garbage.pth"):
        create_backbone("resnet18-crw", weights=garbage)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(1)}, "obj": _Opaque()}, unsafe)
    with pytest.raises(InputError, match="weights_only"):
        read_state_dict(unsafe)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(InputError, match="bad.safetensors"):
        read_state_dict(bad_st)


class _Opaque:
    """An arbitrary class: not allowed by weights_only loading."""


def test_load_weights_leaves_file_untouched(tmp_path) -> None:
    path = tmp_path / "w.pth"
    state = {f"module.{k}": v for k, v in _trained_r18_crw().state_dict().items()}
    torch.save({"model": state}, path)
    before = path.read_bytes()
    load_weights(create_backbone("resnet18-crw"), path)
    assert path.read_bytes() == before


# ------------------------------------------------------------------------------------------
# Names and arguments
# ------------------------------------------------------------------------------------------


def test_list_backbones_all_build() -> None:
    names = list_backbones()
    assert set(names) == {"resnet18-crw", "resnet50-crw", "pixels-lab"}
    for name in names:
        model = create_backbone(name)
        assert isinstance(model, Backbone) and not model.training


@pytest.mark.parametrize(
    "typo,suggestion",
    [
        ("resnt18-crw", "resnet18-crw"),
        ("vit_tiny_patch16_22", "vit_tiny_patch16_224"),
        ("pixel-lab", "pixels-lab"),
    ],
)
def test_unknown_name_suggests(typo: str, suggestion: str) -> None:
    with pytest.raises(InputError, match=f"unknown backbone '{typo}'") as info:
        create_backbone(typo)
    assert suggestion in str(info.value)


def test_bad_arguments() -> None:
    with pytest.raises(InputError, match="no network"):
        create_backbone("resnet18", pretrained=True)
    with pytest.raises(InputError, match="out_layer"):
        create_backbone("resnet18-crw", out_layer="layer5")
    with pytest.raises(InputError, match="does not take argument"):
        create_backbone("resnet18-crw", out_index=2)
    model = create_backbone("pixels-lab")
    with pytest.raises(InputError, match="float"):
        model((torch.rand(1, 3, 16, 16) * 255).to(torch.uint8))
    with pytest.raises(InputError, match="B×3×H×W"):
        model(torch.rand(3, 16, 16))


def test_state_dict_keys_are_torchvision_names_without_normalisation() -> None:
    keys = create_backbone("resnet18-crw").state_dict().keys()
    assert "mean" not in keys and "std" not in keys
    assert set(keys) <= set(torchvision.models.resnet18(weights=None).state_dict().keys())
