"""Typed configs: dataclasses loaded from YAML, overridden by ``a.b=value`` arguments.

Unknown keys are errors (the message lists the valid keys at that level); values are checked
against the field types (``int``, ``float``, ``bool``, ``str``, ``X | None``, ``list[X]``,
``tuple[X, ...]``, ``dict`` and nested dataclasses). ``dict`` fields are free-form.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from densessl.errors import InputError

T = TypeVar("T")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert ``value`` to type ``tp``; InputError naming ``key`` when impossible."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null", "~") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except InputError as error:
                errors.append(str(error))
        raise InputError(f"config key '{key}': {value!r} is not a valid {_type_name(tp)}")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise InputError(f"config key '{key}': expected a mapping of {sorted(_field_types(tp))}, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, Sequence) or tp is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise InputError(f"config key '{key}': expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise InputError(f"config key '{key}': expected a list, got {value!r}")
        if args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise InputError(f"config key '{key}': expected {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise InputError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise InputError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise InputError(f"config key '{key}': expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise InputError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise InputError(f"config key '{key}': expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise InputError(f"config key '{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise InputError(f"config key '{key}': expected a string, got {value!r}")
    return value


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) mapping; unknown keys → InputError."""
    data = dict(data or {})
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise InputError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(sorted(types_))}"
        )
    kwargs = {name: _coerce(value, types_[name], prefix + name) for name, value in data.items()}
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """Dataclass → plain nested dict (tuples become lists), YAML- and checkpoint-safe."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        return value

    return plain(config)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` → (["a", "b"], value parsed as YAML)."""
    if "=" not in text:
        raise InputError(f"override '{text}' is not of the form key=value (e.g. train.lr=3e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise InputError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(cls: type, data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to the nested mapping ``data`` (validated against ``cls``)."""
    data = to_dict(data)
    for text in overrides:
        path, value = parse_override(text)
        node, node_cls = data, cls
        for depth, part in enumerate(path):
            prefix = ".".join(path[:depth])
            if node_cls is not None:
                types_ = _field_types(node_cls)
                if part not in types_:
                    where = f" under {prefix}" if prefix else ""
                    raise InputError(
                        f"unknown config key '{'.'.join(path)}'; valid keys{where}: {', '.join(sorted(types_))}"
                    )
                field_tp = types_[part]
            else:
                field_tp = Any  # inside a free-form dict
            if depth == len(path) - 1:
                node[part] = value
                break
            inner = _unwrap_optional(field_tp)
            if _is_dataclass_type(inner):
                node_cls = inner
            elif inner is dict or typing.get_origin(inner) is dict or node_cls is None:
                node_cls = None
            else:
                raise InputError(f"config key '{prefix + '.' if prefix else ''}{part}' has no sub-keys")
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
    return data


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults of ``cls``, updated from a YAML file, then from ``a.b=value`` overrides."""
    data: dict[str, Any] = to_dict(cls())
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError("config file does not exist", path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise InputError(f"not valid YAML: {error}", path) from None
        if not isinstance(loaded, dict):
            raise InputError("config file must hold a mapping of sections", path)
        try:
            from_dict(cls, loaded)  # validates keys and types, naming the file on error
        except InputError as error:
            raise InputError(str(error), path) from None
        data = _merge(data, loaded)
    data = apply_overrides(cls, data, overrides)
    return from_dict(cls, data)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def save_config(config: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
