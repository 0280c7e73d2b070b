"""Backbones for dense features: one factory, one interface.

Every backbone maps images ``B×3×H×W`` (float RGB in [0, 1]) to a feature map ``B×C×h×w`` with
``features(x)`` (also its ``forward``), and exposes ``stride`` (input pixels per feature cell)
and ``out_channels`` (``C``). ImageNet mean/std normalisation happens inside the backbone, so
callers always pass [0, 1] images; the raw-pixel baseline does its own colour conversion.

Kinds (see :func:`create_backbone`):

- ``resnet18-crw`` / ``resnet50-crw``: torchvision ResNets modified as in the contrastive random
  walk (CRW) reference: layer3/layer4 strides 1 (output stride 8), reflect padding, output of
  ``out_layer`` (default ``layer3``; later layers are dropped).
- any timm model by name: CNNs through ``features_only`` (one stage, ``out_index``); ViTs
  (models with ``patch_embed`` and prefix tokens) through their patch tokens after the final
  norm, any input size that is a multiple of the patch size.
- ``pixels-lab``: the colour baseline, CIE Lab averaged over 8×8 blocks.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from densessl.errors import InputError
from densessl.models.weights import LoadReport, load_weights

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """Dense feature extractor: ``features(x B×3×H×W in [0,1]) -> B×C×h×w``.

    Attributes:
        name: the name it was created with.
        stride: input pixels per feature cell (``h ≈ H / stride``).
        out_channels: ``C``.
    """

    def __init__(
        self,
        name: str,
        stride: int,
        out_channels: int,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.name = name
        self.stride = int(stride)
        self.out_channels = int(out_channels)
        self.normalize = mean is not None
        if self.normalize:
            if std is None or len(mean) != 3 or len(std) != 3:
                raise InputError(f"backbone '{name}': mean and std need 3 values each")
            if any(s <= 0 for s in std):
                raise InputError(
                    f"backbone '{name}': std values must be positive, got {tuple(std)}"
                )
        # Not persistent: they are configuration, and keeping them out of the state dict keeps
        # checkpoints interchangeable with the plain architectures'.
        mean_values = mean if mean is not None else (0.0, 0.0, 0.0)
        std_values = std if std is not None else (1.0, 1.0, 1.0)
        self.register_buffer("mean", torch.tensor(mean_values).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std_values).view(1, 3, 1, 1), persistent=False)

    def features(self, x: Tensor) -> Tensor:
        """Dense features of ``x`` (``B×3×H×W`` float in [0, 1]) -> ``B×C×h×w``."""
        self._check_input(x)
        if self.normalize:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self._features(x)

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`features`."""
        return self.features(x)

    def _features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(
                f"backbone '{self.name}' expects images B×3×H×W, got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise InputError(
                f"backbone '{self.name}' expects float images in [0, 1], got dtype {x.dtype}"
            )

    # -- weights ---------------------------------------------------------------------------
    def weight_target(self) -> nn.Module:
        """The module whose state dict matches the architecture's usual checkpoints."""
        return self

    def rename_weight_key(self, key: str) -> str:
        """Map a checkpoint key (prefixes stripped) to this model's name for it."""
        return key

    def adapt_weights(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Fix tensors of a matched state dict (model key names) before loading."""
        return state

    def load_weights(self, path: str | os.PathLike) -> LoadReport:
        """Load a local ``.pth``/``.pt``/``.safetensors`` file (see :mod:`.weights`)."""
        return load_weights(
            self.weight_target(), path, rename=self.rename_weight_key, adapt=self.adapt_weights
        )

    def extra_repr(self) -> str:
        return f"name={self.name!r}, stride={self.stride}, out_channels={self.out_channels}"


# ---------------------------------------------------------------------------------------------
# CRW ResNets
# ---------------------------------------------------------------------------------------------

CRW_LAYERS: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")
_CRW_ARCHS = {"resnet18-crw": "resnet18", "resnet50-crw": "resnet50"}
# Older CRW checkpoints wrapped some convs as Sequential(pad, conv): 'conv1.1.weight'.
_CRW_PADDED_CONV = re.compile(r"(^|\.)(conv\d+)\.1\.weight$")


class CRWResNet(Backbone):
    """torchvision ResNet as modified by the CRW reference, features of ``out_layer``.

    Changes from torchvision: every conv of layer3 and layer4 (3×3 and downsample) has stride 1,
    so the output stride is 8 after layer2 (4 after layer1); convs with padding pad by reflection;
    ``avgpool``, ``fc`` and the layers after ``out_layer`` are dropped. No dilation is added
    (as in the reference). State-dict keys are torchvision's (``conv1.weight``,
    ``layer1.0.conv1.weight``, ...), so ImageNet and CRW checkpoints load directly.

    Output: ``B×C×ceil(H/8)×ceil(W/8)`` (``ceil(H/4)`` for layer1); ``C`` = 64/128/256/512 for
    layer1..4 of ResNet-18, four times that for ResNet-50.
    """

    def __init__(
        self,
        name: str = "resnet18-crw",
        out_layer: str = "layer3",
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
    ) -> None:
        import torchvision

        if out_layer not in CRW_LAYERS:
            raise InputError(
                f"backbone '{name}': out_layer must be one of {', '.join(CRW_LAYERS)}, "
                f"got {out_layer!r}"
            )
        net = getattr(torchvision.models, _CRW_ARCHS[name])(weights=None)
        expansion = type(net.layer1[0]).expansion
        depth = CRW_LAYERS.index(out_layer)
        super().__init__(
            name,
            stride=4 if depth == 0 else 8,
            out_channels=64 * 2**depth * expansion,
            mean=mean,
            std=std,
        )
        for layer in (net.layer3, net.layer4):
            for module in layer.modules():
                if isinstance(module, nn.Conv2d):
                    module.stride = (1, 1)
        for module in net.modules():
            # 1×1 convs have no padding, so their padding mode changes nothing.
            if isinstance(module, nn.Conv2d) and any(p > 0 for p in module.padding):
                module.padding_mode = "reflect"
        self.out_layer = out_layer
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layers = list(CRW_LAYERS[: depth + 1])
        for layer_name in self.layers:
            setattr(self, layer_name, getattr(net, layer_name))

    def _features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for layer_name in self.layers:
            x = getattr(self, layer_name)(x)
        return x

    def rename_weight_key(self, key: str) -> str:
        return _CRW_PADDED_CONV.sub(r"\1\2.weight", key)


# ---------------------------------------------------------------------------------------------
# Colour baseline
# ---------------------------------------------------------------------------------------------


class PixelsLab(Backbone):
    """CIE Lab colour averaged over ``pool``×``pool`` blocks: ``B×3×ceil(H/pool)×ceil(W/pool)``.

    Per pixel: sRGB -> Lab (D65, ``kornia.color.rgb_to_lab``); then block means (blocks at the
    right/bottom border average the pixels they cover, so the grid matches the CRW ResNets').
    Channels are scaled to about [-1, 1]: ``(L - 50) / 50`` if ``center`` else ``L / 100``, then
    ``a / 127`` and ``b / 127``.

    Why centre L: downstream affinities are cosine similarities. Uncentred, every vector has a
    large positive L component, so all colours point into one narrow cone and lightness
    differences become small angles; centred on mid-grey, light and dark regions point apart.
    The price: colours near mid-grey (L≈50, a≈b≈0) have small norms and noisy directions.
    """

    def __init__(self, name: str = "pixels-lab", pool: int = 8, center: bool = True) -> None:
        if int(pool) < 1:
            raise InputError(f"backbone '{name}': pool must be a positive integer, got {pool}")
        super().__init__(name, stride=int(pool), out_channels=3, mean=None, std=None)
        self.center = bool(center)

    def _features(self, x: Tensor) -> Tensor:
        from kornia.color import rgb_to_lab

        lab = rgb_to_lab(x.clamp(0.0, 1.0))
        lab = F.avg_pool2d(lab, self.stride, self.stride, ceil_mode=True)
        offset = lab.new_tensor([50.0 if self.center else 0.0, 0.0, 0.0]).view(1, 3, 1, 1)
        scale = lab.new_tensor([50.0 if self.center else 100.0, 127.0, 127.0]).view(1, 3, 1, 1)
        return (lab - offset) / scale

    def load_weights(self, path: str | os.PathLike) -> LoadReport:
        raise InputError(f"backbone '{self.name}' has no weights to load", path=path)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", center={self.center}"


# ---------------------------------------------------------------------------------------------
# timm models
# ---------------------------------------------------------------------------------------------


def _timm_probe(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """Build the plain timm model without allocating weights, to inspect its structure."""
    import timm

    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as error:
        raise InputError(f"backbone '{name}': {error}") from error
    except Exception:  # some models cannot be built on the meta device; build them for real
        try:
            return timm.create_model(name, pretrained=False, **kwargs)
        except TypeError as error:
            raise InputError(f"backbone '{name}': {error}") from error


def _is_vit(model: nn.Module) -> bool:
    return hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")


class TimmCNN(Backbone):
    """One feature stage of a timm model (``features_only=True``).

    ``out_index`` picks the stage in ``model.feature_info`` (default -1: the last one); stride
    and channels come from timm's feature info. Extra keyword arguments go to
    ``timm.create_model`` (for example ``output_stride=8`` for a dilated ResNet).
    """

    def __init__(
        self,
        name: str,
        out_index: int = -1,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        probe: nn.Module | None = None,
        **timm_kwargs: Any,
    ) -> None:
        import timm

        probe = probe if probe is not None else _timm_probe(name, timm_kwargs)
        stages = getattr(probe, "feature_info", None)
        if isinstance(stages, list) and stages:
            if not -len(stages) <= out_index < len(stages):
                raise InputError(
                    f"backbone '{name}': out_index={out_index} is out of range, the model has "
                    f"{len(stages)} feature stages (0..{len(stages) - 1}, or negative from the end)"
                )
            out_index %= len(stages)
        try:
            model = timm.create_model(
                name, pretrained=False, features_only=True, out_indices=(out_index,), **timm_kwargs
            )
        except TypeError as error:
            raise InputError(f"backbone '{name}': {error}") from error
        except (RuntimeError, AssertionError, IndexError) as error:
            raise InputError(
                f"backbone '{name}' cannot give feature maps via timm features_only "
                f"(out_index={out_index}): {error}"
            ) from error
        info = model.feature_info
        super().__init__(
            name, stride=info.reduction()[-1], out_channels=info.channels()[-1], mean=mean, std=std
        )
        self.out_index = out_index
        self.model = model
        fmt = getattr(model, "output_fmt", "NCHW")
        self.channels_last_output = str(getattr(fmt, "value", fmt)) == "NHWC"
        self._aliases = _feature_key_aliases(probe.state_dict().keys(), model.state_dict().keys())

    def _features(self, x: Tensor) -> Tensor:
        out = self.model(x)[-1]
        return out.permute(0, 3, 1, 2) if self.channels_last_output else out

    def weight_target(self) -> nn.Module:
        return self.model

    def rename_weight_key(self, key: str) -> str:
        return self._aliases.get(key, key)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", out_index={self.out_index}"


def _feature_key_aliases(plain_keys: Iterable[str], feature_keys: Iterable[str]) -> dict[str, str]:
    """Plain-model key -> features-only key, where timm renamed modules when wrapping.

    timm's feature wrappers flatten sequential children (``stages.0`` becomes ``stages_0``) or
    nest the model (``model.``); checkpoints use the plain names.
    """
    plain = set(plain_keys)
    aliases: dict[str, str] = {}
    for key in feature_keys:
        if key in plain:
            continue
        top, _, rest = key.partition(".")
        candidates = [key[len("model."):]] if key.startswith("model.") else []
        candidates += [
            f"{top[:i]}.{top[i + 1:]}" + (f".{rest}" if rest else "")
            for i, char in enumerate(top)
            if char == "_"
        ]
        found = next((c for c in candidates if c in plain), None)
        if found is not None:
            aliases[found] = key
    return aliases


class TimmViT(Backbone):
    """Patch-token features of a timm vision transformer: ``B×C×(H/p)×(W/p)``.

    Tokens of the last block after the final norm (``forward_features``), class/register
    (prefix) tokens dropped, reshaped to the patch grid; stride = patch size ``p``. Built with
    ``dynamic_img_size=True`` so the position embedding is interpolated to any input size (a
    multiple of ``p``); models without that option accept only their native ``img_size``.
    A checkpoint whose position embedding has another grid is resampled when loaded.
    """

    def __init__(
        self,
        name: str,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
        **timm_kwargs: Any,
    ) -> None:
        import timm

        timm_kwargs = {"num_classes": 0, **timm_kwargs}
        try:
            model = timm.create_model(name, pretrained=False, dynamic_img_size=True, **timm_kwargs)
            fixed_size = None
        except TypeError as error:
            if "dynamic_img_size" not in str(error):
                raise InputError(f"backbone '{name}': {error}") from error
            try:
                model = timm.create_model(name, pretrained=False, **timm_kwargs)
            except TypeError as error2:
                raise InputError(f"backbone '{name}': {error2}") from error2
            fixed_size = tuple(int(s) for s in model.patch_embed.img_size)
        patch = tuple(int(p) for p in model.patch_embed.patch_size)
        super().__init__(name, stride=patch[0], out_channels=model.num_features, mean=mean, std=std)
        self.model = model
        self.patch_size: tuple[int, int] = (patch[0], patch[1])
        self.fixed_size = fixed_size

    def _features(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        ph, pw = self.patch_size
        if height % ph or width % pw:
            raise InputError(
                f"backbone '{self.name}': input height and width must be multiples of the patch "
                f"size {ph}, got {height}×{width} (resize or pad the frames first)"
            )
        if self.fixed_size is not None and (height, width) != self.fixed_size:
            raise InputError(
                f"backbone '{self.name}' only accepts {self.fixed_size[0]}×{self.fixed_size[1]} "
                f"inputs (no dynamic image size in timm), got {height}×{width}"
            )
        tokens = self.model.forward_features(x)
        tokens = tokens[:, self.model.num_prefix_tokens :]
        h, w = height // ph, width // pw
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def weight_target(self) -> nn.Module:
        return self.model

    def adapt_weights(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        model_pos = getattr(self.model, "pos_embed", None)
        file_pos = state.get("pos_embed")
        if model_pos is None or file_pos is None or file_pos.shape == model_pos.shape:
            return state
        from timm.layers import resample_abs_pos_embed

        prefix = 0 if getattr(self.model, "no_embed_class", False) else self.model.num_prefix_tokens
        old_cells = file_pos.shape[1] - prefix
        side = math.isqrt(old_cells)
        if side * side != old_cells or file_pos.shape[-1] != model_pos.shape[-1]:
            return state  # not a square grid: left for the shape check to report
        state = dict(state)
        state["pos_embed"] = resample_abs_pos_embed(
            file_pos.float(),
            new_size=list(self.model.patch_embed.grid_size),
            old_size=[side, side],
            num_prefix_tokens=prefix,
        ).to(file_pos.dtype)
        return state

    def extra_repr(self) -> str:
        return super().extra_repr() + f", patch_size={self.patch_size}"


def _create_timm(name: str, **kwargs: Any) -> Backbone:
    out_index = kwargs.pop("out_index", None)
    out_indices = kwargs.pop("out_indices", None)
    if out_indices is not None:
        indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        if len(indices) != 1 or (out_index is not None and out_index != indices[0]):
            raise InputError(
                f"backbone '{name}': a backbone gives one feature map; pass a single out_index, "
                f"got out_indices={out_indices!r}"
            )
        out_index = indices[0]
    norm = {k: kwargs.pop(k) for k in ("mean", "std") if k in kwargs}
    probe = _timm_probe(name, kwargs)
    if _is_vit(probe):
        if out_index is not None:
            raise InputError(
                f"backbone '{name}' is a ViT: its features are the last block's patch tokens, "
                "out_index does not apply"
            )
        del probe
        return TimmViT(name, **norm, **kwargs)
    index = -1 if out_index is None else int(out_index)
    return TimmCNN(name, out_index=index, probe=probe, **norm, **kwargs)


# ---------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------


def _builder(cls: Callable[..., Backbone], accepted: tuple[str, ...]) -> Callable[..., Backbone]:
    def build(name: str, **kwargs: Any) -> Backbone:
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise InputError(
                f"backbone '{name}' does not take argument(s) {', '.join(unknown)}; "
                f"it accepts: {', '.join(accepted)}"
            )
        return cls(name, **kwargs)

    return build


_BUILDERS: dict[str, Callable[..., Backbone]] = {
    "resnet18-crw": _builder(CRWResNet, ("out_layer", "mean", "std")),
    "resnet50-crw": _builder(CRWResNet, ("out_layer", "mean", "std")),
    "pixels-lab": _builder(PixelsLab, ("pool", "center")),
}


def list_backbones() -> list[str]:
    """The project's own backbone names (any ``timm.list_models()`` name is accepted too)."""
    return sorted(_BUILDERS)


def _unknown_name(name: str) -> InputError:
    import timm

    known = list_backbones() + timm.list_models()
    close = difflib.get_close_matches(name, known, n=6, cutoff=0.5)
    hint = f"closest known names: {', '.join(close)}" if close else "no similar name is known"
    return InputError(
        f"unknown backbone '{name}'; {hint} (our backbones: {', '.join(list_backbones())}; "
        "any timm.list_models() name also works)"
    )


def create_backbone(
    name: str,
    weights: str | os.PathLike | None = None,
    *,
    pretrained: bool = False,
    **kwargs: Any,
) -> Backbone:
    """Create a dense backbone by name, optionally loading a local weights file.

    Args:
        name: one of :func:`list_backbones` or any timm model name (``timm.list_models()``).
        weights: local ``.pth``/``.pt``/``.safetensors`` file (plain or nested state dict,
            wrapper prefixes stripped; see :mod:`densessl.models.weights`).
        pretrained: only meaningful together with ``weights``: nothing is downloaded, so
            ``pretrained=True`` without a file is an error that says how to pass one.
        **kwargs: per kind: ``out_layer`` (CRW ResNets: layer1..layer4, default layer3);
            ``out_index`` (timm CNNs: feature stage, default -1 = last); ``pool``, ``center``
            (pixels-lab); ``mean``/``std`` (input normalisation, default ImageNet; e.g. 0.5s
            for checkpoints trained that way); other keywords go to ``timm.create_model``.

    Returns:
        The backbone in eval mode (call ``.train()`` to train it).

    Raises:
        InputError: unknown name (with the closest names), bad arguments, bad weights file.
    """
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"backbone name must be a non-empty string, got {name!r}")
    name = name.strip()
    if pretrained and weights is None:
        raise InputError(
            f"backbone '{name}': pretrained weights cannot be downloaded (no network access); "
            "download the weights file elsewhere and pass it as a local file: "
            "create_backbone(name, weights=PATH) or --weights PATH on the command line"
        )
    if name in _BUILDERS:
        backbone = _BUILDERS[name](name, **kwargs)
    else:
        import timm

        if not timm.is_model(name):
            raise _unknown_name(name)
        backbone = _create_timm(name, **kwargs)
    if weights is not None:
        backbone.load_weights(weights)
    return backbone.eval()
