"""What the baseline methods share: the wrapper interface and artifact writing.

A method's trainable model wraps the frozen base `Transformer` and is callable like it
(plus `dropout_key=`), and it also exposes the base's decoding interface (`config`,
`init_cache`, `hidden_states`, `unembed`), so `prefix_jax.infer.decode` and the train step take
it unchanged. Around an `EncoderDecoder` the same holds with its interface (`encode`,
`init_cache`, `decode`; `prefix_jax.infer.seq2seq_decode`).
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

from prefix_jax.models.config import ModelConfig
from prefix_jax.models.kv import KVCache
from prefix_jax.models.seq2seq import EncoderDecoder, Seq2SeqDeltas
from prefix_jax.models.seq2seq_config import Seq2SeqConfig
from prefix_jax.models.transformer import Transformer

Array = jax.Array


class WrappedLM(nnx.Module):
    """Base class of method wrappers: `self.base` plus whatever `forward_kwargs` adds.

    Subclasses set `self.base` and override `forward_kwargs` (extra arguments of the base
    forward pass, e.g. LoRA deltas) or `hidden_states` itself (prompt tuning).
    """

    base: Transformer

    @property
    def config(self) -> ModelConfig:
        return self.base.config

    def forward_kwargs(self, dropout_key: Array | None) -> dict:
        """Extra base-model arguments; dropout applies only when a key (training) is given."""
        del dropout_key
        return {}

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        return self.base.init_cache(batch, max_len, dtype)

    def unembed(self, hidden: Array) -> Array:
        return self.base.unembed(hidden)

    def hidden_states(
        self,
        tokens: Array,
        attention_mask: Array | None = None,
        *,
        dropout_key: Array | None = None,
        **kw,
    ) -> tuple[Array, KVCache | None]:
        return self.base.hidden_states(
            tokens, attention_mask, **self.forward_kwargs(dropout_key), **kw
        )

    def __call__(
        self,
        tokens: Array,
        attention_mask: Array | None = None,
        *,
        dropout_key: Array | None = None,
        **kw,
    ) -> tuple[Array, KVCache | None]:
        """Logits [B, T, vocab] (float32) and the advanced cache, as the base model."""
        hidden, cache = self.hidden_states(tokens, attention_mask, dropout_key=dropout_key, **kw)
        return self.unembed(hidden), cache


class Seq2SeqWrapped(nnx.Module):
    """Base class of method wrappers around a frozen `EncoderDecoder`.

    Training calls it like the base (`__call__` with `dropout_key=`), adding whatever
    `forward_kwargs` returns (a `Seq2SeqPrefix` as `prefix`, `Seq2SeqDeltas` as `deltas`).
    Decoding calls `encode` / `init_cache` / `decode`, which add the method's `deltas()`;
    a prefix is passed to decoding explicitly, as for the decoder-only model.
    """

    base: EncoderDecoder

    @property
    def config(self) -> Seq2SeqConfig:
        return self.base.config

    def forward_kwargs(self, dropout_key: Array | None) -> dict:
        """Extra base-model arguments; dropout applies only when a key (training) is given."""
        del dropout_key
        return {}

    def deltas(self, dropout_key: Array | None = None) -> Seq2SeqDeltas:
        """Low-rank updates of each stack (none unless the method has them)."""
        del dropout_key
        return Seq2SeqDeltas()

    def encode(self, tokens: Array, attention_mask: Array | None = None, **kw) -> Array:
        return self.base.encode(tokens, attention_mask, deltas=self.deltas().encoder, **kw)

    def init_cache(self, encoded: Array, encoded_mask: Array, max_len: int, **kw):
        return self.base.init_cache(
            encoded, encoded_mask, max_len, deltas=self.deltas().decoder, **kw
        )

    def decode(self, tokens: Array, attention_mask: Array | None, encoded, encoded_mask, **kw):
        return self.base.decode(
            tokens, attention_mask, encoded, encoded_mask, deltas=self.deltas().decoder, **kw
        )

    def unembed(self, hidden: Array) -> Array:
        return self.base.unembed(hidden)

    def __call__(
        self,
        source: Array,
        source_mask: Array | None,
        target: Array,
        target_mask: Array | None,
        *,
        dropout_key: Array | None = None,
    ) -> Array:
        """Teacher-forced logits [B, T, vocab] (float32), as the base model."""
        return self.base(
            source, source_mask, target, target_mask, **self.forward_kwargs(dropout_key)
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


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file and rename, so a killed run never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)
