"""Token ids every path shares, each rule written once: how texts become plain ids, which
id pads, what separates source from target, how rows are padded, where output ends.

Training (`causal`, `pairs`), evaluation (`infer.evaluate`), generation and serving all
read these, so a prompt at serving time is token-for-token the one seen in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Tokenizer-agnostic plain text; the newline after "Target:" lets the target start a fresh
# word (no leading-space token), and "Target:" on its own line rarely occurs in sources.
DEFAULT_SEPARATOR = "\nTarget:\n"


@dataclass(frozen=True)
class EncodeConfig:
    """How examples become token sequences.

    `separator=None` uses the eos token as separator, Li & Liang's GPT-2 setup
    (`source <|endoftext|> target <|endoftext|>`); encoder-decoders need none (the source
    is the encoder's input). Sources keep their first `max_source_tokens` tokens; targets
    keep `max_target_tokens` tokens counting the eos, and a truncated target gets no eos
    (it did not end there).
    """

    separator: str | None = DEFAULT_SEPARATOR
    max_source_tokens: int = 512
    max_target_tokens: int = 128


def plain_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Ids without special tokens for a batch of texts (the HF tokenizer interface)."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def pad_id_of(tokenizer: Any) -> int:
    """The id that fills padding: the tokenizer's pad, else its eos, else 0.

    Padding is masked everywhere (attention, loss) and what follows an eos is cut off
    (`until_eos`), so any id in the vocabulary is correct. The tokenizer's own pad comes
    first; eos is the usual stand-in of tokenizers without one (GPT-2, Llama) and is
    skipped when decoded as a special token; 0 is always in range, so a tokenizer with
    neither can still decode.
    """
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


def separator_ids(tokenizer: Any, separator: str | None) -> list[int]:
    """The ids between source and target: `separator`'s plain ids, or for None the eos."""
    if separator is not None:
        (ids,) = plain_ids(tokenizer, [separator])
        return ids
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token_id, which separator=None uses")
    return [tokenizer.eos_token_id]


def pad_rows(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    length: int,
    rows: int | None = None,
    *,
    left: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """(int32 tokens, bool mask) `[rows, length]`: each sequence left- or right-aligned,
    `pad_id` elsewhere; rows past `len(sequences)` (default: none) are all padding."""
    rows = len(sequences) if rows is None else rows
    tokens = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), bool)
    for i, s in enumerate(sequences):
        where = slice(length - len(s), length) if left else slice(0, len(s))
        tokens[i, where] = s
        mask[i, where] = True
    return tokens, mask


def left_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, multiple: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Prompts left-padded for KV-cache decoding, to a common length rounded up to
    `multiple` (to limit compiled shapes)."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("every prompt needs at least one token")
    length = -(-max(len(s) for s in sequences) // multiple) * multiple
    return pad_rows(sequences, pad_id, length, left=True)


def until_eos(row: Sequence[int] | np.ndarray, eos_id: int | None) -> tuple[list[int], int]:
    """(generated ids before the first eos, tokens generated counting that eos)."""
    ids = row.tolist() if isinstance(row, np.ndarray) else list(row)
    if eos_id is not None and eos_id in ids:
        cut = ids.index(eos_id)
        return ids[:cut], cut + 1
    return ids, len(ids)
