"""What the methods share: the wrapper base class and artifact writing.

A method's trainable model wraps the frozen base model and is callable like it (plus
`dropout_key=`), and it also exposes the base's decoding interface, so the train step and
the decoders take it unchanged: a decoder-only `Transformer`'s (`hidden_states`,
`init_cache`, `unembed`; `prefix_jax.infer.decode`) or an `EncoderDecoder`'s (`encode`,
`init_cache`, `decode`; `prefix_jax.infer.seq2seq_decode`). One base class serves both
kinds: each call goes to the base model's own method of that name, so the kind lives in
the model alone; a wrapper has only the interface its base has.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from safetensors.numpy import load_file, save_file

from prefix_jax.files import atomic_write
from prefix_jax.models.config import ModelConfig
from prefix_jax.models.seq2seq import EncoderDecoder
from prefix_jax.models.seq2seq_config import Seq2SeqConfig
from prefix_jax.models.transformer import Transformer

Array = jax.Array


class WrappedLM(nnx.Module):
    """Base class of method wrappers: `self.base` plus whatever the method adds.

    Subclasses set `self.base` and override `forward_kwargs` (extra arguments of the base's
    forward pass: a prefix, LoRA deltas, top-layer weights) and, for an encoder-decoder's
    decoding calls, `stack_kwargs` (LoRA's deltas of each stack); prompt tuning overrides
    the calls themselves. A prefix is passed to decoding explicitly, not added here.
    """

    base: Transformer | EncoderDecoder

    @property
    def config(self) -> ModelConfig | Seq2SeqConfig:
        return self.base.config

    def forward_kwargs(self, dropout_key: Array | None) -> dict:
        """Extra base-model arguments; dropout applies only when a key (training) is given."""
        del dropout_key
        return {}

    def stack_kwargs(self, stack: str) -> dict:
        """Extra arguments of an encoder-decoder's `encode` (`stack="encoder"`) or
        `init_cache` / `decode` (`"decoder"`) calls."""
        del stack
        return {}

    def __call__(self, *args, dropout_key: Array | None = None, **kw):
        """The base model's forward pass (logits in float32) with the method's additions."""
        return self.base(*args, **self.forward_kwargs(dropout_key), **kw)

    def hidden_states(
        self,
        tokens: Array,
        attention_mask: Array | None = None,
        *,
        dropout_key: Array | None = None,
        **kw,
    ):
        """Decoder-only: final-norm hidden states and the advanced cache, as the base."""
        return self.base.hidden_states(
            tokens, attention_mask, **self.forward_kwargs(dropout_key), **kw
        )

    def init_cache(self, *args, **kw):
        return self.base.init_cache(*args, **self.stack_kwargs("decoder"), **kw)

    def unembed(self, hidden: Array) -> Array:
        return self.base.unembed(hidden)

    def encode(self, tokens: Array, attention_mask: Array | None = None, **kw) -> Array:
        """Encoder-decoder: the encoder states, as the base."""
        return self.base.encode(tokens, attention_mask, **self.stack_kwargs("encoder"), **kw)

    def decode(self, tokens: Array, attention_mask: Array | None, encoded, encoded_mask, **kw):
        """Encoder-decoder: decoder logits and cache, as the base."""
        return self.base.decode(
            tokens, attention_mask, encoded, encoded_mask, **self.stack_kwargs("decoder"), **kw
        )


def gather(x: Array) -> Array:
    """`x` itself when this process holds all of it, else its full value gathered here.

    A collective across processes when the array spans several: call it on every process.
    """
    if x.is_fully_addressable:
        return x
    return jnp.asarray(multihost_utils.process_allgather(x, tiled=True))


def write_artifact(
    directory: str | Path,
    weights_name: str,
    tensors: dict[str, np.ndarray],
    config_name: str,
    meta: dict,
) -> Path:
    """Write `tensors` as safetensors and `meta` as JSON; each via a temporary then a rename."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}
    atomic_write(directory / weights_name, lambda p: save_file(tensors, p))
    atomic_write(directory / config_name, lambda p: p.write_text(json.dumps(meta, indent=2)))
    return directory


def read_artifact(
    directory: str | Path, weights_name: str, config_name: str, expected_format: str
) -> tuple[dict[str, np.ndarray], dict]:
    """The tensors and metadata `write_artifact` wrote; clear errors for a wrong directory."""
    directory = Path(directory)
    for f in (directory / config_name, directory / weights_name):
        if not f.exists():
            raise FileNotFoundError(f"{f} not found: not a {expected_format} export directory")
    return load_file(directory / weights_name), json.loads((directory / config_name).read_text())
