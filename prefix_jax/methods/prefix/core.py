"""Prefix-tuning (Li & Liang, 2021): trainable per-layer keys/values in front of every layer.

The prefix lives in its own variable type, `PrefixParam`, so it is a separate partition of
the model: gradients, optimizer state and checkpoints can select it by type alone.

Two parameterizations:
- `reparam="none"`: a table [p, layers * 2 * kv_dim] learned directly (the "deep prompt" /
  P-tuning v2 method is exactly this);
- `reparam="mlp"`: embedding [p, e] -> Linear(e, hidden) -> tanh -> Linear(hidden,
  layers * 2 * kv_dim), the paper's reparameterization that stabilizes training. It is
  collapsed into a table at export (`Prefix.table()`).

Each row of the table is laid out as [layers, 2 (key, value), kv_heads, head_dim]: the
layout of PEFT's `prompt_embeddings`, so export to PEFT is a reshape. GQA models get
prefixes in key/value-head space.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from prefix_jax.methods.common import WrappedLM
from prefix_jax.models.config import ModelConfig
from prefix_jax.models.kv import PrefixKV
from prefix_jax.models.seq2seq import EncoderDecoder, Seq2SeqPrefix
from prefix_jax.models.seq2seq_config import Seq2SeqConfig
from prefix_jax.models.transformer import Transformer

Array = jax.Array
REPARAMS = ("none", "mlp")
POSITION_MODES = ("from_zero", "after_prefix")
# Li & Liang's three prefixes of an encoder-decoder model: encoder self-attention, decoder
# self-attention, decoder cross-attention. A decoder-only model has the decoder's alone.
PARTS = ("encoder", "decoder", "cross")


@dataclasses.dataclass(frozen=True)
class PrefixShape:
    """The stack of attention layers one prefix feeds. A decoder's `ModelConfig` has these
    fields too, so it serves as its own prefix shape."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int  # the MLP's default input width (Li & Liang: d_model)

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim


def prefix_shapes(config: ModelConfig | Seq2SeqConfig) -> dict[str, PrefixShape]:
    """Every prefix a model can take, by part: a decoder's self-attention, or an
    encoder-decoder's encoder self-attention, decoder self- and cross-attention."""
    if not isinstance(config, Seq2SeqConfig):
        return {"decoder": PrefixShape(**{f: getattr(config, f) for f in _SHAPE_FIELDS})}
    c = config

    def stack(layers: int) -> PrefixShape:
        return PrefixShape(layers, c.num_kv_heads, c.head_dim, c.hidden_size)

    decoder = stack(c.num_decoder_layers)
    return {"encoder": stack(c.num_encoder_layers), "decoder": decoder, "cross": decoder}


_SHAPE_FIELDS = ("num_layers", "num_kv_heads", "head_dim", "hidden_size")


class PrefixParam(nnx.Param):
    """Trainable prefix parameters: the partition prefix-tuning optimizes."""


