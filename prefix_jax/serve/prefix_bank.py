"""Many exported prefixes against one frozen base model, ready for mixed-task batches.

A `PrefixRegistry` loads N exported prefixes (our format or PEFT adapters), checks each
against the model (layers, kv_dim, model identity) and packs all their tables into one
device array `[sum of lengths + 1, layers * 2 * kv_dim]` with per-task offsets and
lengths. A batch's `PrefixKV` is then a gather by task index (`gather_prefix`, jitted):
row r gets its task's slots, padded to a common length and masked, and a row with task
index -1 (no prefix) gets an all-masked prefix, which is exactly the plain base model.

Packing rather than a padded `[N, p_max, width]` stack keeps the memory of N prefixes the
sum of their sizes: one long prefix does not pad all the others to its length.

The token-position convention (`positions_after_prefix`) is a static property of a
`PrefixKV`, so prefixes trained with different conventions cannot share one batch: the
server groups requests by it (see `prefix_jax.serve.batch`).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from prefix_jax.data import DEFAULT_SEPARATOR
from prefix_jax.methods.prefix import artifact as export
from prefix_jax.methods.prefix.artifact import ExportedPrefix, PrefixMismatchError
from prefix_jax.models.config import ModelConfig
from prefix_jax.models.kv import PrefixKV
from prefix_jax.models.pretrained import model_identity
from prefix_jax.models.transformer import Transformer

Array = jax.Array

BASE_TASK = "base"  # reserved task name: the plain base model, no prefix
NO_PREFIX = -1  # task index of rows without a prefix


class UnknownTaskError(KeyError):
    """A request names a task the registry does not hold."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """One loaded prefix: where it sits in the packed table and how to prompt it."""

    name: str
    index: int
    length: int
    offset: int
    positions_after_prefix: bool
    separator: str | None  # text between source and target; None = the eos token
    source: str  # the directory it was loaded from ("" when given in memory)


def training_separator(exported: ExportedPrefix) -> str | None:
    """The separator recorded in the prefix's training config, or the default."""
    config = exported.training.get("config") or {}
    data = config.get("data") or {}
    return data["separator"] if "separator" in data else DEFAULT_SEPARATOR


