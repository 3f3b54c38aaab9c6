"""Greedy and beam-search decoding on tiny random checkpoints.

References are independent of the decoders: they score tokens with no-cache full forward
passes and a float64 log-softmax in numpy.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import padded_batch
from flax import nnx

from prefix_jax.data.tokens import left_pad
from prefix_jax.infer import decode
from prefix_jax.infer.decode import beam_search, greedy
from prefix_jax.models import PrefixKV, load


@pytest.fixture(scope="module")
def llama(tiny_checkpoints):
    return load(str(tiny_checkpoints["llama"]), with_tokenizer=False)[0]


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompts of lengths 7, 3, 5 for the tiny llama: shared shapes, one compile."""
    return padded_batch(np.random.default_rng(0), 101, [7, 3, 5], "left")


@pytest.fixture(scope="module")
def gpt2(tiny_checkpoints):
    return load(str(tiny_checkpoints["gpt2"]), with_tokenizer=False)[0]


@functools.partial(jax.jit, static_argnums=0)
def _no_cache_logits(graphdef, state, tokens, mask, prefix):
    return nnx.merge(graphdef, state)(tokens, mask, prefix=prefix)[0]


def log_probs64(model, tokens, mask=None, prefix=None) -> np.ndarray:
    """float64 log-softmax [B, T, V] of one no-cache forward pass (no KV cache involved)."""
    mask = np.ones(np.shape(tokens), bool) if mask is None else mask
    graphdef, state = nnx.split(model)
    logits = _no_cache_logits(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask, bool), prefix)
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def generated_length(row: np.ndarray, eos_id: int | None) -> int:
    """Tokens up to and including the first eos (all of them when there is none)."""
    hits = np.flatnonzero(row == eos_id) if eos_id is not None else []
    return int(hits[0]) + 1 if len(hits) else len(row)


def random_prefix(model, batch: int, length: int, seed: int) -> PrefixKV:
    c = model.config
    rng = np.random.default_rng(seed)
    shape = (c.num_layers, batch, length, c.num_kv_heads, c.head_dim)
    return PrefixKV(
        keys=jnp.asarray(rng.normal(size=shape), jnp.float32),
        values=jnp.asarray(rng.normal(size=shape), jnp.float32),
    )


def per_row_prefix(model, seed: int) -> PrefixKV:
    """Prefixes of 3 rows with 5, 3 and 3 real slots (masked out at different places)."""
    mask = np.ones((3, 5), bool)
    mask[0, :2] = False
    mask[2, [1, 3]] = False
    return random_prefix(model, 3, 5, seed).replace(mask=jnp.asarray(mask))


@pytest.mark.parametrize("prefix_kind", [None, "shared", "per_row"])
def test_beam_size_one_equals_greedy(llama, batch, prefix_kind):
    tokens, mask = batch
    prefix = {
        None: None,
        "shared": random_prefix(llama, 1, 4, seed=1),
        "per_row": per_row_prefix(llama, seed=2),
    }[prefix_kind]
    plain = np.asarray(greedy(llama, tokens, mask, max_new_tokens=6, prefix=prefix))
    eos_id = int(plain[0, 2])  # row 0 stops early, the others may not
    want = np.asarray(greedy(llama, tokens, mask, max_new_tokens=6, prefix=prefix, eos_id=eos_id))
    # With length_penalty 0 a finished beam of size one can never be beaten, as in greedy.
    got, scores = beam_search(
        llama,
        tokens,
        mask,
        beam_size=1,
        max_new_tokens=6,
        prefix=prefix,
        eos_id=eos_id,
        length_penalty=0.0,
    )
    np.testing.assert_array_equal(np.asarray(got), want)
    assert generated_length(want[0], eos_id) <= 3
    assert np.all(np.isfinite(np.asarray(scores)))


