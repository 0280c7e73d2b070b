"""Loading model weights from a local file.

No weights are downloaded: every pretrained model is loaded from a file the user gives
(``.pth`` / ``.pt`` through ``torch.load(weights_only=True)``, or ``.safetensors``).

Checkpoints come in many wrappings. :func:`read_state_dict` unwraps the common ones (a plain
state dict, or one nested under ``model`` / ``state_dict`` / ``teacher`` / ``student``) and
:func:`load_weights` matches the file's keys to the model's, stripping the wrapper prefixes that
training code adds (``module.`` from DataParallel/DDP, ``encoder.``, ``backbone.``, ``model.``,
``encoder_q.`` from MoCo) only where stripping makes a key match.
"""

from __future__ import annotations

import argparse
import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from densessl.errors import InputError

#: Wrapper keys under which checkpoints nest the state dict, in order of preference (the DINO
#: teacher is the model that is evaluated, so it wins over the student).
NESTING_KEYS: tuple[str, ...] = ("state_dict", "model", "teacher", "student")

#: Key prefixes added by training wrappers; stripped (repeatedly) when that makes a key match.
STRIP_PREFIXES: tuple[str, ...] = ("module.", "encoder.", "backbone.", "model.", "encoder_q.")

# Per-batch counters: absent from some older checkpoints and harmless to leave at their default.
_UNTRACKED_SUFFIXES: tuple[str, ...] = ("num_batches_tracked",)

_LISTED = 8  # how many keys an error or warning message lists


@dataclass
class LoadReport:
    """What :func:`load_weights` did with a file's keys (model key names)."""

    path: str
    loaded: list[str] = field(default_factory=list)
    """Model keys filled from the file."""
    missing: list[str] = field(default_factory=list)
    """Model keys the file did not provide (left at their initial values; a warning is issued)."""
    unexpected: list[str] = field(default_factory=list)
    """File keys inside layers the model has, matching no key of it (a warning is issued)."""
    ignored: list[str] = field(default_factory=list)
    """File keys of layers the model does not have (a classifier's head, a training-only
    projection, layers after the output layer): skipped silently."""


