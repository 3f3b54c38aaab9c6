"""A pretrained model from a checkpoint: read (`weights`), built abstractly, then placed.

The model is built abstractly (`nnx.eval_shape`) and filled from the checkpoint, so a
model is never initialized randomly first and every expected tensor must be present.

Safetensors files are memory-mapped and every name-map transform is a view, so nothing is
read until a device asks for its slice: each parameter is placed slice by slice
(`jax.make_array_from_callback`), each slice read from the mapped file and converted to
the parameter dtype on its own. A process thus reads only the slices its devices hold, and
the host never holds a full (float32 or stacked) copy of the model.

The tokenizer comes from the checkpoint's own files (a directory's tokenizer files, a
GGUF's metadata) or from the `tokenizer=` argument. A model-only `save_pretrained`
directory has none: loading it with a tokenizer fails with a message that says so, rather
than with transformers' backend error or an empty tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from prefix_jax.models.attention import pin_platform
from prefix_jax.models.catalog import resolve
from prefix_jax.models.config import ModelConfig
from prefix_jax.models.seq2seq import EncoderDecoder
from prefix_jax.models.seq2seq_config import Seq2SeqConfig
from prefix_jax.models.tokenizer_cache import gguf_tokenizer
from prefix_jax.models.transformer import Transformer
from prefix_jax.models.weights import CheckpointError, read_checkpoint
from prefix_jax.scale import sharding

# Files from which transformers builds a tokenizer; a directory with none of them has no
# tokenizer (AutoTokenizer would fail opaquely or, for some families, return an empty one).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.txt",
    "tekken.json",
)


def load(
    path_or_name: str,
    *,
    param_dtype=jnp.float32,
    dtype=jnp.float32,
    remat_policy: str | None = None,
    with_tokenizer: bool = True,
    tokenizer: Any = None,
    mesh: Mesh | None = None,
    rules=sharding.DEFAULT_RULES,
    attention: str = "auto",
):
    """Load a model and its tokenizer from an HF directory, a GGUF file or a catalog name.

    Returns `(model, tokenizer)`, the model an `EncoderDecoder` for BART / T5 directories.
    The tokenizer is the checkpoint's own, or `tokenizer` when given (a tokenizer, or a
    directory / .gguf file / catalog name to read one from); None when
    `with_tokenizer=False`. With a `mesh`, weights are placed sharded by the logical-axis
    `rules`. `attention` names the kernel (`prefix_jax.models.attention.IMPLEMENTATIONS`).
    """
    path = resolve(path_or_name)
    config, tensors = read_checkpoint(path)  # memory maps: nothing read yet
    if with_tokenizer and tokenizer is None:
        check_tokenizer_files(path)  # before the weights are placed
    model = build(
        config,
        tensors,
        param_dtype=param_dtype,
        dtype=dtype,
        remat_policy=remat_policy,
        mesh=mesh,
        rules=rules,
        attention=attention,
    )
    if not with_tokenizer:
        return model, None
    if tokenizer is None:
        return model, load_tokenizer(path)
    if isinstance(tokenizer, str | Path):
        return model, load_tokenizer(resolve(str(tokenizer)))
    return model, tokenizer


def check_tokenizer_files(path: Path) -> None:
    """Fail, naming the way out, when a checkpoint directory holds no tokenizer."""
    if path.is_dir() and not any((path / f).exists() for f in TOKENIZER_FILES):
        raise CheckpointError(
            f"{path} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); a "
            "model-only save_pretrained directory holds only weights and config. Pass "
            "tokenizer=<a tokenizer, or a directory or name to read one from>, or "
            "with_tokenizer=False to load the model alone."
        )


def load_tokenizer(path: Path):
    """Tokenizer from local files only (HF directory files, or GGUF metadata, converted
    once and cached: `tokenizer_cache`)."""
    from transformers import AutoTokenizer

    check_tokenizer_files(path)
    if path.is_dir():
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    return gguf_tokenizer(path)


def build(
    config: ModelConfig | Seq2SeqConfig,
    tensors: dict[str, np.ndarray],
    *,
    param_dtype=jnp.float32,
    dtype=jnp.float32,
    remat_policy: str | None = None,
    mesh: Mesh | None = None,
    rules=sharding.DEFAULT_RULES,
    attention: str = "auto",
) -> Transformer | EncoderDecoder:
    """Create a Transformer (or EncoderDecoder) whose parameters are exactly `tensors`.

    With a `mesh`, parameters are created sharded by `rules` (see `prefix_jax.scale.sharding`),
    and the model constrains its activations by the same rules.
    """
    model = abstract_model(
        config,
        param_dtype=param_dtype,
        dtype=dtype,
        remat_policy=remat_policy,
        mesh=mesh,
        rules=rules,
        attention=attention,
    )
    expected = dict(_param_paths(model))
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise CheckpointError(f"checkpoint lacks tensors for: {', '.join(missing)}")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise CheckpointError(f"checkpoint has tensors the model does not use: {unexpected}")
    for name, var in expected.items():
        array = tensors[name]
        if tuple(array.shape) != tuple(var.get_value().shape):
            raise CheckpointError(
                f"tensor {name!r} has shape {tuple(array.shape)} but the config implies "
                f"{tuple(var.get_value().shape)}"
            )
    for name, var in expected.items():
        var.set_value(_place(tensors.pop(name), param_dtype, var, mesh, rules))
    return model


def abstract_model(
    config: ModelConfig | Seq2SeqConfig,
    *,
    param_dtype=jnp.float32,
    dtype=jnp.float32,
    remat_policy: str | None = None,
    mesh: Mesh | None = None,
    rules=sharding.DEFAULT_RULES,
    constrain_activations: bool = True,
    wrap: Callable[[Transformer], nnx.Module] | None = None,
    attention: str = "auto",
) -> nnx.Module:
    """A Transformer whose parameters are shapes only (`jax.ShapeDtypeStruct`): no memory.

    With a mesh its activations are constrained by `rules` (unless `constrain_activations`
    is False), and `attention="auto"` picks the kernel of the mesh's platform (which, when
    compiling ahead of time for a TPU topology, is not this host's); `wrap(model)`, built
    under the same abstract evaluation, returns e.g. a method's model around it.
    """
    where = None
    if mesh is not None and constrain_activations:
        where = sharding.ActivationSharding(mesh, tuple(rules))
    if mesh is not None:
        attention = pin_platform(attention, mesh.devices.flat[0].platform)

    def make() -> nnx.Module:
        model = model_class(config)(
            config,
            rngs=nnx.Rngs(0),
            param_dtype=param_dtype,
            dtype=dtype,
            remat_policy=remat_policy,
            activation_sharding=where,
            attention=attention,
        )
        return model if wrap is None else wrap(model)

    return nnx.eval_shape(make)


def model_class(config: ModelConfig | Seq2SeqConfig) -> type[Transformer | EncoderDecoder]:
    """The model a config describes: the one place the two kinds part ways."""
    match config:
        case Seq2SeqConfig():
            return EncoderDecoder
        case ModelConfig():
            return Transformer
    raise TypeError(f"not a model config: {type(config).__name__}")


def _place(array: np.ndarray, param_dtype, var: nnx.Param, mesh, rules) -> jax.Array:
    """Put a host array on devices, sharded by its logical axes when a mesh is given.

    Each device receives only its slice (no full copy on one device first), read and
    converted on its own, and in a multi-process run each process fills only its
    addressable shards.
    """
    dtype = jnp.dtype(param_dtype)
    if mesh is None:
        return jnp.asarray(np.asarray(array[(slice(None),) * array.ndim], dtype=dtype))
    spec = sharding.logical_to_spec(var.get_metadata("logical_axes"), array.shape, rules, mesh)
    return jax.make_array_from_callback(
        array.shape, NamedSharding(mesh, spec), lambda index: np.asarray(array[index], dtype)
    )


def _param_paths(model: nnx.Module) -> Iterator[tuple[str, nnx.Param]]:
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            yield ".".join(str(p) for p in path), var


def model_identity(model: Transformer | EncoderDecoder) -> dict:
    """What an exported artifact records to check it is loaded against the same model."""
    c = model.config
    if isinstance(c, Seq2SeqConfig):
        layers = {
            "num_encoder_layers": c.num_encoder_layers,
            "num_decoder_layers": c.num_decoder_layers,
        }
    else:
        layers = {"num_layers": c.num_layers}
    return {
        "name": c.name,
        "family": c.family,
        **layers,
        "hidden_size": c.hidden_size,
        "num_kv_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
    }
