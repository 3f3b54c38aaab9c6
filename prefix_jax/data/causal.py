"""Examples -> fixed-shape numpy batches for a decoder-only LM.

Training sequence: `source separator target eos`, each piece tokenized on its own and
concatenated, so the evaluation prompt `source separator` is token-for-token a prefix
of every training sequence (joint tokenization could merge across the boundary) and the loss
mask is exact. `loss_mask[t] = 1` where `tokens[t]` is a target token or the final eos: the
training loss is `loss_mask[:, 1:]`-weighted cross-entropy of `logits[:, :-1]` against
`tokens[:, 1:]`. Training batches also carry `score_positions` [batch, width]: each row's
positions t with `loss_mask[t + 1] = 1` (-1 pads), so the step can unembed only those.

Shapes: each batch is padded to the smallest bucket length that fits its longest row, and
its `score_positions` to the smallest bucket that fits its most targets in a row, so a
jitted step compiles once per (length, width) pair (`batching`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prefix_jax.data.batching import ShuffledBatches, padded_eval_batches, pick_bucket
from prefix_jax.data.tasks import EvalGroup, Example
from prefix_jax.data.tokens import EncodeConfig, pad_id_of, pad_rows, plain_ids, separator_ids

log = logging.getLogger(__name__)


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


def _encode_prompts(
    tokenizer: Any, sources: Sequence[str], config: EncodeConfig
) -> tuple[list[list[int]], int, int, int]:
    """(`source separator` ids per source, eos, pad, number of truncated sources)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer has no eos_token_id; it is needed to end targets")
    separator = separator_ids(tokenizer, config.separator)
    prompts, n_truncated = [], 0
    for ids in plain_ids(tokenizer, sources):
        if len(ids) > config.max_source_tokens:
            ids, n_truncated = ids[: config.max_source_tokens], n_truncated + 1
        prompts.append(ids + separator)
    if n_truncated:
        log.warning(
            "truncated %d of %d sources to %d tokens",
            n_truncated,
            len(sources),
            config.max_source_tokens,
        )
    return prompts, eos, pad_id_of(tokenizer), n_truncated


def encode_examples(
    examples: Sequence[Example], tokenizer: Any, config: EncodeConfig | None = None
) -> EncodedDataset:
    """Tokenize training examples once, counting truncated sources and targets."""
    config = config or EncodeConfig()
    prompts, eos, pad, n_source_truncated = _encode_prompts(
        tokenizer, [e.source for e in examples], config
    )
    targets = plain_ids(tokenizer, [e.target for e in examples])
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


# --------------------------------------------------------------------------- training batches


class BatchIterator(ShuffledBatches):
    """`ShuffledBatches` of a decoder-only model's sequences.

    Yields `tokens`, `loss_mask`, `attention_mask`, all int32 `[batch_size / process_count,
    bucket]`, and `score_positions` `[batch_size / process_count, width]`; a padding row has
    `tokens = pad` and all masks 0.
    """

    dataset: EncodedDataset

    def _shape(self, real: np.ndarray) -> tuple[int, int]:
        """(sequence bucket, score-positions bucket) of the global batch of examples `real`."""
        length = pick_bucket(int(self._lengths[real].max()), self.buckets)
        targets = self._lengths[real] - self.dataset.prompt_lengths[real]
        return length, min(pick_bucket(max(int(targets.max()), 1), self.buckets), length)

    def _assemble(self, indices: np.ndarray, length: int, width: int) -> dict[str, np.ndarray]:
        data = self.dataset
        sequences = [data.sequences[i] if i >= 0 else () for i in indices]
        tokens, attention_mask = pad_rows(sequences, data.pad_id, length, left=False)
        loss_mask = np.zeros((len(indices), length), dtype=np.int32)
        score_positions = np.full((len(indices), width), -1, dtype=np.int32)
        for row, index in enumerate(indices):
            if index < 0:
                continue
            end, start = len(sequences[row]), data.prompt_lengths[index]
            loss_mask[row, start:end] = 1
            scored = np.arange(max(start, 1) - 1, end - 1)  # logits at t predict t+1
            score_positions[row, : len(scored)] = scored
        return {
            "tokens": tokens,
            "loss_mask": loss_mask,
            "attention_mask": attention_mask.astype(np.int32),
            "score_positions": score_positions,
        }


# --------------------------------------------------------------------------- evaluation batches


def eval_batches(
    groups: Sequence[EvalGroup],
    tokenizer: Any,
    batch_size: int,
    *,
    config: EncodeConfig | None = None,
    buckets: Sequence[int] | None = None,
) -> Iterator[dict[str, Any]]:
    """Prompts `source separator`, left-padded for KV-cache decoding, in group order.

    Each batch has `tokens`, `attention_mask` (int32 `[batch_size, bucket]`; real tokens are
    right-aligned, so the model must derive positions from the mask), `valid` (bool
    `[batch_size]`, False for rows padding the last batch), and per row `sources` and
    `references` (lists; "" and [] for padding rows).
    """
    prompts, _, pad, _ = _encode_prompts(
        tokenizer, [g.source for g in groups], config or EncodeConfig()
    )
    for tokens, mask, rest in padded_eval_batches(
        groups, prompts, batch_size, pad, buckets, left=True
    ):
        yield {"tokens": tokens, "attention_mask": mask, **rest}