def _head(keys: Iterable[str], limit: int = _LISTED) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _torch_load(path: Path) -> object:
    # CRW, DINO and MoCo checkpoints store their argparse.Namespace next to the weights: allowing
    # that one plain-data class keeps weights_only loading usable for them.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error).strip()
        first_line = text.splitlines()[0] if text else type(error).__name__
        raise InputError(
            "cannot be loaded safely with torch.load(weights_only=True) because it stores Python "
            f"objects besides tensors ({first_line}); re-save just the weights, e.g. "
            "torch.save(model.state_dict(), 'weights.pth')",
            path=path,
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise InputError(f"not a readable PyTorch checkpoint ({error})", path=path) from error


def _safetensors_load(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(f"not a readable safetensors file ({error})", path=path) from error


def _unwrap(obj: object, path: Path) -> dict[str, Tensor]:
    """Descend through ``model`` / ``state_dict`` / ``teacher`` / ``student`` nesting."""
    trail: list[str] = []
    while isinstance(obj, Mapping):
        if any(isinstance(value, Tensor) for value in obj.values()):
            break
        inner = next((k for k in NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise InputError(
                "holds no state dict: expected tensors at the top level or under one of "
                f"{', '.join(NESTING_KEYS)}; found keys {_head(map(str, obj.keys()))}",
                path=path,
            )
        trail.append(inner)
        obj = obj[inner]
    if not isinstance(obj, Mapping):
        raise InputError(
            f"holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors)",
            path=path,
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        where = "['" + "']['".join(trail) + "']" if trail else "the top level"
        raise InputError(f"holds no tensors at {where}", path=path)
    return tensors


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict (name -> CPU tensor) from a ``.pth``/``.pt`` or ``.safetensors`` file.

    Nesting under ``state_dict`` / ``model`` / ``teacher`` / ``student`` is unwrapped; key
    prefixes are left as they are (see :func:`load_weights`). Non-tensor entries are dropped.
    Raises :class:`InputError` for a missing or unreadable file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("weights file not found", path=path)
    if not path.is_file():
        raise InputError("weights path is not a file", path=path)
    if path.suffix.lower() == ".safetensors":
        return _safetensors_load(path)
    return _unwrap(_torch_load(path), path)


def _variants(key: str, prefixes: tuple[str, ...]) -> list[str]:
    """``key`` and the keys obtained by stripping wrapper prefixes off its front, least first."""
    out = [key]
    while True:
        stripped = next((out[-1][len(p):] for p in prefixes if out[-1].startswith(p)), None)
        if not stripped:
            return out
        out.append(stripped)


def match_keys(
    file_keys: Iterable[str],
    model_keys: Iterable[str],
    rename: Callable[[str], str] | None = None,
    prefixes: tuple[str, ...] = STRIP_PREFIXES,
) -> tuple[dict[str, str], list[str]]:
    """Map file keys to model keys.

    For each file key the least-stripped variant (see :data:`STRIP_PREFIXES`) that, after
    ``rename``, names a model key is used; the first file key to claim a model key keeps it.

    Returns:
        ``(mapping file key -> model key, unmatched file keys)``.
    """
    rename = rename or (lambda k: k)
    wanted = set(model_keys)
    mapping: dict[str, str] = {}
    claimed: set[str] = set()
    unmatched: list[str] = []
    # Least-stripped keys first, so that an exact match wins over a stripped one.
    ordered = sorted(file_keys, key=lambda k: len(_variants(k, prefixes)))
    for key in ordered:
        candidates = (rename(v) for v in _variants(key, prefixes))
        target = next((c for c in candidates if c in wanted and c not in claimed), None)
        if target is None:
            unmatched.append(key)
        else:
            mapping[key] = target
            claimed.add(target)
    return mapping, unmatched


def load_weights(
    module: nn.Module,
    path: str | os.PathLike,
    *,
    rename: Callable[[str], str] | None = None,
    adapt: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
    prefixes: tuple[str, ...] = STRIP_PREFIXES,
) -> LoadReport:
    """Load weights from a local file into ``module`` (non-strict, with a report).

    Args:
        module: the model to fill.
        path: ``.pth`` / ``.pt`` / ``.safetensors`` file (see :func:`read_state_dict`).
        rename: maps a (prefix-stripped) file key to the model's name for it, for checkpoints of
            the same layers under other names.
        adapt: fixes tensors of the matched state dict (model key names) before loading, e.g.
            resampling a ViT's position embedding to the model's grid.
        prefixes: wrapper prefixes that may be stripped off file keys.

    File keys whose top-level module holds no state in ``module`` (a classifier's ``fc``/``head``,
    a training-only projection, dropped layers) are ignored silently; other file keys that match
    nothing, and model keys the file does not provide, are reported with a warning.

    Raises:
        InputError: missing/unreadable file; no key of the model matched (lists some keys of
            each side); shapes differ (names the keys and both shapes).
    """
    state = read_state_dict(path)
    path_str = os.fspath(path)
    model_state = module.state_dict()
    mapping, unmatched = match_keys(state.keys(), model_state.keys(), rename, prefixes)
    if not mapping:
        raise InputError(
            f"none of the model's keys were found in the file; file keys: {_head(state)}; "
            f"expected keys such as: {_head(model_state)}",
            path=path,
        )

    matched = {target: state[key] for key, target in mapping.items()}
    if adapt is not None:
        matched = adapt(matched)
    bad_shapes = [
        f"{key}: file {tuple(value.shape)} vs model {tuple(model_state[key].shape)}"
        for key, value in matched.items()
        if tuple(value.shape) != tuple(model_state[key].shape)
    ]
    if bad_shapes:
        raise InputError(
            "shapes do not match the model (another architecture or configuration?): "
            + "; ".join(bad_shapes[:_LISTED])
            + (f"; ... ({len(bad_shapes)} in all)" if len(bad_shapes) > _LISTED else ""),
            path=path,
        )

    model_tops = {key.split(".", 1)[0] for key in model_state}
    report = LoadReport(path=path_str, loaded=sorted(matched))
    for key in unmatched:
        top = _variants(key, prefixes)[-1].split(".", 1)[0]
        (report.unexpected if top in model_tops else report.ignored).append(key)
    report.missing = [
        key for key in model_state if key not in matched and not key.endswith(_UNTRACKED_SUFFIXES)
    ]
    if report.missing:
        warnings.warn(
            f"{path_str}: {len(report.missing)} of the model's weights are not in the file and "
            f"keep their initial values: {_head(report.missing)}",
            stacklevel=2,
        )
    if report.unexpected:
        warnings.warn(
            f"{path_str}: {len(report.unexpected)} keys of the file match no weight of the model "
            f"and were skipped: {_head(report.unexpected)}",
            stacklevel=2,
        )
    module.load_state_dict(matched, strict=False)
    return report
