"""The blocks both model kinds are made of: projections (with low-rank deltas), norms,
the attention block, the MLP block and the residual around each.

Layer weights live in one dict per layer (a scan step's slice of the stacked weights), so
a block takes `params` and the config; the decoder-only `Transformer` and the
encoder-decoder read the same config switches (`norm`, `qkv_bias`, `out_bias`,
`mlp_bias`, `gated_mlp`, `activation`, `residual`), which is how GPT-2, Llama, Gemma, BART
and T5 layers differ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from prefix_jax.models.attention import HEAD_AXES, KV_AXES, AttentionMask, attention, resolve
from prefix_jax.models.kv import prepend
from prefix_jax.scale.sharding import ActivationSharding, constrain

Array = jax.Array
# The model configs (`ModelConfig`, `Seq2SeqConfig`): both carry the switches read here.
Config = Any

# Logical axes of activations (see `prefix_jax.scale.sharding`).
HIDDEN_AXES = ("batch", "length", "embed")
MLP_AXES = ("batch", "length", "mlp")

# Each projection of a layer: einsum of its input with the stacked weight (one layer's slice).
PROJECTIONS = {
    "q": "btd,dhk->bthk",
    "k": "btd,dhk->bthk",
    "v": "btd,dhk->bthk",
    "o": "bthd,hde->bte",
    "gate": "btd,df->btf",
    "up": "btd,df->btf",
    "down": "btf,fd->btd",
    # Cross-attention of encoder-decoder models (`prefix_jax.models.seq2seq`): queries from
    # the decoder, keys/values from the encoder output.
    "cross_q": "btd,dhk->bthk",
    "cross_k": "btd,dhk->bthk",
    "cross_v": "btd,dhk->bthk",
    "cross_o": "bthd,hde->bte",
}

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "silu": jax.nn.silu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
}

# How a sublayer's output joins the residual stream (`Config.residual`):
# "pre": x + f(norm(x)) (GPT-2, Llama, T5); "sandwich": x + post_norm(f(norm(x))) (Gemma);
# "post": norm(x + f(x)) (BART).
RESIDUALS = ("pre", "sandwich", "post")


def param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], dtype, std=0.02):
    """A randomly initialized weight (replaced when a checkpoint is loaded)."""
    return nnx.Param(jax.random.normal(rngs.params(), shape, dtype) * std, logical_axes=axes)


def const(shape: tuple[int, ...], axes: tuple[str, ...], dtype, value: float):
    """A weight filled with `value` (norm scales, biases)."""
    return nnx.Param(jnp.full(shape, value, dtype), logical_axes=axes)


def cast_layer_weight(name: str, w: Array, dtype) -> Array:
    """A layer weight in the compute dtype; norm scales and biases stay in float32."""
    keep = name.endswith("norm_scale") or name.endswith("norm_bias")
    return w.astype(jnp.float32 if keep else dtype)


class LayerStack(nnx.Module):
    """Base of a stack of layers whose weights sit on a leading `layers` axis."""

    def stacked(self, dtype) -> dict[str, Array]:
        """Weights by name, cast to the compute dtype (norm scales stay in float32)."""
        return {
            name: cast_layer_weight(name, var[...], dtype)
            for name, var in vars(self).items()
            if isinstance(var, nnx.Param)
        }


class LanguageModel(nnx.Module):
    """What both model kinds hold besides their layers: the config, the compute dtype, the
    remat policy, the attention kernel's name, the activation sharding and the token
    embedding table [vocab, d]."""

    def __init__(
        self,
        config: Config,
        *,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
        dtype=jnp.float32,
        remat_policy: str | None = None,
        activation_sharding: ActivationSharding | None = None,
        attention: str = "auto",
    ):
        resolve(attention)  # fail early on an unknown kernel name
        self.config = config
        self.dtype = dtype
        self.remat_policy = remat_policy
        self.attention = attention
        self.activation_sharding = activation_sharding
        shape = (config.vocab_size, config.hidden_size)
        self.embed = param(rngs, shape, ("vocab", "embed"), param_dtype)


def remat_policy(name: str) -> Callable | None:
    """Map a config string to a `jax.checkpoint` policy ("full" saves nothing)."""
    policies = {
        "full": None,
        "dots": jax.checkpoint_policies.dots_saveable,
        "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        "nothing": jax.checkpoint_policies.nothing_saveable,
    }
    if name not in policies:
        raise ValueError(f"unknown remat policy {name!r}; known: {', '.join(policies)}")
    return policies[name]


def scan_layers(layer: Callable, carry, per_layer: dict, remat: str | None):
    """`lax.scan` of one layer over the stacked inputs, rematerialized by policy `remat`."""
    if remat is not None:
        layer = jax.checkpoint(layer, policy=remat_policy(remat))
    return jax.lax.scan(layer, carry, per_layer)


def check_tokens(tokens: Array, attention_mask: Array | None) -> Array:
    """The attention mask as bool (all ones when None), after checking both shapes."""
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
    if attention_mask is None:
        return jnp.ones(tokens.shape, bool)
    if attention_mask.shape != tokens.shape:
        raise ValueError(
            f"attention_mask shape {attention_mask.shape} does not match tokens {tokens.shape}"
        )
    return jnp.asarray(attention_mask).astype(bool)


# --- projections and their low-rank deltas -------------------------------------------------


class LowRankDeltas(struct.PyTreeNode):
    """Per-layer low-rank updates of named layer weights: `y = x W + scale * (x A) B`.

    factors: {weight name: (A [layers, *in, r], B [layers, r, *out])}, where `in`/`out` are
    the input/output dims of the stacked weight (q: A [L, embed, r], B [L, r, heads,
    head_dim]; o: A [L, heads, head_dim, r], B [L, r, embed]). Dropout at rate `dropout`
    applies to the input of A when `dropout_key` is given (training), with an independent
    mask per layer and weight. LoRA is this with B initialized to zero.
    """

    factors: dict[str, tuple[Array, Array]]
    scale: float = struct.field(pytree_node=False, default=1.0)
    dropout: float = struct.field(pytree_node=False, default=0.0)
    dropout_key: Array | None = None


def projection_in_dims(name: str) -> int:
    """How many leading dims of a (per-layer) projection weight are input dims."""
    return len(PROJECTIONS[name].split(",")[0]) - 2


def delta_inputs(deltas: LowRankDeltas | None, num_layers: int, dtype) -> dict:
    """The per-layer scan inputs of low-rank deltas: factors in the compute dtype and, when
    training with dropout, one dropout key per layer."""
    if deltas is None:
        return {}
    out = {
        "deltas": {n: (a.astype(dtype), b.astype(dtype)) for n, (a, b) in deltas.factors.items()}
    }
    if deltas.dropout_key is not None and deltas.dropout > 0:
        out["delta_keys"] = jax.random.split(deltas.dropout_key, num_layers)
    return out


def apply_projection(name: str, h: Array, xs: dict, deltas: LowRankDeltas | None) -> Array:
    """Projection `name` of one layer (`xs["params"]`), plus its low-rank delta if any.

    `xs` is one scan step's slice of `{"params": ..., **delta_inputs(...)}`.
    """
    y = jnp.einsum(PROJECTIONS[name], h, xs["params"][name])
    if name not in xs.get("deltas", {}):
        return y
    a, b = xs["deltas"][name]
    if "delta_keys" in xs:
        key = jax.random.fold_in(xs["delta_keys"], list(PROJECTIONS).index(name))
        keep = jax.random.bernoulli(key, 1.0 - deltas.dropout, h.shape)
        h = jnp.where(keep, h / (1.0 - deltas.dropout), 0).astype(h.dtype)
    low = jnp.tensordot(h, a, axes=projection_in_dims(name))
    return y + (deltas.scale * jnp.tensordot(low, b, axes=1)).astype(y.dtype)


# --- norms --------------------------------------------------------------------------------


def apply_norm(x: Array, scale: Array, bias: Array | None, c: Config) -> Array:
    """LayerNorm, or RMSNorm times `scale` (Llama: in x's dtype) or times
    `norm_offset + scale` (Gemma: all in float32, as transformers computes it). The
    encoder-decoder's `Seq2SeqConfig` has no `norm_offset`."""
    x32 = x.astype(jnp.float32)
    if c.norm == "rms":
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + c.norm_eps)
        offset = getattr(c, "norm_offset", 0.0)
        if offset:
            return (offset + scale.astype(jnp.float32)) * y
        return scale * y.astype(x.dtype)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + c.norm_eps)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def norm(x: Array, params: dict, name: str, c: Config) -> Array:
    """Layer norm `name` (`<name>_scale`, `<name>_bias`) of one layer, in x's dtype."""
    return apply_norm(x, params[f"{name}_scale"], params.get(f"{name}_bias"), c).astype(x.dtype)