@dataclasses.dataclass(frozen=True)
class PrefixConfig:
    """How the prefix is shaped, parameterized and initialized."""

    length: int = 10
    reparam: str = "mlp"
    hidden: int = 512  # MLP hidden width (Li & Liang: 512)
    embed_dim: int | None = None  # MLP input width; None = d_model (Li & Liang), PEFT: kv_dim
    dropout: float = 0.0
    init: str = "random"  # random | vocab | text:<words>
    init_scale: float = 1.0  # std of the random table / embedding (N(0, 1) as nn.Embedding)
    init_fit_steps: int = 300  # Adam steps fitting the MLP output to activations (mlp + vocab/text)
    positions: str = "from_zero"  # from_zero | after_prefix (PEFT / original code)
    seed: int = 0
    # Comma-separated PARTS to train ("encoder,cross"); "" = every attention the model has.
    parts: str = ""

    def __post_init__(self) -> None:
        if self.length <= 0:
            raise ValueError(f"prefix length must be positive, got {self.length}")
        if self.reparam not in REPARAMS:
            raise ValueError(f"prefix reparam must be one of {REPARAMS}, got {self.reparam!r}")
        if self.reparam == "mlp" and self.hidden <= 0:
            raise ValueError(f"prefix MLP hidden width must be positive, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"prefix dropout must be in [0, 1), got {self.dropout}")
        if self.init not in ("random", "vocab") and not self.init.startswith("text:"):
            raise ValueError(
                f"prefix init must be 'random', 'vocab' or 'text:<words>', got {self.init!r}"
            )
        if self.init.startswith("text:") and not self.init[5:].strip():
            raise ValueError("prefix init 'text:' needs words after the colon")
        if self.positions not in POSITION_MODES:
            raise ValueError(f"prefix positions must be one of {POSITION_MODES}")
        unknown = [part for part in self.part_list() if part not in PARTS]
        if unknown:
            raise ValueError(f"prefix parts {unknown} unknown; parts are {', '.join(PARTS)}")

    def part_list(self) -> list[str]:
        return [part.strip() for part in self.parts.split(",") if part.strip()]

    def selected_parts(self, available: tuple[str, ...]) -> tuple[str, ...]:
        """The parts to train, in `PARTS` order, of those the model has (`available`)."""
        chosen = self.part_list() or list(available)
        missing = [part for part in chosen if part not in available]
        if missing:
            raise ValueError(
                f"prefix parts {missing} do not exist in this model; it has: {', '.join(available)}"
            )
        return tuple(part for part in PARTS if part in chosen)

    def num_params(self, model: ModelConfig | PrefixShape) -> int:
        """Trainable parameter count of one part (the formula the tests check against PEFT)."""
        width = 2 * model.num_layers * model.kv_dim
        if self.reparam == "none":
            return self.length * width
        e = self.embed_dim or model.hidden_size
        return self.length * e + e * self.hidden + self.hidden + self.hidden * width + width


def _torch_linear_init(rngs: nnx.Rngs, fan_in: int, shape: tuple[int, ...]) -> Array:
    bound = 1.0 / fan_in**0.5
    return jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound)


class Prefix(nnx.Module):
    """Produces the per-layer prefix keys/values (`PrefixKV`) for a given model config."""

    def __init__(
        self, model_config: ModelConfig | PrefixShape, config: PrefixConfig, *, rngs: nnx.Rngs
    ):
        self.config = config
        self.model_config = model_config
        p, width = config.length, 2 * model_config.num_layers * model_config.kv_dim
        if config.reparam == "none":
            self.table_param = PrefixParam(
                jax.random.normal(rngs.params(), (p, width)) * config.init_scale,
                logical_axes=("prefix_len", "prefix_kv"),
            )
        else:
            e, h = config.embed_dim or model_config.hidden_size, config.hidden
            self.embedding = PrefixParam(
                jax.random.normal(rngs.params(), (p, e)) * config.init_scale,
                logical_axes=("prefix_len", "prefix_embed"),
            )
            self.w1 = PrefixParam(
                _torch_linear_init(rngs, e, (e, h)), logical_axes=("prefix_embed", "prefix_hidden")
            )
            self.b1 = PrefixParam(
                _torch_linear_init(rngs, e, (h,)), logical_axes=("prefix_hidden",)
            )
            self.w2 = PrefixParam(
                _torch_linear_init(rngs, h, (h, width)), logical_axes=("prefix_hidden", "prefix_kv")
            )
            self.b2 = PrefixParam(
                _torch_linear_init(rngs, h, (width,)), logical_axes=("prefix_kv",)
            )
        self.dropout = nnx.Dropout(config.dropout)

    def table(self) -> Array:
        """The prefix as a [p, layers * 2 * kv_dim] table; the MLP evaluated (collapsed)."""
        if self.config.reparam == "none":
            return self.table_param[...]
        return mlp_table(
            self.embedding[...], self.w1[...], self.b1[...], self.w2[...], self.b2[...]
        )

    def __call__(self, dropout_key: Array | None = None) -> PrefixKV:
        """The prefix keys/values; dropout applies only when a key (training) is given."""
        table = self.table()
        if dropout_key is not None and self.config.dropout > 0:
            table = self.dropout(table, deterministic=False, rngs=dropout_key)
        return table_to_prefix(table, self.model_config, self.config.positions == "after_prefix")


def mlp_table(embedding: Array, w1: Array, b1: Array, w2: Array, b2: Array) -> Array:
    return jnp.tanh(embedding @ w1 + b1) @ w2 + b2


