"""Encoder-decoder batches: special tokens kept, truncation, shift right, buckets, resume."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import word_tokenizer

from prefix_jax.data import EncodeConfig, EvalGroup, Example
from prefix_jax.data.pairs import PairBatchIterator, encode_pairs, pair_eval_batches

WORDS = [f"w{i}" for i in range(30)]
BART = "<s> $A </s>"
T5 = "$A </s>"
START = 2  # BART's decoder_start_token_id is its eos; any id works for the shift


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("template", [BART, T5])
def test_pairs_keep_special_tokens_and_shift_right(template: str) -> None:
    tok = word_tokenizer(WORDS, template)
    examples = [Example("w1 w2 w3", "w4 w5"), Example("w6", "w7 w8 w9")]
    data = encode_pairs(examples, tok, START, EncodeConfig(max_source_tokens=16))
    front = [2] if template == BART else []
    assert data.sources[0].tolist() == front + ids(tok, "w1 w2 w3") + [1]
    assert data.labels[1].tolist() == front + ids(tok, "w7 w8 w9") + [1]
    (batch,) = PairBatchIterator(data, 2, buckets=(4, 8)).batches(0)
    row = int(np.flatnonzero(batch["source"][:, len(front)] == ids(tok, "w6")[0])[0])
    label = data.labels[1]
    n = len(label)
    assert batch["labels"][row, :n].tolist() == label.tolist()
    assert batch["target"][row, :n].tolist() == [START, *label[:-1].tolist()]
    width = batch["target"].shape[1]
    assert width == (8 if template == BART else 4)  # the smallest bucket that fits
    assert batch["target_mask"][row].tolist() == [1] * n + [0] * (width - n)
    assert batch["source_mask"][row].sum() == len(data.sources[1])


def test_truncation_keeps_source_eos_and_drops_cut_target_eos() -> None:
    tok = word_tokenizer(WORDS, BART)
    long = " ".join(WORDS[:10])
    data = encode_pairs(
        [Example(long, long), Example("w1", "w2")],
        tok,
        START,
        EncodeConfig(max_source_tokens=5, max_target_tokens=6),
    )
    assert data.sources[0].tolist() == [2, *ids(tok, "w0 w1 w2"), 1]
    assert data.labels[0].tolist() == [2, *ids(tok, "w0 w1 w2 w3 w4")]  # cut: no eos
    assert data.labels[1].tolist() == [2, *ids(tok, "w2"), 1]
    assert (data.n_source_truncated, data.n_target_truncated) == (1, 1)
    with pytest.raises(ValueError, match="no room besides the special tokens"):
        encode_pairs([Example("w1", "w2")], tok, START, EncodeConfig(max_source_tokens=2))


def test_pair_batches_resume_and_cover_every_example_once() -> None:
    tok = word_tokenizer(WORDS, T5)
    rng = np.random.default_rng(0)
    examples = [
        Example(
            " ".join(rng.choice(WORDS, rng.integers(1, 12))),
            " ".join(rng.choice(WORDS, rng.integers(1, 6))),
        )
        for _ in range(21)
    ]
    data = encode_pairs(examples, tok, 0)
    it = PairBatchIterator(data, 4, seed=3, pool_batches=2)
    full = list(it.batches(1))
    assert len(full) == it.steps_per_epoch == 6
    resumed = list(it.batches(1, start_step=2))
    for a, b in zip(full[2:], resumed, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    rows = [
        (
            tuple(b["source"][r][b["source_mask"][r] == 1]),
            tuple(b["labels"][r][b["target_mask"][r] == 1]),
        )
        for b in full
        for r in range(4)
        if b["source_mask"][r].any()
    ]
    expected = [(tuple(s), tuple(t)) for s, t in zip(data.sources, data.labels, strict=True)]
    assert sorted(rows) == sorted(expected)
    for b in full:  # each side padded to its own bucket
        assert b["source"].shape[1] in it.buckets and b["labels"].shape[1] in it.buckets


def test_pair_eval_batches_are_right_padded_in_group_order() -> None:
    tok = word_tokenizer(WORDS, BART)
    groups = [EvalGroup("w1 w2", ("r1",)), EvalGroup("w3", ("r2", "r3")), EvalGroup("w4", ("r4",))]
    batches = list(pair_eval_batches(groups, tok, 2))
    assert [b["valid"].tolist() for b in batches] == [[True, True], [True, False]]
    first = batches[0]
    assert first["source"][1, :3].tolist() == [2, *ids(tok, "w3"), 1]
    assert first["source_mask"][1].tolist()[:4] == [1, 1, 1, 0]
    assert first["references"] == [["r1"], ["r2", "r3"]]
    assert batches[1]["sources"] == ["w4", ""]