def sublayer_input(x: Array, params: dict, name: str, c: Config) -> Array:
    """What sublayer `name` ("attn", "cross", "mlp") reads: x normed, or x itself under
    post-LN."""
    return x if c.residual == "post" else norm(x, params, f"{name}_norm", c)


def add_residual(
    x: Array, out: Array, params: dict, name: str, c: Config, where: ActivationSharding | None
) -> Array:
    """The residual stream after sublayer `name` returned `out` (see `RESIDUALS`)."""
    if c.residual == "post":
        x = norm(x + out, params, f"{name}_norm", c)
    else:
        if c.residual == "sandwich":
            out = norm(out, params, f"{name}_post_norm", c)
        x = x + out
    return constrain(x, where, *HIDDEN_AXES)


# --- attention and MLP blocks -------------------------------------------------------------


def qkv(h: Array, params: dict, project: Callable, c: Config) -> tuple[Array, Array, Array]:
    """Self-attention queries, keys and values [B, T, heads, head_dim] (biases, q/k norms)."""
    q, k, v = project("q", h), project("k", h), project("v", h)
    if c.qkv_bias:
        q, k, v = q + params["q_bias"], k + params["k_bias"], v + params["v_bias"]
    if c.qk_norm:  # per head, over head_dim
        q = norm(q, params, "q_norm", c)
        k = norm(k, params, "k_norm", c)
    return q, k, v


