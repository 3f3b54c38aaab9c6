"""Examples -> fixed-shape numpy batches for a decoder-only LM.

Training sequence: `[bos] source separator target eos`, each piece tokenized on its own and
concatenated, so the evaluation prompt `[bos] source separator` is token-for-token a prefix
of every training sequence (joint tokenization could merge across the boundary) and the loss
mask is exact. `loss_mask[t] = 1` where `tokens[t]` is a target token or the final eos: the
training loss is `loss_mask[:, 1:]`-weighted cross-entropy of `logits[:, :-1]` against
`tokens[:, 1:]`. Training batches also carry `score_positions` [batch, width]: each row's
positions t with `loss_mask[t + 1] = 1` (-1 pads), so the step can unembed only those.

Shapes: each batch is padded to the smallest bucket length that fits its longest row, and
its `score_positions` to the smallest bucket that fits its most targets in a row, so a
jitted step compiles once per (length, width) pair, not once per batch; the batch size is
fixed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prefix_jax.data.tasks import EvalGroup, Example

log = logging.getLogger(__name__)

# Tokenizer-agnostic plain text; the newline after "Target:" lets the target start a fresh
# word (no leading-space token), and "Target:" on its own line rarely occurs in sources.
DEFAULT_SEPARATOR = "\nTarget:\n"


@dataclass(frozen=True)
class EncodeConfig:
    """How examples become token sequences.

    `separator=None` uses the eos token as separator, Li & Liang's GPT-2 setup
    (`source <|endoftext|> target <|endoftext|>`). `add_bos` prepends the tokenizer's bos
    (wanted by Llama-style models, not by GPT-2). Sources keep their first
    `max_source_tokens` tokens; targets keep `max_target_tokens` tokens counting the eos, and
    a truncated target gets no eos (it did not end there).
    """

    separator: str | None = DEFAULT_SEPARATOR
    max_source_tokens: int = 512
    max_target_tokens: int = 128
    add_bos: bool = False


@dataclass
class EncodedDataset:
    """Token sequences with the length of their unscored prompt part."""

    sequences: list[np.ndarray]  # int32 [length] each
    prompt_lengths: np.ndarray  # int32 [n]: tokens before the first target token
    pad_id: int
    n_source_truncated: int = 0
    n_target_truncated: int = 0

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s) for s in self.sequences], dtype=np.int32)

    @property
    def longest(self) -> int:
        """The most tokens one row of a batch holds: what the buckets must fit."""
        return int(self.lengths.max())


# --------------------------------------------------------------------------- tokenization


def _token_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Plain ids (no special tokens) for a batch of texts with the HF tokenizer interface."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _special_ids(tokenizer: Any, config: EncodeConfig) -> tuple[list[int], list[int], int, int]:
    """(bos prefix, separator ids, eos id, pad id); pad falls back to eos (always masked)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer has no eos_token_id; it is needed to end targets")
    bos: list[int] = []
    if config.add_bos:
        if tokenizer.bos_token_id is None:
            raise ValueError("add_bos=True but the tokenizer has no bos_token_id")
        bos = [tokenizer.bos_token_id]
    if config.separator is None:
        separator = [eos]
    else:
        (separator,) = _token_ids(tokenizer, [config.separator])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return bos, separator, eos, pad


def _encode_prompts(
    tokenizer: Any, sources: Sequence[str], config: EncodeConfig
) -> tuple[list[list[int]], int, int, int]:
    """(`[bos] source separator` ids per source, eos, pad, number of truncated sources)."""
    bos, separator, eos, pad = _special_ids(tokenizer, config)
    prompts, n_truncated = [], 0
    for ids in _token_ids(tokenizer, sources):
        if len(ids) > config.max_source_tokens:
            ids, n_truncated = ids[: config.max_source_tokens], n_truncated + 1
        prompts.append(bos + ids + separator)
    if n_truncated:
        log.warning(
            "truncated %d of %d sources to %d tokens",
            n_truncated,
            len(sources),
            config.max_source_tokens,
        )
    return prompts, eos, pad, n_truncated


def encode_examples(
    examples: Sequence[Example], tokenizer: Any, config: EncodeConfig = EncodeConfig()
) -> EncodedDataset:
    """Tokenize training examples once, counting truncated sources and targets."""
    prompts, eos, pad, n_source_truncated = _encode_prompts(
        tokenizer, [e.source for e in examples], config
    )
    targets = _token_ids(tokenizer, [e.target for e in examples])
    sequences, prompt_lengths, n_target_truncated = [], [], 0
    for prompt, target in zip(prompts, targets, strict=True):
        scored = target + [eos]
        if len(scored) > config.max_target_tokens:
            scored, n_target_truncated = scored[: config.max_target_tokens], n_target_truncated + 1
        sequences.append(np.array(prompt + scored, dtype=np.int32))
        prompt_lengths.append(len(prompt))
    if n_target_truncated:
        log.warning(
            "truncated %d of %d targets to %d tokens",
            n_target_truncated,
            len(examples),
            config.max_target_tokens,
        )
    return EncodedDataset(
        sequences,
        np.array(prompt_lengths, dtype=np.int32),
        pad,
        n_source_truncated,
        n_target_truncated,
    )


# --------------------------------------------------------------------------- buckets


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