def brute_force(model, prompt: np.ndarray, length: int, allowed: np.ndarray) -> dict:
    """Total log-prob of every continuation of `length` tokens drawn from `allowed`."""
    heads = np.array(list(itertools.product(allowed, repeat=length - 1)))  # [M, length - 1]
    seqs = np.concatenate([np.tile(prompt, (len(heads), 1)), heads], 1)
    lp = log_probs64(model, seqs)[:, len(prompt) - 1 :]  # [M, length, V]
    head_lp = np.take_along_axis(lp[:, :-1], heads[:, :, None], -1)[..., 0].sum(-1)
    return {
        (*head, last): head_lp[m] + lp[m, -1, last]
        for m, head in enumerate(heads.tolist())
        for last in allowed.tolist()
    }


@pytest.mark.parametrize(
    ("length", "allowed"), [(2, None), (3, (3, 14, 15, 42, 65, 92))], ids=["2-all", "3-six"]
)
def test_beam_search_is_exact_where_greedy_is_myopic(llama, length, allowed):
    """With beam_size >= |allowed| ** (length - 1) beam search is exhaustive."""
    vocab = llama.config.vocab_size
    allowed = np.arange(vocab) if allowed is None else np.array(allowed)
    banned = tuple(sorted(set(range(vocab)) - set(allowed.tolist())))
    beam_size = len(allowed) ** (length - 1)
    for seed in range(20):
        prompt = np.random.default_rng(seed).integers(1, vocab, 5)
        table = brute_force(llama, prompt, length, allowed)
        ranked = sorted(table.values(), reverse=True)
        greedy_seq = np.asarray(
            greedy(
                llama, prompt[None], np.ones((1, 5), bool), max_new_tokens=length, banned_ids=banned
            )
        )[0]
        greedy_lp = table[tuple(greedy_seq.tolist())]
        # Want a clear win for search, and a best sequence that float32 cannot tie.
        if ranked[0] - greedy_lp > 1e-2 and ranked[0] - ranked[1] > 1e-3:
            break
    else:
        pytest.fail("no prompt where greedy decoding is myopic")
    best = max(table, key=table.get)
    seq, score = beam_search(
        llama,
        prompt[None],
        np.ones((1, 5), bool),
        beam_size=beam_size,
        max_new_tokens=length,
        banned_ids=banned,
    )
    assert tuple(np.asarray(seq)[0].tolist()) == best
    np.testing.assert_allclose(float(score[0]), table[best] / length, atol=1e-5)
    assert greedy_lp < table[best] - 1e-2


def test_scores_are_length_penalised_log_probs(llama, batch):
    tokens, mask = batch
    eos_id = 66  # best hypotheses end with it at several lengths, or not at all
    lengths = set()
    for length_penalty in (0.0, 1.0, 2.0):
        seqs, scores = beam_search(
            llama,
            tokens,
            mask,
            beam_size=3,
            max_new_tokens=6,
            eos_id=eos_id,
            length_penalty=length_penalty,
        )
        seqs, scores = np.asarray(seqs), np.asarray(scores)
        # Tokens after eos (padding) cannot change the log-probs before them.
        full = np.concatenate([tokens, seqs], 1)
        full_mask = np.concatenate([mask, np.ones_like(seqs)], 1)
        lp = log_probs64(llama, full, full_mask)[:, tokens.shape[1] - 1 : -1]
        token_lp = np.take_along_axis(lp, seqs[:, :, None], -1)[..., 0]
        for i, row in enumerate(seqs):
            n = generated_length(row, eos_id)
            want = token_lp[i, :n].sum() / n**length_penalty
            np.testing.assert_allclose(scores[i], want, rtol=1e-5, atol=1e-5)
            assert np.all(row[n:] == 0)
            lengths.add(n)
    assert min(lengths) < 6 and max(lengths) == 6 and len(lengths) >= 3, lengths