def attention_block(
    q: Array,
    k: Array,
    v: Array,
    mask: AttentionMask,
    prefix_kv: tuple[Array, Array] | None,
    out_name: str,
    params: dict,
    project: Callable,
    c: Config,
    *,
    kernel: str,
    where: ActivationSharding | None,
) -> Array:
    """Attention of q over [prefix, k/v], then the output projection `out_name` (and its
    bias): the sublayer's output, before the residual. Scores are scaled by
    `c.attention_scale` and soft-capped by `c.attn_softcap`."""
    q = constrain(q, where, *HEAD_AXES)
    if prefix_kv is not None:
        k, v = prepend(prefix_kv, k, v)
    k, v = constrain(k, where, *KV_AXES), constrain(v, where, *KV_AXES)
    out = attention(q, k, v, mask, kernel, where, scale=c.attention_scale, softcap=c.attn_softcap)
    out = project(out_name, constrain(out, where, *HEAD_AXES))
    if c.out_bias:
        out = out + params[f"{out_name}_bias"]
    return out


def mlp(
    h: Array, params: dict, project: Callable, c: Config, where: ActivationSharding | None
) -> Array:
    """The feed-forward block: `down(act(up h))`, or `down(act(gate h) * up h)` when gated."""
    act = ACTIVATIONS[c.activation]
    up = project("up", h)
    if c.mlp_bias:
        up = up + params["up_bias"]
    if c.gated_mlp:
        up = act(project("gate", h)) * up
    else:
        up = act(up)
    out = project("down", constrain(up, where, *MLP_AXES))
    return out + params["down_bias"] if c.mlp_bias else out


def unembed(
    hidden: Array, embed: Array, lm_head: Array | None, dtype, where: ActivationSharding | None
) -> Array:
    """Float32 logits of hidden states: by the embedding table when tied (`lm_head` None)."""
    w = embed.T if lm_head is None else lm_head
    return jnp.einsum("btd,dv->btv", hidden, w.astype(dtype), preferred_element_type=jnp.float32)
