"""The one config convention of every command: `--config path[:args]` plus `--config.key=value`.

A config file is a Python file with `get_config(arg)`, read by path (ml_collections' and
big_vision's convention); `arg` is the text after the first `:` of the path, a comma-separated
list of `key=value` and bare `flag` items that `parse_arg` checks against the keys the file
declares, so a typo (`:lcoal`) fails instead of silently running the full config. Overrides
`--config.a.b=value` are typed by the field they replace and an unknown key is an error
naming it, so a typo never adds a field that nothing reads.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

OVERRIDE_PREFIX = "--config."
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


class ConfigError(ValueError):
    """A config file, its argument string or an override that cannot be used."""


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
    """The `key=value,flag` string of `get_config(arg)` as a ConfigDict with `spec`'s keys.

    Each value is typed like its default in `spec`; a bare `flag` sets a boolean key to
    True. An unknown key, a flag that is not boolean or a value of the wrong type raises
    ConfigError naming the known keys.
    """
    result = ml_collections.ConfigDict(spec)
    known = ", ".join(f"{k}={v!r}" for k, v in spec.items())
    for item in filter(None, (part.strip() for part in (arg or "").split(","))):
        key, sep, text = item.partition("=")
        key = key.strip()
        if key not in spec:
            raise ConfigError(f"unknown config argument {key!r}; known (with defaults): {known}")
        if not sep:
            if not isinstance(spec[key], bool):
                raise ConfigError(f"config argument {key!r} needs a value: {key}=...")
            result[key] = True
        else:
            result[key] = _typed(key, text.strip(), type(spec[key]))
    return result


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`get_config(arg)` of the file in `spec` (`path` or `path:arg`), read by path."""
    path, _, arg = spec.partition(":")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"config file {path} not found")
    module_spec = importlib.util.spec_from_file_location(f"_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} has no get_config(arg)")
    return module.get_config(arg) if arg else module.get_config()


def override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Set the dotted `key` of `config` from its command-line `text`, typed by the field."""
    *parents, name = key.split(".")
    node = config
    for depth, part in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ConfigError(_unknown(key, ".".join(parents[:depth]), node))
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
        raise ConfigError(_unknown(key, ".".join(parents), node))
    if isinstance(node[name], ml_collections.ConfigDict):
        raise ConfigError(f"config.{key} is a block; override its fields (config.{key}.x=...)")
    node[name] = _typed(f"config.{key}", text, node.get_type(name))


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Sequence[tuple[str, str]]
) -> ml_collections.ConfigDict:
    """`config` with each (dotted key, text) override applied in order."""
    for key, text in overrides:
        override(config, key, text)
    return config


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(the other arguments, the `--config.key=value` / `--config.key value` overrides)."""
    rest, overrides = [], []
    items = iter(argv)
    for item in items:
        if not item.startswith(OVERRIDE_PREFIX):
            rest.append(item)
            continue
        key, sep, text = item[len(OVERRIDE_PREFIX) :].partition("=")
        if not sep:
            text = next(items, None)
            if text is None:
                raise ConfigError(f"{item} needs a value")
        overrides.append((key, text))
    return rest, overrides


def _typed(name: str, text: str, kind: type) -> Any:
    """`text` as a value of `kind`, as ml_collections' flags read it: strings verbatim,
    booleans as true/false/1/0, numbers by Python's syntax, a tuple as a Python literal (one
    element alone, e.g. `q`, is a 1-tuple); `None` clears a field that may be unset; a field
    without a type takes a literal, else the text."""
    if kind is str:
        return text
    if text == "None":
        return None
    if kind is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise ConfigError(f"{name} is a bool (true or false), got {text!r}")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(f"{name} is {kind.__name__}, got {text!r}") from None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if kind in (tuple, list) and "," in text:
            raise ConfigError(
                f"{name} is a {kind.__name__}: quote its strings, e.g. \"('q','v')\"; got {text!r}"
            ) from None
        value = text
    if kind in (tuple, list):
        return kind(value) if isinstance(value, tuple | list) else kind((value,))
    if kind is type(None) or isinstance(value, kind):
        return value
    raise ConfigError(f"{name} is {kind.__name__}, got {text!r}")


def _unknown(key: str, parent: str, node: Any) -> str:
    where = f"config.{parent}" if parent else "config"
    if isinstance(node, ml_collections.ConfigDict):
        known = ", ".join(sorted(node.keys()))
        return f"unknown config key {key!r}: {where} has {known}"
    return f"unknown config key {key!r}: {where} is not a block"
