"""Configuration files: every option declared once, validated at load, errors naming the file and key.

A configuration is a tree of frozen dataclasses.  Each field carries its type, its default and a help text in
``field(metadata={"help": ...})``; :func:`load` reads a YAML file into such a tree and refuses unknown keys,
missing required keys and values of the wrong type with a :class:`~bridge.errors.ConfigError` whose message
names the file and the dotted key (``central.yaml: globalconf.expiry_seconds: expected an integer``).
:func:`dump` writes a tree back as YAML with the help texts as comments, which is how ``init`` commands create
configuration files an operator can read.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bridge.errors import ConfigError, KorpuError

__all__ = ["build", "dump", "from_mapping", "load", "option"]

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, *, help: str) -> Any:
    """Declare a configuration option with its default and help text."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple or a frozen dataclass for mutable defaults")
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        value = default
        return dataclasses.field(default_factory=lambda: value, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def load(path: Path, cls: type[T]) -> T:
    """Read the YAML file at ``path`` into a ``cls`` tree, validating every key."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if data is None:
        data = {}
    return from_mapping(data, cls, source=str(path))


def from_mapping(data: object, cls: type[T], *, source: str, prefix: str = "") -> T:
    """Build a ``cls`` tree from parsed YAML/JSON data; ``source`` and ``prefix`` name the place in errors."""
    where = f"{source}: {prefix}" if prefix else f"{source}: "
    if not isinstance(data, dict):
        raise ConfigError(f"{where}expected a mapping of options")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise ConfigError(f"{where}unknown option {prefix}{unknown[0]!r} (known: {', '.join(sorted(fields))})")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: {key}: required option is missing")
            continue
        values[name] = _coerce(data[name], hints[name], source=source, key=key)
    try:
        return cls(**values)
    except (ValueError, TypeError, KorpuError) as exc:
        # __post_init__ checks raise ValueError (or an identifier error) with a message naming the field.
        text = exc.message if isinstance(exc, KorpuError) else str(exc)
        section = f"{source}: {prefix.rstrip('.')}" if prefix else source
        raise ConfigError(f"{section}: {text}") from None


def build(cls: type[T], source: str, **values: Any) -> T:
    """Construct a configuration object from already-typed values (command-line options, say).

    Validation errors raised by the dataclass (``ValueError``, identifier errors) become a
    :class:`ConfigError` naming ``source``, so a bad option is a clear fault rather than a traceback.
    """
    try:
        return cls(**values)
    except (ValueError, TypeError, KorpuError) as exc:
        text = exc.message if isinstance(exc, KorpuError) else str(exc)
        raise ConfigError(f"{source}: {text}") from None


def _coerce(value: Any, hint: Any, *, source: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _coerce(value, non_none[0], source=source, key=key)
    if dataclasses.is_dataclass(hint):
        return from_mapping(value, typing.cast(type, hint), source=source, prefix=f"{key}.")
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ConfigError(f"{source}: {key}: expected a mapping of strings to strings")
        return dict(value)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key}: expected a list")
        item = args[0]
        return tuple(_coerce(v, item, source=source, key=f"{key}[{i}]") for i, v in enumerate(value))
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{source}: {key}: expected one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key}: expected true or false")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{source}: {key}: expected an integer")
        return value
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{source}: {key}: expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key}: expected a string")
        return value
    if hint is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key}: expected a path")
        return Path(value)
    raise ConfigError(f"{source}: {key}: unsupported option type {hint!r}")  # a declaration bug, not user input


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def dump(config: object, header: str = "") -> str:
    """Render a configuration tree as commented YAML (help texts as comments above each key)."""
    lines = [f"# {line}" for line in header.splitlines()]

    def emit(obj: object, indent: int) -> None:
        for f in dataclasses.fields(obj):  # type: ignore[arg-type]
            value = getattr(obj, f.name)
            pad = "  " * indent
            help_text = f.metadata.get("help")
            if help_text:
                lines.append(f"{pad}# {help_text}")
            if dataclasses.is_dataclass(value):
                lines.append(f"{pad}{f.name}:")
                emit(value, indent + 1)
            else:
                rendered = yaml.safe_dump({f.name: _to_plain(value)}, default_flow_style=True, allow_unicode=True)
                lines.append(pad + rendered.strip().removeprefix("{").removesuffix("}"))

    emit(config, 0)
    return "\n".join(lines) + "\n"