def table_to_prefix(
    table: Array, c: ModelConfig | PrefixShape, after_prefix: bool = False
) -> PrefixKV:
    """[p, layers*2*kv_dim] (PEFT layout) -> PrefixKV with keys/values [L, 1, p, kv, hd]."""
    p = table.shape[0]
    kv = table.reshape(p, c.num_layers, 2, c.num_kv_heads, c.head_dim)
    kv = jnp.transpose(kv, (2, 1, 0, 3, 4))[:, :, None]  # [2, L, 1, p, kv, hd]
    return PrefixKV(keys=kv[0], values=kv[1], positions_after_prefix=after_prefix)


def prefix_to_table(prefix: PrefixKV) -> Array:
    """Inverse of `table_to_prefix` for a batch-1 prefix."""
    kv = jnp.stack([prefix.keys[:, 0], prefix.values[:, 0]])  # [2, L, p, kv, hd]
    kv = jnp.transpose(kv, (2, 1, 0, 3, 4))
    return kv.reshape(kv.shape[0], -1)


class PrefixParts(nnx.Module):
    """Li & Liang's prefixes of an encoder-decoder: one `Prefix` per part (`encoder`,
    `decoder`, `cross`), each with its own table or MLP, all of one `PrefixConfig`."""

    def __init__(self, shapes: dict[str, PrefixShape], config: PrefixConfig):
        self.config = config
        self.parts = tuple(part for part in PARTS if part in shapes)
        for part in self.parts:  # a seed per part, so the parts start different
            rngs = nnx.Rngs(config.seed * len(PARTS) + PARTS.index(part))
            setattr(self, part, Prefix(shapes[part], config, rngs=rngs))

    def __call__(self, dropout_key: Array | None = None) -> Seq2SeqPrefix:
        """Each part's keys/values; dropout (an independent mask per part) only with a key."""
        kv = {}
        for i, part in enumerate(self.parts):
            key = None if dropout_key is None else jax.random.fold_in(dropout_key, i)
            kv[part] = getattr(self, part)(key)
        return Seq2SeqPrefix(**kv)


class PrefixLM(WrappedLM):
    """A frozen base model plus a trainable prefix (a decoder's `Prefix`, an
    encoder-decoder's `PrefixParts`); callable like the base model."""

    def __init__(self, base: Transformer | EncoderDecoder, prefix: Prefix | PrefixParts):
        shapes = prefix_shapes(base.config)
        parts = prefix.parts if isinstance(prefix, PrefixParts) else ("decoder",)
        if isinstance(prefix, PrefixParts) != isinstance(base, EncoderDecoder):
            raise ValueError(
                "an encoder-decoder takes prefix parts (PrefixParts), a decoder-only model "
                "one Prefix"
            )
        for part in parts:
            got = getattr(prefix, part) if isinstance(prefix, PrefixParts) else prefix
            got, want = got.model_config, shapes[part]
            fields = ("num_layers", "num_kv_heads", "head_dim")
            if tuple(getattr(got, f) for f in fields) != tuple(getattr(want, f) for f in fields):
                raise ValueError(
                    f"{part} prefix built for layers/kv_heads/head_dim "
                    f"{tuple(getattr(got, f) for f in fields)} does not match the model "
                    f"{tuple(getattr(want, f) for f in fields)}"
                )
        self.base = base
        self.prefix = prefix

    def forward_kwargs(self, dropout_key: Array | None) -> dict:
        return {"prefix": self.prefix(dropout_key)}


def activations_table(model: Transformer, tokens: Array, length: int) -> Array:
    """Each layer's keys/values of real tokens, as a [length, layers*2*kv_dim] table.

    The activations of `tokens` (a 1-D id sequence) are repeated or trimmed to `length`,
    as Li & Liang initialize prefixes from the activations of real words.
    """
    tokens = _checked_tokens(tokens)
    cache = model.init_cache(1, tokens.shape[0], dtype=jnp.float32)
    _, cache = model.hidden_states(tokens[None], cache=cache)
    return _repeated_table(PrefixKV(keys=cache.keys, values=cache.values), length)


def _checked_tokens(tokens: Array) -> Array:
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 1 or tokens.shape[0] == 0:
        raise ValueError("prefix init needs a non-empty 1-D token sequence")
    return tokens


