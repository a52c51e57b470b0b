"""Typed configs: dataclasses are the single source of truth; YAML files and `key=value` overrides fill them.

Precedence is defaults < YAML < overrides. Every user mistake (unknown key, wrong type, value outside
a `Literal`'s choices) raises `ConfigError` (a `ValueError`) that names the dotted key, where it came
from, and the valid choices. Lists of dataclasses (e.g. training phases) are addressed by index:
`phases.1.steps=400`.

Each field documents itself with `help=` metadata (see `doc`), which `describe` prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from .errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A user-facing configuration mistake; the message names the key and where it came from."""


def doc(default: Any = dataclasses.MISSING, help: str = "", default_factory: Any = dataclasses.MISSING):
    """A dataclass field with a help text (shown by `describe` and `--help-config`)."""
    kwargs: dict[str, Any] = {"metadata": {"help": help}}
    if default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = default_factory
    elif default is not dataclasses.MISSING:
        kwargs["default"] = default
    return dataclasses.field(**kwargs)


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe_type(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join(_describe_type(a) for a in get_args(annotation))
    if origin is list:
        (inner,) = get_args(annotation)
        return f"list[{_describe_type(inner)}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Converts `value` (from YAML or a command-line string) to `annotation`, or raises ConfigError."""

    def fail(why: str) -> ConfigError:
        return ConfigError(f"{source}: key '{key}': {why} (expected {_describe_type(annotation)})")

    origin = get_origin(annotation)
    if annotation is Any:
        return value
    if origin is Literal:
        choices = get_args(annotation)
        if value in choices:
            return value
        # A command-line string "3" for Literal[3, 4] style choices.
        for choice in choices:
            if isinstance(value, str) and not isinstance(choice, str) and str(choice) == value:
                return choice
        raise ConfigError(
            f"{source}: key '{key}': {value!r} is not one of the valid choices: "
            + ", ".join(repr(c) for c in choices)
        )
    if origin in (Union, types.UnionType):
        options = get_args(annotation)
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            if type(None) in options:
                return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, source)
            except ConfigError as error:
                errors.append(str(error))
        raise fail(f"{value!r} matches none of the allowed types")
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise fail(f"expected a mapping, got {value!r}")
        return build_from_dict(annotation, value, key, source)
    if origin is list:
        (inner,) = get_args(annotation)
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if value is None:
            value = []
        if not isinstance(value, (list, tuple)):
            raise fail(f"expected a list, got {value!r}")
        return [_coerce(item, inner, f"{key}.{i}", source) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise fail(f"expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise fail(f"{value!r} is not a boolean")
    if annotation is int:
        if isinstance(value, bool):
            raise fail(f"{value!r} is not an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                parsed = float(value.replace("_", ""))
            except ValueError:
                raise fail(f"{value!r} is not an integer") from None
            if parsed.is_integer():
                return int(parsed)
        raise fail(f"{value!r} is not an integer")
    if annotation is float:
        if isinstance(value, bool):
            raise fail(f"{value!r} is not a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise fail(f"{value!r} is not a number") from None
        raise fail(f"{value!r} is not a number")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise fail(f"{value!r} is not a string")
    raise fail(f"unsupported annotation {annotation!r}")


def build_from_dict(cls: type[T], values: dict[str, Any], prefix: str, source: str) -> T:
    """`cls` from a plain mapping, every key checked and every value coerced; errors name
    `prefix`.key and `source` (e.g. the file the mapping was read from)."""
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f"'{prefix}.{unknown[0]}'" if prefix else f"'{unknown[0]}'"
        raise ConfigError(
            f"{source}: unknown key {where}; valid keys{' under ' + repr(prefix) if prefix else ''}: "
            + ", ".join(sorted(fields))
        )
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key, source)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as error:  # a required field without a value
        raise ConfigError(f"{source}: {prefix or cls.__name__}: {error}") from None


def to_dict(config: Any) -> Any:
    """The plain (YAML/JSON-serialisable) form of a config."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.0.c=value` -> (["a", "b", "0", "c"], value parsed as YAML scalar or list)."""
    if "=" not in text:
        raise ConfigError(f"command line: override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"command line: override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    # Keep strings that YAML would turn into dates etc. as given.
    if not isinstance(value, (str, int, float, bool, list, dict, type(None))):
        value = raw
    return key.split("."), value


def _set_path(tree: dict[str, Any], path: list[str], value: Any, cls: type, text: str) -> None:
    """Sets `value` at `path` in the plain dict `tree`, validating keys against `cls` as it descends."""
    node: Any = tree
    annotation: Any = cls
    for depth, part in enumerate(path):
        key = ".".join(path[: depth + 1])
        last = depth == len(path) - 1
        origin = get_origin(annotation)
        if origin in (Union, types.UnionType):
            inner = [a for a in get_args(annotation) if a is not type(None)]
            annotation = inner[0] if len(inner) == 1 else annotation
            origin = get_origin(annotation)
        if origin is list:
            if not part.isdigit():
                raise ConfigError(f"command line: override {text!r}: '{key}' must be a list index")
            index = int(part)
            if index >= len(node):
                raise ConfigError(
                    f"command line: override {text!r}: index {index} out of range for "
                    f"'{'.'.join(path[:depth])}' ({len(node)} entries)"
                )
            (annotation,) = get_args(annotation)
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if not dataclasses.is_dataclass(annotation):
            raise ConfigError(f"command line: override {text!r}: '{'.'.join(path[:depth])}' has no sub-keys")
        hints = _type_hints(annotation)
        if part not in hints:
            names = ", ".join(sorted(f.name for f in dataclasses.fields(annotation)))
            raise ConfigError(f"command line: unknown key '{key}' in override {text!r}; valid keys: {names}")
        annotation = hints[part]
        if last:
            node[part] = value
        else:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Builds `cls` from defaults, then the YAML file at `path`, then `key=value` overrides."""
    tree = to_dict(cls()) if _all_defaulted(cls) else {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        loaded = read_yaml_mapping(path)
        # Validate the file on its own first, so its errors name the file rather than the command line.
        _validate_partial(cls, loaded, str(path))
        tree = _merge(tree, loaded)
        source = str(path)
    for text in overrides:
        path_parts, value = parse_override(text)
        _set_path(tree, path_parts, value, cls, text)
    if overrides:
        source = f"{source} + command line"  # once, however many overrides
    return build_from_dict(cls, tree, "", source)


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (empty file: {}), or ConfigError naming the file."""
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return loaded


def _all_defaulted(cls: type) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
        if f.init
    )


def _validate_partial(cls: type, values: dict[str, Any], source: str, prefix: str = "") -> None:
    """Checks a partial mapping (a YAML file layered over defaults): every key known, every value typed."""
    hints = _type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise ConfigError(f"{source}: unknown key '{key}'; valid keys: {', '.join(sorted(names))}")
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
            _validate_partial(annotation, value, source, key + ".")
        else:
            _coerce(value, annotation, key, source)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def save_config(config: Any, path: str | Path) -> None:
    """Writes the resolved config as YAML (the run directory's record of what ran)."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def describe(cls: type, prefix: str = "") -> str:
    """One line per key: dotted name, type, default and help text."""
    lines = []
    hints = _type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        annotation = hints[f.name]
        if dataclasses.is_dataclass(annotation):
            lines.append(describe(annotation, key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)"
        )
        default = to_dict(default)
        lines.append(f"{key}: {_describe_type(annotation)} = {default!r}  # {f.metadata.get('help', '')}")
    return "\n".join(lines)


def add_flags(parser: Any, cls: type, flag_names: dict[str, str] | None = None) -> None:
    """One argparse flag per field of the dataclass `cls` (`--field-name`, or `flag_names[field]`), its
    help from the field's `doc`, its default the field's; `from_flags` builds `cls` back from the parsed
    arguments, so the dataclass stays the single source of truth for a command's options."""

    hints = _type_hints(cls)
    for field in dataclasses.fields(cls):
        flag = (flag_names or {}).get(field.name, "--" + field.name.replace("_", "-"))
        annotation = hints[field.name]
        default = field.default if field.default is not dataclasses.MISSING else None
        help_ = field.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        if default not in (None, [], ()) and annotation is not bool:
            help_ += " (default: %(default)s)"
        if annotation is bool:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=default, help=help_)
        elif get_origin(annotation) is list:
            parser.add_argument(flag, dest=field.name, action="append", default=[], help=help_ + " (repeatable)")
        elif get_origin(annotation) is Literal:
            parser.add_argument(flag, dest=field.name, choices=get_args(annotation), default=default, help=help_)
        else:
            inner = [arg for arg in get_args(annotation) if arg is not type(None)] or [annotation]
            parser.add_argument(flag, dest=field.name, type=inner[0], default=default, help=help_)


def from_flags(cls: type[T], args: Any) -> T:
    """`cls` from the arguments `add_flags(parser, cls)` added (its own validation runs)."""
    return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})