def test_min_new_tokens_banned_ids_and_padding(llama, batch):
    tokens, mask = batch
    banned, eos_id, pad_id = (56, 97, 98), 19, 7
    free = np.asarray(greedy(llama, tokens, mask, max_new_tokens=6))
    assert set(banned) <= set(free.ravel().tolist()), "the bans would not change anything"
    kwargs = dict(max_new_tokens=6, eos_id=eos_id, pad_id=pad_id, banned_ids=banned)
    hasty = np.asarray(greedy(llama, tokens, mask, **kwargs))
    assert generated_length(hasty[1], eos_id) == 1, "min_new_tokens would change nothing"
    finished = {"greedy": 0, "beam": 0}
    for min_new_tokens in (1, 3):
        outputs = {
            "greedy": greedy(llama, tokens, mask, min_new_tokens=min_new_tokens, **kwargs),
            "beam": beam_search(
                llama, tokens, mask, beam_size=3, min_new_tokens=min_new_tokens, **kwargs
            )[0],
        }
        for name, out in outputs.items():
            for row in np.asarray(out):
                n = generated_length(row, eos_id)
                assert n > min_new_tokens, f"{name}: eos before min_new_tokens"
                assert not set(row[:n].tolist()) & set(banned), f"{name}: banned token generated"
                assert np.all(row[n:] == pad_id), f"{name}: not padded after eos"
                finished[name] += n < len(row)
    assert all(finished.values()), f"no row ended early, padding went untested: {finished}"


def test_per_row_prefix_beam_matches_rows_decoded_alone(gpt2):
    """Each row's prefix must follow it into its beams and through every cache reorder."""
    tokens, mask = padded_batch(np.random.default_rng(5), 97, [6, 3, 4], "left")
    prefix = per_row_prefix(gpt2, seed=6)
    kwargs = dict(beam_size=3, max_new_tokens=5, eos_id=11)
    seqs, scores = beam_search(gpt2, tokens, mask, prefix=prefix, **kwargs)
    for i in range(3):
        alone = PrefixKV(
            keys=prefix.keys[:, i : i + 1],
            values=prefix.values[:, i : i + 1],
            mask=prefix.mask[i : i + 1],
        )
        rows = slice(i, i + 1)
        seq, score = beam_search(gpt2, tokens[rows], mask[rows], prefix=alone, **kwargs)
        np.testing.assert_array_equal(np.asarray(seqs[i]), np.asarray(seq[0]))
        np.testing.assert_allclose(float(scores[i]), float(score[0]), atol=1e-5)


def test_compiles_once_per_shape(llama, batch):
    """Same shapes, new prompts and option values: at most one compile, on the first call."""
    tokens, mask = batch
    other = dict(eos_id=9, pad_id=3, min_new_tokens=2, banned_ids=(1, 2))
    before = decode._beam_search._cache_size()
    beam_search(llama, tokens, mask, beam_size=3, max_new_tokens=6, eos_id=5)
    compiled = decode._beam_search._cache_size()
    beam_search(
        llama,
        (tokens + 10) % 101,
        mask,
        beam_size=3,
        max_new_tokens=6,
        length_penalty=0.5,
        **other,
    )
    assert compiled - before <= 1 and decode._beam_search._cache_size() == compiled

    before = decode._greedy._cache_size()
    greedy(llama, tokens, mask, max_new_tokens=6, eos_id=5)
    compiled = decode._greedy._cache_size()
    greedy(llama, (tokens + 10) % 101, mask, max_new_tokens=6, **other)
    assert compiled - before <= 1 and decode._greedy._cache_size() == compiled


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(beam_size=0), "beam_size"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(min_new_tokens=5), "min_new_tokens"),
        (dict(min_new_tokens=-1), "min_new_tokens"),
        (dict(eos_id=101), "eos_id"),
        (dict(banned_ids=(3, 200)), "banned_ids"),
    ],
)
def test_invalid_options_raise(llama, kwargs, message):
    tokens, mask = left_pad([[1, 2, 3]], pad_id=0)
    options = dict(beam_size=2, max_new_tokens=4) | kwargs
    with pytest.raises(ValueError, match=message):
        beam_search(llama, tokens, mask, **options)
    if "beam_size" not in kwargs:
        options.pop("beam_size")
        with pytest.raises(ValueError, match=message):
            greedy(llama, tokens, mask, **options)
