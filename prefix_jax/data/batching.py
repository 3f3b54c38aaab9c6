"""What decoder-only and encoder-decoder batches share: length buckets, the shuffled and
resumable order of training batches, and evaluation batches of padded inputs.

Each batch is padded to the smallest bucket that fits its longest row, so a jitted step
compiles once per bucket (pair), not once per batch; the batch size is fixed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from prefix_jax.data.tasks import EvalGroup
from prefix_jax.data.tokens import pad_rows


def default_buckets(max_length: int, step: int = 16, fine_until: int = 128) -> tuple[int, ...]:
    """Multiples of `step` up to `fine_until`, then ~25% larger steps (multiples of 32), up
    to the first bucket >= `max_length`.

    Each bucket is one compiled step; powers of two would compile fewer but pad a batch of
    short table-to-text examples by ~40% (measured on E2E, docs/benchmarks.md), this by ~10%.
    """
    buckets = [step]
    while buckets[-1] < max_length:
        last = buckets[-1]
        buckets.append(last + step if last < fine_until else -(-(last * 5 // 4) // 32) * 32)
    return tuple(buckets)


def pick_bucket(length: int, buckets: Sequence[int]) -> int:
    """Smallest bucket that holds `length` tokens."""
    fitting = [b for b in buckets if b >= length]
    if not fitting:
        raise ValueError(f"sequence of {length} tokens exceeds the largest bucket {max(buckets)}")
    return min(fitting)


def checked_buckets(buckets: Sequence[int] | None, max_length: int) -> tuple[int, ...]:
    """`buckets` sorted (default: `default_buckets`), checked to hold `max_length` tokens."""
    if buckets is None:
        return default_buckets(max_length)
    buckets = tuple(sorted(set(buckets)))
    if buckets[-1] < max_length:
        raise ValueError(
            f"longest sequence has {max_length} tokens but the largest bucket is {buckets[-1]}; "
            "add a bucket or lower max_source_tokens/max_target_tokens"
        )
    return buckets


class Encoded(Protocol):
    """A tokenized dataset as the batch order sees it."""

    def __len__(self) -> int: ...

    @property
    def lengths(self) -> np.ndarray: ...  # what sorting into similar-length batches uses

    @property
    def longest(self) -> int: ...  # the most tokens one row holds: what buckets must fit


class ShuffledBatches:
    """Shuffled, length-bucketed, fixed-size training batches, resumable at any step.

    The order of an epoch depends only on (seed, epoch): a permutation of the examples is cut
    into pools of `pool_batches * batch_size`, each pool is sorted by length (so a batch holds
    similar lengths and little padding), the concatenation is cut into batches and the
    batches are shuffled. A run that saved `{"epoch": e, "step": s}` resumes with
    `batches(e, start_step=s)`.

    `batch_size` is global. With several hosts each one yields rows
    `[process_index * b, (process_index + 1) * b)` of every global batch, `b = batch_size /
    process_count`, padded to the global batch's bucket so all hosts agree on shapes.

    The last partial batch is kept and filled with padding rows (all masks 0) unless
    `drop_last`; padding rows are fully masked, so the model's attention must tolerate rows
    with no visible key (use a finite mask value). Subclasses say how a batch of one model
    kind is shaped (`_shape`) and filled (`_assemble`).
    """

    def __init__(
        self,
        dataset: Encoded,
        batch_size: int,
        *,
        buckets: Sequence[int] | None = None,
        seed: int = 0,
        pool_batches: int = 64,
        drop_last: bool = False,
        process_index: int = 0,
        process_count: int = 1,
    ) -> None:
        if batch_size <= 0 or batch_size % process_count:
            raise ValueError(
                f"batch_size {batch_size} must be a positive multiple of "
                f"process_count {process_count}"
            )
        if pool_batches <= 0:
            raise ValueError(f"pool_batches must be positive, got {pool_batches}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if len(dataset) < (batch_size if drop_last else 1):
            raise ValueError(f"{len(dataset)} examples give no batch of {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.pool_batches = pool_batches
        self.drop_last = drop_last
        self.process_index = process_index
        self.process_count = process_count
        self._lengths = dataset.lengths
        self.buckets = checked_buckets(buckets, dataset.longest)

    @property
    def steps_per_epoch(self) -> int:
        full, rest = divmod(len(self.dataset), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def plan(self, epoch: int) -> list[np.ndarray]:
        """Example indices of every global batch of `epoch`; -1 marks a padding row."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.dataset))
        pool = self.pool_batches * self.batch_size
        pools = [order[i : i + pool] for i in range(0, len(order), pool)]
        order = np.concatenate([p[np.argsort(self._lengths[p], kind="stable")] for p in pools])
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if len(batches[-1]) < self.batch_size:
            if self.drop_last:
                batches.pop()
            else:
                padding = np.full(self.batch_size - len(batches[-1]), -1)
                batches[-1] = np.concatenate([batches[-1], padding])
        return [batches[i] for i in rng.permutation(len(batches))]

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """This host's share of the batches of `epoch` from `start_step` on; the bucket
        sizes are chosen from the global batch, so hosts agree."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} not in [0, {self.steps_per_epoch}]")
        rows = self.batch_size // self.process_count
        first = self.process_index * rows
        for indices in self.plan(epoch)[start_step:]:
            shape = self._shape(indices[indices >= 0])
            yield self._assemble(indices[first : first + rows], *shape)

    def _shape(self, real: np.ndarray) -> tuple[int, int]:
        """The two bucket sizes of the global batch of examples `real`."""
        raise NotImplementedError

    def _assemble(self, indices: np.ndarray, first: int, second: int) -> dict[str, np.ndarray]:
        """The arrays of rows `indices` (-1: a padding row) in buckets `_shape` chose."""
        raise NotImplementedError


def padded_eval_batches(
    groups: Sequence[EvalGroup],
    inputs: Sequence[Sequence[int]],
    batch_size: int,
    pad_id: int,
    buckets: Sequence[int] | None,
    *,
    left: bool,
) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """Per batch of `batch_size` groups in order: their `inputs` padded (left for a
    decoder's prompts, right for an encoder's sources) to the smallest bucket as int32
    tokens and mask, and the rest of the batch: `valid` (bool `[batch_size]`, False for rows
    padding the last batch), `sources` and `references` ("" and [] for padding rows)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    buckets = checked_buckets(buckets, max((len(s) for s in inputs), default=1))
    for start in range(0, len(groups), batch_size):
        chunk = inputs[start : start + batch_size]
        length = pick_bucket(max(len(s) for s in chunk), buckets)
        tokens, mask = pad_rows(chunk, pad_id, length, batch_size, left=left)
        batch_groups = groups[start : start + batch_size]
        n_pad = batch_size - len(chunk)
        yield (
            tokens,
            mask.astype(np.int32),
            {
                "valid": np.arange(batch_size) < len(chunk),
                "sources": [g.source for g in batch_groups] + [""] * n_pad,
                "references": [list(g.references) for g in batch_groups]
                + [[] for _ in range(n_pad)],
            },
        )
