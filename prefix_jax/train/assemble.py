"""From a config to the pieces of a run: model, data splits, method. Shared by the CLIs."""

from __future__ import annotations

import logging

import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from prefix_jax.data import (
    BatchIterator,
    EncodeConfig,
    EncodedDataset,
    Example,
    ShuffledBatches,
    encode_examples,
    load_task,
    split_by_source,
)
from prefix_jax.data.pairs import EncodedPairs, PairBatchIterator, encode_pairs
from prefix_jax.models import load
from prefix_jax.models.seq2seq import EncoderDecoder
from prefix_jax.scale import sharding

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype(name: str):
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join(DTYPES)}")
    return DTYPES[name]


def make_mesh(config: ml_collections.ConfigDict) -> Mesh | None:
    """The config's mesh over all devices; an empty `config.mesh` means one device, no mesh."""
    if not config.mesh:
        return None
    return sharding.make_mesh([tuple(axis) for axis in config.mesh])


def sharding_rules(config: ml_collections.ConfigDict) -> tuple:
    return tuple(
        (name, tuple(t) if isinstance(t, list) else t) for name, t in config.sharding_rules
    )


def load_model(config: ml_collections.ConfigDict, mesh: Mesh | None = None):
    """Model and tokenizer; with a mesh the weights are created sharded by the config rules."""
    return load(
        config.model,
        param_dtype=dtype(config.param_dtype),
        dtype=dtype(config.dtype),
        remat_policy=config.remat or None,
        attention=config.attention,
        mesh=mesh,
        rules=sharding_rules(config) if mesh is not None else sharding.DEFAULT_RULES,
    )


def encode_config(config: ml_collections.ConfigDict) -> EncodeConfig:
    d = config.data
    return EncodeConfig(
        separator=d.separator,
        max_source_tokens=d.max_source_tokens,
        max_target_tokens=d.max_target_tokens,
    )


def is_encoder_decoder(model) -> bool:
    """Whether `model` (a base model or a method's wrapper around one) is an encoder-decoder."""
    return isinstance(getattr(model, "base", model), EncoderDecoder)


def encode_data(
    config: ml_collections.ConfigDict, model, tokenizer, examples: list[Example]
) -> EncodedDataset | EncodedPairs:
    """Training sequences for a decoder-only model, (source, target) pairs for an
    encoder-decoder."""
    if is_encoder_decoder(model):
        start = getattr(model, "base", model).config.decoder_start_id
        return encode_pairs(examples, tokenizer, start, encode_config(config))
    return encode_examples(examples, tokenizer, encode_config(config))


def batch_iterator(data: EncodedDataset | EncodedPairs, batch_size: int, **kw) -> ShuffledBatches:
    """The resumable, bucketed batch order of either kind of data."""
    cls = PairBatchIterator if isinstance(data, EncodedPairs) else BatchIterator
    return cls(data, batch_size, **kw)


def load_splits(config: ml_collections.ConfigDict) -> tuple[list[Example], list[Example]]:
    """(train, validation) examples; validation is held out by source when configured.

    Order of operations, each by source (MR), so no source is in two splits:

    1. `data.eval_sources=N`: hold out N sources of the training file, chosen with
       `data.split_seed` alone, so the held-out set is the same for every trial seed and
       every training-set size.
    2. `data.tune_sources=K`: hold out K further sources of what is left and return *them*
       as the validation split (for choosing hyperparameters on a loss that never sees the
       held-out MRs of step 1); those K sources are not trained on either.
    3. `data.train_fraction` or `data.train_examples` (not both): subsample the training
       sources with `seed` (see `_keep_examples_of_sources`).
    """
    d = config.data
    split_seed = d.split_seed  # an old run's config.json: see prefix_jax.config.upgrade
    train = _load(d, d.train_split)
    if d.eval_sources:
        train, evaluation = split_by_source(train, d.eval_sources, seed=split_seed)
    else:
        evaluation = _load(d, d.eval_split)
    tune_sources = d.tune_sources
    if tune_sources:
        train, evaluation = split_by_source(train, tune_sources, seed=split_seed)
    train_examples = d.train_examples
    if d.train_fraction < 1.0 and train_examples:
        raise ValueError(
            "set data.train_fraction or data.train_examples, not both "
            f"(got {d.train_fraction} and {train_examples})"
        )
    if d.train_fraction < 1.0:
        train = _keep_fraction_of_sources(train, d.train_fraction, config.seed)
    if train_examples:
        train = _keep_examples_of_sources(train, train_examples, config.seed)
    return train, evaluation


def _load(d: ml_collections.ConfigDict, split: str) -> list[Example]:
    result = load_task(d.task, d.path, split=split, skip_bad=d.skip_bad)
    if result.n_skipped:
        log.warning("%s[%s]: skipped %d bad records", d.path, split, result.n_skipped)
    return result.examples


def _source_order(examples: list[Example], seed: int) -> list[str]:
    """Distinct sources in a seeded random order (shared by both subsamplers, so for one
    seed a smaller subsample is always contained in a larger one)."""
    sources = list(dict.fromkeys(e.source for e in examples))
    return [sources[i] for i in np.random.default_rng([seed, 1]).permutation(len(sources))]


def _keep_fraction_of_sources(examples: list[Example], fraction: float, seed: int):
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"data.train_fraction must be in (0, 1], got {fraction}")
    order = _source_order(examples, seed)
    keep = set(order[: max(1, round(fraction * len(order)))])
    return [e for e in examples if e.source in keep]


def _keep_examples_of_sources(examples: list[Example], n: int, seed: int) -> list[Example]:
    """Exactly `n` examples, taken by source: whole sources in the seeded order until the
    next one would overshoot, then the first examples (in file order) of that next source
    to make up `n`. So every kept source but at most one keeps all its references, the
    count is exact (the table's size is the trained size), and for one seed the subsample
    of a smaller `n` is contained in that of a larger one. The result keeps file order."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"data.train_examples must be an integer >= 0 (0 = all), got {n!r}")
    if n > len(examples):
        raise ValueError(
            f"data.train_examples={n} but the training split has only {len(examples)} examples"
        )
    sizes: dict[str, int] = {}
    for e in examples:
        sizes[e.source] = sizes.get(e.source, 0) + 1
    quota: dict[str, int] = {}
    left = n
    for source in _source_order(examples, seed):
        if left == 0:
            break
        quota[source] = min(sizes[source], left)
        left -= quota[source]
    kept = []
    for e in examples:
        if quota.get(e.source, 0) > 0:
            kept.append(e)
            quota[e.source] -= 1
    return kept
