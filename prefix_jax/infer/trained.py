"""A finished run's trained model for decoding, whatever its method.

A run is read through its method (`prefix_jax.methods.registry`): from the method's small
export (`<workdir>/export`, or a directory given by the user), or, for a method without
one (full and top-k fine-tuning), from the run's latest orbax checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import ml_collections
from flax import nnx

from prefix_jax.methods import registry
from prefix_jax.models import Transformer
from prefix_jax.models.kv import PrefixKV
from prefix_jax.models.seq2seq import EncoderDecoder, Seq2SeqPrefix
from prefix_jax.train.checkpoint import Checkpointer
from prefix_jax.train.step import OptimConfig, initial_state, make_optimizer


@dataclasses.dataclass
class Trained:
    """What decoding needs: the model (a method wrapper or the base), the prefix of a
    prefix-tuning run (passed to the decoder), and where the weights came from."""

    model: nnx.Module
    prefix: PrefixKV | Seq2SeqPrefix | None
    source: str


def load_trained(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    model: Transformer | EncoderDecoder,
    tokenizer=None,
    artifact: str | Path | None = "",
) -> Trained:
    """The trained model of the run in `workdir`; `artifact=None` gives the untuned base,
    `""` the run's own export (or checkpoint for fine-tuning), a path another export."""
    if artifact is None:
        return Trained(model, None, "base model")
    method = registry.get(config.method)
    if not method.has_artifact:
        if artifact:
            method.load(artifact, model)  # raises, saying where this method's weights are
        return Trained(restore_checkpoint(config, workdir, model, tokenizer), None, "checkpoint")
    directory = Path(artifact or Path(workdir) / "export")
    loaded = method.load(directory, model)
    return Trained(loaded.model, loaded.prefix, str(directory))


def restore_checkpoint(
    config: ml_collections.ConfigDict, workdir: str | Path, model: Transformer, tokenizer=None
) -> nnx.Module:
    """The method's model with the trainable weights of the latest checkpoint in `workdir`.

    The optimizer state is restored too (orbax restores the saved tree), so this needs the
    memory training needed for it.
    """
    directory = Path(workdir) / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} not found: no checkpoint to evaluate")
    lm, trainable, _ = registry.get(config.method).create(model, config, tokenizer)
    graphdef, params, frozen = nnx.split(lm, trainable, ...)
    tx = make_optimizer(OptimConfig(total_steps=1, **config.optim.to_dict()), trainable)

    checkpoints = Checkpointer(directory)
    try:
        restored = checkpoints.restore_latest(
            jax.eval_shape(functools.partial(initial_state, tx), params)
        )
    finally:
        checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"{directory} holds no finished checkpoint")
    return nnx.merge(graphdef, restored[0].params, frozen)
