"""Examples -> fixed-shape numpy batches for an encoder-decoder model (BART, T5).

The source is the encoder input and the target the decoder's, each with the tokenizer's
own special tokens (BART: `<s> text </s>`, T5: `text </s>`), as the checkpoints were
trained. Teacher forcing: the decoder reads `[decoder_start] + labels[:-1]` and is scored
on `labels` (shift right, as in transformers' `shift_tokens_right`).

Truncation keeps the special tokens: a source keeps its first tokens; a target keeps its
first `max_target_tokens` tokens and loses its eos when cut (it did not end there).

Batches are padded on the right to the smallest source bucket and target bucket that fit,
so a jitted step compiles once per (source, target) bucket pair; rows that pad the last
batch are fully masked.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prefix_jax.data.batching import ShuffledBatches, padded_eval_batches, pick_bucket
from prefix_jax.data.tasks import EvalGroup, Example
from prefix_jax.data.tokens import EncodeConfig, pad_id_of, pad_rows, plain_ids

log = logging.getLogger(__name__)


@dataclass
class EncodedPairs:
    """Source and label token sequences of an encoder-decoder dataset."""

    sources: list[np.ndarray]  # int32 [source length] each, special tokens included
    labels: list[np.ndarray]  # int32 [target length] each, eos included unless truncated
    pad_id: int
    decoder_start_id: int
    n_source_truncated: int = 0
    n_target_truncated: int = 0

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def lengths(self) -> np.ndarray:
        """Source plus target tokens: what sorting into similar-length batches uses."""
        return self.source_lengths + self.label_lengths

    @property
    def longest(self) -> int:
        """The most tokens one side of a row holds: what the buckets must fit."""
        return int(max(self.source_lengths.max(), self.label_lengths.max()))

    @property
    def source_lengths(self) -> np.ndarray:
        return np.array([len(s) for s in self.sources], dtype=np.int32)

    @property
    def label_lengths(self) -> np.ndarray:
        return np.array([len(t) for t in self.labels], dtype=np.int32)


class SpecialTokens:
    """Where a tokenizer puts its special tokens around one text (found by probing), so
    that truncation can cut the text and keep them."""

    def __init__(self, tokenizer: Any):
        probe = "Hello world"
        plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
        full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
        start = next(
            (i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain),
            None,
        )
        if start is None:
            raise ValueError("cannot locate the text among the tokenizer's special tokens")
        self.front, self.back = full[:start], full[start + len(plain) :]

    def wrap(
        self, texts_ids: Sequence[Sequence[int]], max_tokens: int, *, close_cut: bool = True
    ) -> tuple[list[np.ndarray], int]:
        """(each text's ids inside the special tokens, at most `max_tokens` in all; the
        number of texts that had to be cut). A cut text keeps its closing special tokens
        when `close_cut` (an encoder input), else its room goes to text (a target that
        did not end there gets no eos)."""
        room = max_tokens - len(self.front) - len(self.back)
        if room <= 0:
            raise ValueError(
                f"max tokens {max_tokens} leaves no room besides the special tokens "
                f"{self.front + self.back}"
            )
        out, n_cut = [], 0
        for ids in texts_ids:
            if len(ids) <= room:
                wrapped = [*self.front, *ids, *self.back]
            elif close_cut:
                wrapped, n_cut = [*self.front, *ids[:room], *self.back], n_cut + 1
            else:
                wrapped, n_cut = [*self.front, *ids[: max_tokens - len(self.front)]], n_cut + 1
            out.append(np.array(wrapped, dtype=np.int32))
        return out, n_cut


def encode_sources(
    tokenizer: Any, sources: Sequence[str], config: EncodeConfig
) -> tuple[list[np.ndarray], int]:
    """Encoder inputs with special tokens, at most `config.max_source_tokens` each."""
    sources_ids, n_cut = SpecialTokens(tokenizer).wrap(
        plain_ids(tokenizer, sources), config.max_source_tokens
    )
    if n_cut:
        log.warning(
            "truncated %d of %d sources to %d tokens", n_cut, len(sources), config.max_source_tokens
        )
    return sources_ids, n_cut


def encode_pairs(
    examples: Sequence[Example],
    tokenizer: Any,
    decoder_start_id: int,
    config: EncodeConfig | None = None,
) -> EncodedPairs:
    """Tokenize (source, target) examples once for an encoder-decoder model."""
    config = config or EncodeConfig()
    sources, n_source_cut = encode_sources(tokenizer, [e.source for e in examples], config)
    labels, n_target_cut = SpecialTokens(tokenizer).wrap(
        plain_ids(tokenizer, [e.target for e in examples]),
        config.max_target_tokens,
        close_cut=False,
    )
    if n_target_cut:
        log.warning(
            "truncated %d of %d targets to %d tokens",
            n_target_cut,
            len(examples),
            config.max_target_tokens,
        )
    return EncodedPairs(
        sources, labels, pad_id_of(tokenizer), decoder_start_id, n_source_cut, n_target_cut
    )


class PairBatchIterator(ShuffledBatches):
    """`ShuffledBatches` of encoder-decoder pairs.

    Yields `source`, `source_mask` ([rows, source bucket]), `target` (the decoder input,
    shifted right), `labels` and `target_mask` ([rows, target bucket]), int32.
    """

    dataset: EncodedPairs

    def _shape(self, real: np.ndarray) -> tuple[int, int]:
        """(source bucket, target bucket) of the global batch of examples `real`."""
        data = self.dataset
        source_len = pick_bucket(int(data.source_lengths[real].max()), self.buckets)
        return source_len, pick_bucket(int(data.label_lengths[real].max()), self.buckets)

    def _assemble(
        self, indices: np.ndarray, source_len: int, target_len: int
    ) -> dict[str, np.ndarray]:
        data = self.dataset
        pairs = [(data.sources[i], data.labels[i]) if i >= 0 else ((), ()) for i in indices]
        source, source_mask = pad_rows([s for s, _ in pairs], data.pad_id, source_len, left=False)
        labels, target_mask = pad_rows(
            [lab for _, lab in pairs], data.pad_id, target_len, left=False
        )
        shifted = [[data.decoder_start_id, *lab[:-1]] if len(lab) else () for _, lab in pairs]
        target, _ = pad_rows(shifted, data.pad_id, target_len, left=False)
        return {
            "source": source,
            "source_mask": source_mask.astype(np.int32),
            "target": target,
            "labels": labels,
            "target_mask": target_mask.astype(np.int32),
        }


def pair_eval_batches(
    groups: Sequence[EvalGroup],
    tokenizer: Any,
    batch_size: int,
    *,
    config: EncodeConfig | None = None,
    buckets: Sequence[int] | None = None,
) -> Iterator[dict[str, Any]]:
    """Encoder inputs for decoding, right-padded, in group order.

    Each batch has `source`, `source_mask` (int32 [batch_size, bucket]), `valid` (bool,
    False for rows padding the last batch) and per row `sources` and `references`.
    """
    config = config or EncodeConfig()
    encoded, _ = encode_sources(tokenizer, [g.source for g in groups], config)
    for source, source_mask, rest in padded_eval_batches(
        groups, encoded, batch_size, pad_id_of(tokenizer), buckets, left=False
    ):
        yield {"source": source, "source_mask": source_mask, **rest}
