"""Exported prefixes read and checked against one frozen base model, by task name.

A prefix is our export or a PEFT adapter (`methods/prefix/artifact.py`); `read_prefix`
loads one and checks it against the model (layers, kv heads, head_dim, model identity,
non-empty), with an error that names it. A `PrefixRegistry` holds N of them for the JSON
lines batch mode; the serving engine (`prefix_jax.serve.engine`) loads each one it is given
through `read_prefix` into its fixed-capacity device table.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from prefix_jax.data import DEFAULT_SEPARATOR
from prefix_jax.methods.prefix import artifact as export
from prefix_jax.methods.prefix.artifact import ExportedPrefix, PrefixMismatchError
from prefix_jax.models.config import ModelConfig
from prefix_jax.models.pretrained import model_identity
from prefix_jax.models.transformer import Transformer

BASE_TASK = "base"  # reserved task name: the plain base model, no prefix


class UnknownTaskError(KeyError):
    """A request names a task the registry does not hold."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class PrefixInfo:
    """One loaded prefix: its place (registry order, or the engine's table entry), length,
    position convention and how to prompt it."""

    name: str
    index: int
    length: int
    positions_after_prefix: bool
    separator: str | None  # text between source and target; None = the eos token
    source: str  # the directory it was loaded from ("" when given in memory)


def training_separator(exported: ExportedPrefix) -> str | None:
    """The separator recorded in the prefix's training config, or the default."""
    config = exported.training.get("config") or {}
    data = config.get("data") or {}
    return data["separator"] if "separator" in data else DEFAULT_SEPARATOR


def read_prefix(
    model: Transformer, name: str, item: ExportedPrefix | str | Path, index: int = 0
) -> tuple[ExportedPrefix, PrefixInfo]:
    """Load (from a directory) and check one prefix against the model; errors name it:
    PrefixMismatchError when it does not fit, ValueError when it cannot be read."""
    check_name(name)
    source = "" if isinstance(item, ExportedPrefix) else str(item)
    label = f"prefix {name!r}" + (f" ({source})" if source else "")
    try:
        exported = item if isinstance(item, ExportedPrefix) else export.load(item)
        exported.check(model)
    except PrefixMismatchError as e:
        raise PrefixMismatchError(f"{label} does not fit the model: {e}") from None
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise ValueError(f"{label} could not be loaded: {e}") from e
    identity = model_identity(model)
    trained_on = exported.model.get("name")
    if trained_on and identity["name"] and trained_on != identity["name"]:
        warnings.warn(
            f"{label} was made for model {trained_on!r}; loading it into "
            f"{identity['name']!r}, which has the same shape",
            stacklevel=3,
        )
    if exported.length == 0:
        raise PrefixMismatchError(f"{label} has length 0")
    info = PrefixInfo(
        name=name,
        index=index,
        length=exported.length,
        positions_after_prefix=exported.positions_after_prefix,
        separator=training_separator(exported),
        source=source,
    )
    return exported, info


class PrefixRegistry:
    """N checked prefixes for one model, by task name (the batch mode's set of tasks)."""

    def __init__(self, model: Transformer, prefixes: Mapping[str, ExportedPrefix | str | Path]):
        """`prefixes` maps task names to exported prefixes or their directories."""
        self.config: ModelConfig = model.config
        self.tasks: dict[str, PrefixInfo] = {}
        self.exported: dict[str, ExportedPrefix] = {}
        for index, (name, item) in enumerate(prefixes.items()):
            self.exported[name], self.tasks[name] = read_prefix(model, name, item, index)

    @classmethod
    def from_dirs(cls, model: Transformer, dirs: Mapping[str, str | Path]) -> PrefixRegistry:
        return cls(model, {name: Path(d) for name, d in dirs.items()})

    def __len__(self) -> int:
        return len(self.tasks)

    def __contains__(self, name: str) -> bool:
        return name in self.tasks

    @property
    def names(self) -> list[str]:
        return list(self.tasks)

    @property
    def max_length(self) -> int:
        return max((t.length for t in self.tasks.values()), default=0)

    @property
    def nbytes(self) -> int:
        """Bytes of the prefixes' tables as loaded (float32 on the host)."""
        return sum(np.asarray(e.table).nbytes for e in self.exported.values())

    def task(self, name: str) -> PrefixInfo:
        if name not in self.tasks:
            known = ", ".join(repr(n) for n in self.tasks) or "none"
            raise UnknownTaskError(
                f"unknown task {name!r}; loaded prefixes: {known} (or {BASE_TASK!r} / null "
                "for the base model without prefix)"
            )
        return self.tasks[name]


def check_name(name: str) -> None:
    """Task names are non-empty strings other than the base model's reserved name."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"task names must be non-empty strings, got {name!r}")
    if name == BASE_TASK:
        raise ValueError(f"task name {BASE_TASK!r} is reserved for the base model (no prefix)")


__all__ = [
    "BASE_TASK",
    "PrefixInfo",
    "PrefixRegistry",
    "UnknownTaskError",
    "check_name",
    "read_prefix",
    "training_separator",
]