class PrefixRegistry:
    """N prefixes for one model, packed into one device table; load once, gather per batch."""

    def __init__(
        self,
        model: Transformer,
        prefixes: Mapping[str, ExportedPrefix | str | Path],
        *,
        dtype=None,
    ):
        """`prefixes` maps task names to exported prefixes or their directories.

        The table is stored in `dtype` (default: the model's compute dtype, which the
        prefix is cast to in attention anyway, so nothing is lost).
        """
        self.config: ModelConfig = model.config
        width = 2 * self.config.num_layers * self.config.kv_dim
        tasks: dict[str, TaskInfo] = {}
        tables: list[np.ndarray] = []
        offset = 0
        identity = model_identity(model)
        for index, (name, item) in enumerate(prefixes.items()):
            _check_name(name)
            source = "" if isinstance(item, ExportedPrefix) else str(item)
            label = f"prefix {name!r}" + (f" ({source})" if source else "")
            try:
                exported = item if isinstance(item, ExportedPrefix) else export.load(item)
                exported.check(model)
            except PrefixMismatchError as e:
                raise PrefixMismatchError(f"{label} does not fit the model: {e}") from None
            except (FileNotFoundError, ValueError, KeyError) as e:
                raise ValueError(f"{label} could not be loaded: {e}") from e
            trained_on = exported.model.get("name")
            if trained_on and identity["name"] and trained_on != identity["name"]:
                warnings.warn(
                    f"{label} was made for model {trained_on!r}; loading it into "
                    f"{identity['name']!r}, which has the same shape",
                    stacklevel=2,
                )
            if exported.length == 0:
                raise PrefixMismatchError(f"{label} has length 0")
            tasks[name] = TaskInfo(
                name=name,
                index=index,
                length=exported.length,
                offset=offset,
                positions_after_prefix=exported.positions_after_prefix,
                separator=training_separator(exported),
                source=source,
            )
            tables.append(np.asarray(exported.table, np.float32).reshape(-1, width))
            offset += exported.length
        # One trailing zero row: masked slots point at it, so the gather never goes out of
        # bounds, even for an empty registry.
        tables.append(np.zeros((1, width), np.float32))
        self.tasks = tasks
        self.dtype = dtype or model.dtype
        self.table: Array = jnp.asarray(np.concatenate(tables), self.dtype)
        self.offsets: Array = jnp.asarray([t.offset for t in tasks.values()] + [0], jnp.int32)
        self.lengths: Array = jnp.asarray([t.length for t in tasks.values()] + [0], jnp.int32)

    @classmethod
    def from_dirs(cls, model: Transformer, dirs: Mapping[str, str | Path], **kw):
        return cls(model, {name: Path(d) for name, d in dirs.items()}, **kw)

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
        """Device bytes of the packed table (plus offsets and lengths)."""
        return self.table.nbytes + self.offsets.nbytes + self.lengths.nbytes

    def task(self, name: str) -> TaskInfo:
        if name not in self.tasks:
            known = ", ".join(repr(n) for n in self.tasks) or "none"
            raise UnknownTaskError(
                f"unknown task {name!r}; loaded prefixes: {known} (or {BASE_TASK!r} / null "
                "for the base model without prefix)"
            )
        return self.tasks[name]

    def prefix_kv(
        self,
        task_ids,
        *,
        length: int | None = None,
        positions_after_prefix: bool = False,
    ) -> PrefixKV:
        """Per-row PrefixKV for task indices [B] (-1 = no prefix), `length` slots each."""
        length = self.max_length if length is None else length
        if length < self.max_length_of(task_ids):
            raise ValueError(f"length {length} is shorter than a requested prefix")
        return gather_prefix(
            self.table,
            self.offsets,
            self.lengths,
            jnp.asarray(task_ids, jnp.int32),
            self.config,
            length=max(length, 1),
            positions_after_prefix=positions_after_prefix,
        )

    def max_length_of(self, task_ids) -> int:
        lengths = [int(self.lengths_np[i]) for i in np.asarray(task_ids).tolist() if i >= 0]
        return max(lengths, default=0)

    @functools.cached_property
    def lengths_np(self) -> np.ndarray:
        return np.asarray(self.lengths)


@functools.partial(jax.jit, static_argnames=("config", "length", "positions_after_prefix"))
def gather_prefix(
    table: Array,
    offsets: Array,
    lengths: Array,
    task_ids: Array,
    config: ModelConfig,
    *,
    length: int,
    positions_after_prefix: bool = False,
) -> PrefixKV:
    """PrefixKV [L, B, length, kv_heads, head_dim] with row b holding task_ids[b]'s slots.

    Slots past a task's length, and every slot of a row with task id -1, are masked (and
    zero): attention gives them probability exactly 0, so such a row decodes as the base
    model, and a shorter prefix as itself.
    """
    c = config
    has = task_ids >= 0
    safe = jnp.where(has, task_ids, 0)
    n = jnp.where(has, lengths[safe], 0)  # [B]
    slots = jnp.arange(length)
    mask = slots[None, :] < n[:, None]  # [B, length]
    zero_row = table.shape[0] - 1
    rows = jnp.where(mask, offsets[safe][:, None] + slots[None, :], zero_row)
    kv = jnp.take(table, rows, axis=0)  # [B, length, width]
    b = task_ids.shape[0]
    kv = kv.reshape(b, length, c.num_layers, 2, c.num_kv_heads, c.head_dim)
    kv = jnp.transpose(kv, (3, 2, 0, 1, 4, 5))  # [2, L, B, length, kv, hd]
    return PrefixKV(
        keys=kv[0], values=kv[1], mask=mask, positions_after_prefix=positions_after_prefix
    )


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"task names must be non-empty strings, got {name!r}")
    if name == BASE_TASK:
        raise ValueError(f"task name {BASE_TASK!r} is reserved for the base model (no prefix)")


__all__ = [
    "BASE_TASK",
    "NO_PREFIX",
    "PrefixRegistry",
    "TaskInfo",
    "UnknownTaskError",
    "gather_prefix",
    "training_separator",
]
