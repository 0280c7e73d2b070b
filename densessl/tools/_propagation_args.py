"""Command-line options shared by ``propagate`` and ``eval-davis``."""

from __future__ import annotations

import argparse
import dataclasses

from densessl.errors import InputError
from densessl.video.propagation import PRESETS, PropagationConfig, make_config


def add_backbone_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backbone")
    group.add_argument("--backbone", required=True,
                       help="resnet18-crw, resnet50-crw, pixels-lab, or any timm model name")
    group.add_argument("--weights", help="local weight file (.pth/.pt/.safetensors)")
    group.add_argument("--out-layer", help="ResNet stage for *-crw backbones (default layer3)")
    group.add_argument("--seed", type=int, default=0,
                       help="seed for randomly initialised backbones (default 0)")


def add_protocol_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("propagation protocol")
    group.add_argument("--protocol", default="crw", choices=sorted(PRESETS))
    group.add_argument("--topk", type=int)
    group.add_argument("--radius", type=float)
    group.add_argument("--num-recent", type=int)
    group.add_argument("--temperature", type=float)
    group.add_argument("--window", choices=("euclidean", "square", "none"))
    names = ", ".join(field.name for field in dataclasses.fields(PropagationConfig))
    group.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                       help=f"any other protocol setting ({names})")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    group.add_argument("--feature-batch", type=int, default=8,
                       help="frames per backbone batch (default 8)")


def _parse_value(field: dataclasses.Field, text: str):
    if text.lower() in ("none", "null"):
        return None
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    if "bool" in kind:
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise InputError(f"--opt {field.name}: expected true/false, got '{text}'")
    if "int" in kind and "float" not in kind and "Literal" not in kind:
        return int(text)
    if "float" in kind:
        return float(text)
    return text


def config_from_args(args: argparse.Namespace) -> PropagationConfig:
    """The protocol preset with the command line's overrides applied."""
    overrides = {}
    for name in ("topk", "radius", "num_recent", "temperature", "window"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    return protocol_config(args.protocol, args.opt, **overrides)


def protocol_config(protocol: str, options: list[str], **overrides) -> PropagationConfig:
    """The ``protocol`` preset with ``overrides`` and the ``--opt KEY=VALUE`` ``options`` applied."""
    fields = {field.name: field for field in dataclasses.fields(PropagationConfig)}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise InputError(f"--opt {item}: expected KEY=VALUE with KEY one of {sorted(fields)}")
        try:
            overrides[key] = _parse_value(fields[key], value)
        except ValueError as error:
            raise InputError(f"--opt {item}: {error}") from error
    try:
        return make_config(protocol, **overrides)
    except ValueError as error:
        raise InputError(str(error)) from error


def build_backbone(args: argparse.Namespace):
    import torch

    from densessl.models.backbones import create_backbone

    torch.manual_seed(args.seed)
    kwargs = {}
    if args.out_layer:
        kwargs["out_layer"] = args.out_layer
    return create_backbone(args.backbone, weights=args.weights, **kwargs)