def _repeated_table(kv: PrefixKV, length: int) -> Array:
    """The table of a batch-1 `kv`, its rows repeated or trimmed to `length`."""
    table = prefix_to_table(kv)
    return jnp.tile(table, (-(-length // table.shape[0]), 1))[:length]


def seq2seq_activations_tables(
    model: EncoderDecoder, tokens: Array, length: int
) -> dict[str, Array]:
    """Each part's keys/values of real tokens, [length, layers*2*kv_dim] tables: the
    encoder's self-attention over `tokens` as the source, the cross-attention's keys/values
    of that encoding, and the decoder's self-attention with `tokens` as the target (read
    against the same source). Repeated or trimmed to `length`, as `activations_table`."""
    tokens = _checked_tokens(tokens)
    tokens, mask = tokens[None], jnp.ones((1, tokens.shape[0]), bool)
    encoded, encoder = model.encoder_keys_values(tokens, mask)
    cache = model.init_cache(encoded, mask, tokens.shape[1], dtype=jnp.float32)
    cross = PrefixKV(keys=cache.cross_keys, values=cache.cross_values)
    _, cache = model.decode(tokens, mask, None, None, cache=cache)
    decoder = PrefixKV(keys=cache.self_attn.keys, values=cache.self_attn.values)
    parts = {"encoder": encoder, "decoder": decoder, "cross": cross}
    return {part: _repeated_table(kv, length) for part, kv in parts.items()}


def init_tokens(
    config: PrefixConfig, model: Transformer | EncoderDecoder, tokenizer=None
) -> Array | None:
    """Token ids whose activations initialize the prefix, or None for random init."""
    if config.init == "random":
        return None
    if config.init == "vocab":
        key = jax.random.key(config.seed)
        return jax.random.randint(key, (config.length,), 0, model.config.vocab_size)
    if tokenizer is None:
        raise ValueError(f"prefix init {config.init!r} needs a tokenizer")
    ids = tokenizer(config.init[5:], add_special_tokens=False)["input_ids"]
    return jnp.asarray(ids, jnp.int32)


def create_prefix(
    model: Transformer | EncoderDecoder, config: PrefixConfig, tokenizer=None
) -> tuple[Prefix | PrefixParts, dict[str, float]]:
    """Build and initialize a prefix for `model`; returns it and init diagnostics.

    With `mlp` and an activation init, the MLP is fitted to the activations by a short
    Adam regression on all MLP weights (the original code's approach), so the initial
    collapsed prefix reproduces them up to the reported relative error. An encoder-decoder
    gets `PrefixParts` (the parts `config.parts` selects), each initialized from its own
    activations (`seq2seq_activations_tables`) with its own error reported.
    """
    tokens = init_tokens(config, model, tokenizer)
    if isinstance(model, EncoderDecoder):
        shapes = prefix_shapes(model.config)
        parts = config.selected_parts(tuple(shapes))
        prefix = PrefixParts({part: shapes[part] for part in parts}, config)
        if tokens is None:
            return prefix, {}
        tables = seq2seq_activations_tables(model, tokens, config.length)
        errors = {
            f"init_relative_error_{part}": _set_activations(getattr(prefix, part), tables[part])
            for part in parts
        }
        return prefix, errors
    config.selected_parts(("decoder",))  # a decoder-only model has its self-attention alone
    prefix = Prefix(model.config, config, rngs=nnx.Rngs(config.seed))
    if tokens is None:
        return prefix, {}
    error = _set_activations(prefix, activations_table(model, tokens, config.length))
    return prefix, {"init_relative_error": error}


def _set_activations(prefix: Prefix, target: Array) -> float:
    """Start `prefix` at the activations `target`: copied into a direct table, or fitted
    by the MLP; returns the relative error of the collapsed start."""
    if prefix.config.reparam == "none":
        prefix.table_param[...] = target
        return 0.0
    return _fit_mlp(prefix, target, prefix.config.init_fit_steps)


def _fit_mlp(prefix: Prefix, target: Array, steps: int) -> float:
    names = ("embedding", "w1", "b1", "w2", "b2")
    params = {n: getattr(prefix, n)[...] for n in names}
    tx = optax.adam(1e-3)
    scale = jnp.mean(jnp.square(target))

    def loss(params):
        return jnp.mean(jnp.square(mlp_table(*(params[n] for n in names)) - target)) / scale

    @jax.jit
    def fit(params):
        def step(carry, _):
            params, state = carry
            grads = jax.grad(loss)(params)
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
        return params, jnp.sqrt(loss(params))

    params, error = fit(params)
    for n in names:
        getattr(prefix, n)[...] = params[n]
    return float(error)