def _checked_buckets(buckets: Sequence[int] | None, max_length: int) -> tuple[int, ...]:
    if buckets is None:
        return default_buckets(max_length)
    buckets = tuple(sorted(set(buckets)))
    if buckets[-1] < max_length:
        raise ValueError(
            f"longest sequence has {max_length} tokens but the largest bucket is {buckets[-1]}; "
            "add a bucket or lower max_source_tokens/max_target_tokens"
        )
    return buckets


# --------------------------------------------------------------------------- training batches


class BatchIterator:
    """Shuffled, length-bucketed, fixed-size training batches, resumable at any step.

    The order of an epoch depends only on (seed, epoch): a permutation of the examples is cut
    into pools of `pool_batches * batch_size`, each pool is sorted by length (so a batch holds
    similar lengths and little padding), the concatenation is cut into batches and the
    batches are shuffled. A run that saved `{"epoch": e, "step": s}` resumes with
    `batches(e, start_step=s)`.

    `batch_size` is global. With several hosts each one yields rows
    `[process_index * b, (process_index + 1) * b)` of every global batch, `b = batch_size /
    process_count`, padded to the global batch's bucket so all hosts agree on shapes.

    The last partial batch is kept and filled with padding rows (`tokens = pad`, all masks 0)
    unless `drop_last`; padding rows are fully masked, so the model's attention must tolerate
    rows with no visible key (use a finite mask value).
    """

    def __init__(
        self,
        dataset: EncodedDataset,
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
        self.buckets = _checked_buckets(buckets, dataset.longest)

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
        """This host's share of the batches of `epoch` from `start_step` on.

        Yields `tokens`, `loss_mask`, `attention_mask`, all int32 `[batch_size /
        process_count, bucket]`, and `score_positions` `[batch_size / process_count,
        width]`; both sizes are buckets chosen from the global batch, so hosts agree.
        """
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} not in [0, {self.steps_per_epoch}]")
        rows = self.batch_size // self.process_count
        first = self.process_index * rows
        for indices in self.plan(epoch)[start_step:]:
            shape = self._shape(indices[indices >= 0])
            yield self._assemble(indices[first : first + rows], *shape)

    def _shape(self, real: np.ndarray) -> tuple[int, int]:
        """(sequence bucket, score-positions bucket) of the global batch of examples `real`."""
        length = pick_bucket(int(self._lengths[real].max()), self.buckets)
        targets = self._lengths[real] - self.dataset.prompt_lengths[real]
        return length, min(pick_bucket(max(int(targets.max()), 1), self.buckets), length)

    def _assemble(self, indices: np.ndarray, length: int, width: int) -> dict[str, np.ndarray]:
        data = self.dataset
        tokens = np.full((len(indices), length), data.pad_id, dtype=np.int32)
        loss_mask = np.zeros((len(indices), length), dtype=np.int32)
        attention_mask = np.zeros((len(indices), length), dtype=np.int32)
        score_positions = np.full((len(indices), width), -1, dtype=np.int32)
        for row, index in enumerate(indices):
            if index < 0:
                continue
            sequence = data.sequences[index]
            start = data.prompt_lengths[index]
            tokens[row, : len(sequence)] = sequence
            attention_mask[row, : len(sequence)] = 1
            loss_mask[row, start : len(sequence)] = 1
            scored = np.arange(max(start, 1) - 1, len(sequence) - 1)  # logits at t predict t+1
            score_positions[row, : len(scored)] = scored
        return {
            "tokens": tokens,
            "loss_mask": loss_mask,
            "attention_mask": attention_mask,
            "score_positions": score_positions,
        }


# --------------------------------------------------------------------------- evaluation batches


def eval_batches(
    groups: Sequence[EvalGroup],
    tokenizer: Any,
    batch_size: int,
    *,
    config: EncodeConfig = EncodeConfig(),
    buckets: Sequence[int] | None = None,
) -> Iterator[dict[str, Any]]:
    """Prompts `[bos] source separator`, left-padded for KV-cache decoding, in group order.

    Each batch has `tokens`, `attention_mask` (int32 `[batch_size, bucket]`; real tokens are
    right-aligned, so the model must derive positions from the mask), `valid` (bool
    `[batch_size]`, False for rows padding the last batch), and per row `sources` and
    `references` (lists; "" and [] for padding rows).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    prompts, _, pad, _ = _encode_prompts(tokenizer, [g.source for g in groups], config)
    buckets = _checked_buckets(buckets, max((len(p) for p in prompts), default=1))
    for start in range(0, len(groups), batch_size):
        chunk = prompts[start : start + batch_size]
        length = pick_bucket(max(len(p) for p in chunk), buckets)
        tokens = np.full((batch_size, length), pad, dtype=np.int32)
        attention_mask = np.zeros((batch_size, length), dtype=np.int32)
        for row, prompt in enumerate(chunk):
            tokens[row, length - len(prompt) :] = prompt
            attention_mask[row, length - len(prompt) :] = 1
        batch_groups = groups[start : start + batch_size]
        n_pad = batch_size - len(chunk)
        yield {
            "tokens": tokens,
            "attention_mask": attention_mask,
            "valid": np.arange(batch_size) < len(chunk),
            "sources": [g.source for g in batch_groups] + [""] * n_pad,
            "references": [list(g.references) for g in batch_groups] + [[] for _ in range(n_pad)],
        }
