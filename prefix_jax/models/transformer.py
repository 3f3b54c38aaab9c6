"""A decoder-only transformer in Flax NNX covering the GPT-2, Llama and Gemma 2/3 families.

Layer weights are stacked along a leading `layers` axis and the forward pass is a
`jax.lax.scan` over them: one layer is traced and compiled once, whatever the depth, and
per-layer inputs (prefix keys/values, KV-cache slices, RoPE frequencies, and the sliding
window where local and global layers alternate, as in Gemma) ride along the same scan.

Every attention layer can attend to an optional prefix of keys/values that sits in front
of the token keys. The prefix has no position: real tokens are numbered from 0 whatever
its length, so a long prefix does not use up the model's context window.

Two more hooks serve the baseline methods without method-specific code here: `deltas`
adds per-layer low-rank updates to named projections inside the scan (LoRA), and
`top_layers` swaps in other weights for the last k layers, run as a second scan so that
autodiff never enters the layers below (top-k fine-tuning).

With an `ActivationSharding` (a mesh and logical-axis rules; set when the model is loaded
with a mesh), every large activation is constrained to its logical axes: batch over the
data-parallel axes, heads / MLP / vocab over `tensor`. Under FSDP each scan iteration then
gathers only its own layer's weights, and activations stay split by row.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx, struct

from prefix_jax.models.attention import (
    HEAD_AXES,
    KV_AXES,
    AttentionMask,
    attention,
    resolve,
    soft_cap,
)
from prefix_jax.models.config import ModelConfig, RopeScaling
from prefix_jax.scale.sharding import ActivationSharding, constrain

Array = jax.Array


class PrefixKV(struct.PyTreeNode):
    """Per-layer prefix keys and values that every query may attend to.

    keys/values: [layers, batch or 1, p, kv_heads, head_dim]. `mask` ([batch or 1, p],
    True = attend) lets rows of one batch carry prefixes of different lengths.
    """

    keys: Array
    values: Array
    mask: Array | None = None
    # False: real tokens are numbered from 0 (ours). True: from the prefix length, as in
    # Li & Liang's code and PEFT, where the prefix occupies positions 0..p-1.
    positions_after_prefix: bool = struct.field(pytree_node=False, default=False)

    @property
    def length(self) -> int:
        return self.keys.shape[2]


class KVCache(struct.PyTreeNode):
    """Keys/values of past tokens, written at slot `index` and advanced after each call.

    All rows share slot indices (prompts are left- or right-padded to one length); `valid`
    marks slots that hold real tokens and `next_position` is each row's next RoPE position.
    The first `prefix_length` slots may hold a prefix (decoding puts it there): they are
    attended like the prefix, outside any sliding window.
    """

    keys: Array  # [layers, batch, max_len, kv_heads, head_dim]
    values: Array
    valid: Array  # [batch, max_len] bool
    index: Array  # [] int32, first free slot
    next_position: Array  # [batch] int32
    prefix_length: int = struct.field(pytree_node=False, default=0)

    @property
    def max_len(self) -> int:
        return self.keys.shape[2]


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


# Logical axes of activations (see `prefix_jax.scale.sharding`).
HIDDEN_AXES = ("batch", "length", "embed")
MLP_AXES = ("batch", "length", "mlp")
CACHE_AXES = ("layers", "batch", "cache_length", "kv_heads", "head_dim")

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


def projection_in_dims(name: str) -> int:
    """How many leading dims of a (per-layer) projection weight are input dims."""
    return len(PROJECTIONS[name].split(",")[0]) - 2


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], dtype, std=0.02):
    return nnx.Param(jax.random.normal(rngs.params(), shape, dtype) * std, logical_axes=axes)


def _const(shape: tuple[int, ...], axes: tuple[str, ...], dtype, value: float):
    return nnx.Param(jnp.full(shape, value, dtype), logical_axes=axes)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "silu": jax.nn.silu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
}


def layer_rope(c: ModelConfig, length: Array | int | None = None) -> tuple[Array, Array]:
    """Each layer's RoPE: inverse frequencies [layers, rope_dim / 2] and the factor on cos and
    sin [layers]. Sliding layers use `rope_local_theta` without scaling when it is set
    (Gemma 3), the others `rope_theta` with the checkpoint's scaling (LongRoPE: its factors
    picked by `length`, and its attention factor)."""
    full = rope_inverse_frequencies(c.rope_dim, c.rope_theta, c.rope_scaling, length)
    scale = jnp.full((c.num_layers,), c.rope_scaling.attention_factor, jnp.float32)
    if not c.rope_local_theta:
        return jnp.broadcast_to(full, (c.num_layers, *full.shape)), scale
    local = rope_inverse_frequencies(c.rope_dim, c.rope_local_theta, RopeScaling())
    is_local = jnp.asarray([w > 0 for w in c.layer_windows()])
    return jnp.where(is_local[:, None], local, full), jnp.where(is_local, 1.0, scale)


def rope_inverse_frequencies(
    dim: int, theta: float, scaling: RopeScaling, length: Array | int | None = None
) -> Array:
    """Inverse frequencies of rotary embeddings over `dim` dims, with linear, Llama-3 or
    LongRoPE frequency scaling.

    LongRoPE picks its long factors when `length` (1 + the largest position of the call)
    passes the original context, as transformers does per forward call.
    """
    inv = 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    if scaling.rope_type == "longrope":
        short = inv / jnp.asarray(scaling.short_factor, jnp.float32)
        if length is None:
            return short
        long = inv / jnp.asarray(scaling.long_factor, jnp.float32)
        return jnp.where(length > scaling.original_max_position_embeddings, long, short)
    if scaling.rope_type == "linear":
        return inv / scaling.factor
    if scaling.rope_type == "llama3":
        # Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, smooth between.
        old = scaling.original_max_position_embeddings
        low_wavelen = old / scaling.low_freq_factor
        high_wavelen = old / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv
        smooth = (old / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        smoothed = (1 - smooth) * inv / scaling.factor + smooth * inv
        inv = jnp.where(wavelen > low_wavelen, inv / scaling.factor, inv)
        mid = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
        return jnp.where(mid, smoothed, inv)
    return inv


def apply_rope(x: Array, positions: Array, inv_freq: Array, scale: float | Array = 1.0) -> Array:
    """Rotate halves (the Hugging Face Llama layout). x: [B, T, heads, hd], positions [B, T].

    Only the first 2 * len(inv_freq) dims rotate (partial rotary); the rest pass through.
    `scale` multiplies cos and sin, so only the rotated dims (LongRoPE's attention factor).
    """
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, rot/2]
    cos = scale * jnp.cos(angles)[:, :, None, :]
    sin = scale * jnp.sin(angles)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    rot = 2 * inv_freq.shape[-1]
    x1, x2 = jnp.split(x32[..., :rot], 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, x32[..., rot:]], axis=-1)
    return out.astype(x.dtype)


def positions_from_mask(attention_mask: Array, start: Array | int = 0) -> Array:
    """Positions of real tokens counted from `start`; padding gets the neighbouring value."""
    mask = attention_mask.astype(jnp.int32)
    start = jnp.asarray(start, jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0) + jnp.reshape(start, (-1, 1))


class Transformer(nnx.Module):
    """Decoder-only LM. Call with tokens [B, T] and an attention mask (1 = real token)."""

    def __init__(
        self,
        config: ModelConfig,
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
        c, pd, d = config, param_dtype, config.hidden_size
        self.embed = _param(rngs, (c.vocab_size, d), ("vocab", "embed"), pd)
        if c.positions == "learned":
            self.pos_embed = _param(rngs, (c.max_position_embeddings, d), (None, "embed"), pd)
        self.layers = DecoderLayers(c, rngs=rngs, param_dtype=pd)
        self.final_norm_scale = _const((d,), ("embed",), pd, 1.0 - c.norm_offset)
        if c.norm == "layer":
            self.final_norm_bias = _const((d,), ("embed",), pd, 0.0)
        if not c.tie_embeddings:
            self.lm_head = _param(rngs, (d, c.vocab_size), ("embed", "vocab"), pd)

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        c = self.config
        shape = (c.num_layers, batch, max_len, c.num_kv_heads, c.head_dim)
        dtype = dtype or self.dtype
        where = self.activation_sharding
        return KVCache(
            keys=constrain(jnp.zeros(shape, dtype), where, *CACHE_AXES),
            values=constrain(jnp.zeros(shape, dtype), where, *CACHE_AXES),
            valid=jnp.zeros((batch, max_len), bool),
            index=jnp.zeros((), jnp.int32),
            next_position=jnp.zeros((batch,), jnp.int32),
        )

    def embed_tokens(self, tokens: Array) -> Array:
        """Token embeddings in the compute dtype; with `embed_scale` times sqrt(hidden),
        the factor rounded to the compute dtype first (as transformers' Gemma does)."""
        x = jnp.take(self.embed[...], tokens, axis=0).astype(self.dtype)
        if self.config.embed_scale:
            x = x * jnp.asarray(math.sqrt(self.config.hidden_size), self.dtype)
        return x

    def __call__(
        self,
        tokens: Array,
        attention_mask: Array | None = None,
        *,
        prefix: PrefixKV | None = None,
        cache: KVCache | None = None,
        input_embeds: Array | None = None,
        deltas: LowRankDeltas | None = None,
        top_layers: dict[str, Array] | None = None,
    ) -> tuple[Array, KVCache | None]:
        """Logits [B, T, vocab] in float32, and the advanced cache when one is given."""
        hidden, cache = self.hidden_states(
            tokens,
            attention_mask,
            prefix=prefix,
            cache=cache,
            input_embeds=input_embeds,
            deltas=deltas,
            top_layers=top_layers,
        )
        return self.unembed(hidden), cache

    def unembed(self, hidden: Array) -> Array:
        w = self.embed[...].T if self.config.tie_embeddings else self.lm_head[...]
        logits = jnp.einsum(
            "btd,dv->btv", hidden, w.astype(self.dtype), preferred_element_type=jnp.float32
        )
        logits = soft_cap(logits, self.config.final_softcap)
        return constrain(logits, self.activation_sharding, "batch", "length", "vocab")

    def hidden_states(
        self,
        tokens: Array,
        attention_mask: Array | None = None,
        *,
        prefix: PrefixKV | None = None,
        cache: KVCache | None = None,
        input_embeds: Array | None = None,
        deltas: LowRankDeltas | None = None,
        top_layers: dict[str, Array] | None = None,
    ) -> tuple[Array, KVCache | None]:
        """Final-norm hidden states [B, T, d]; `input_embeds` replaces token embeddings.

        `deltas` adds low-rank updates to named projections of every layer; `top_layers`
        ({weight name: [k, ...]}) replaces those weights of the last k layers.
        """
        c, where = self.config, self.activation_sharding
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
        b, t = tokens.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), bool)
        if attention_mask.shape != (b, t):
            raise ValueError(
                f"attention_mask shape {attention_mask.shape} does not match tokens {(b, t)}"
            )
        attention_mask = attention_mask.astype(bool)
        offset = jnp.zeros((b if prefix is None else 1,), jnp.int32)
        if prefix is not None:
            check_prefix(prefix, c, b)
            if prefix.positions_after_prefix:
                offset = prefix_lengths(prefix)

        if cache is None:
            positions = positions_from_mask(attention_mask, offset)
            key_valid = attention_mask
            query_slots = jnp.arange(t, dtype=jnp.int32)
            key_slots = query_slots
        else:
            positions = positions_from_mask(attention_mask, cache.next_position + offset)
            key_valid = jax.lax.dynamic_update_slice(cache.valid, attention_mask, (0, cache.index))
            query_slots = cache.index + jnp.arange(t, dtype=jnp.int32)
            key_slots = jnp.arange(cache.max_len, dtype=jnp.int32)
            key_slots = jnp.where(key_slots < cache.prefix_length, -1, key_slots)
        windows = c.layer_windows()
        mask = AttentionMask(
            query_slots=query_slots,
            key_slots=key_slots,
            key_valid=key_valid,
            query_valid=attention_mask,
            prefix_length=0 if cache is None else cache.prefix_length,
            self_aligned=cache is None,
            window=windows[0] if len(set(windows)) == 1 else 0,  # else per layer, below
        )
        if prefix is not None:
            p = prefix.length
            p_mask = prefix.mask if prefix.mask is not None else jnp.ones((1, p), bool)
            mask = mask.replace(
                key_slots=jnp.concatenate([jnp.full((p,), -1, jnp.int32), key_slots]),
                key_valid=jnp.concatenate(
                    [jnp.broadcast_to(p_mask.astype(bool), (b, p)), key_valid], axis=1
                ),
                prefix_length=p,
            )

        x = (
            input_embeds.astype(self.dtype)
            if input_embeds is not None
            else self.embed_tokens(tokens)
        )
        if c.positions == "learned":
            x = x + jnp.take(self.pos_embed[...], positions, axis=0).astype(self.dtype)
        x = constrain(x, where, *HIDDEN_AXES)

        per_layer = {
            "params": self.layers.stacked(self.dtype),
            "layer": jnp.arange(c.num_layers, dtype=jnp.int32),
            **delta_inputs(deltas, c.num_layers, self.dtype),
        }
        if c.positions == "rope":  # LongRoPE's choice of factors goes by the call's length
            per_layer["inv_freq"], per_layer["rope_scale"] = layer_rope(c, jnp.max(positions) + 1)
        if len(set(windows)) > 1:  # local and global layers: a traced window per layer
            per_layer["window"] = jnp.asarray(windows, jnp.int32)
        if prefix is not None:
            per_layer["prefix"] = (prefix.keys.astype(self.dtype), prefix.values.astype(self.dtype))

        def layer(carry, xs):
            # The cache rides in the carry, not in xs/ys: each step then writes only its new
            # slots in place instead of copying every layer's whole cache into a new stack.
            x, kv = carry  # constrained before the scan and at the end of every layer
            params = xs["params"]

            def project(name: str, h: Array) -> Array:
                return apply_projection(name, h, xs, deltas)

            h = _norm(x, params, "attn_norm", c)
            q, k, v = _qkv(h, params, project, c)
            if c.positions == "rope":
                q = apply_rope(q, positions, xs["inv_freq"], xs["rope_scale"])
                k = apply_rope(k, positions, xs["inv_freq"], xs["rope_scale"])
            q = constrain(q, where, *HEAD_AXES)
            k = constrain(k, where, *KV_AXES)
            v = constrain(v, where, *KV_AXES)
            if kv is not None:
                i, (ck, cv) = xs["layer"], kv
                ck = jax.lax.dynamic_update_slice(
                    ck, k[None].astype(ck.dtype), (i, 0, cache.index, 0, 0)
                )
                cv = jax.lax.dynamic_update_slice(
                    cv, v[None].astype(cv.dtype), (i, 0, cache.index, 0, 0)
                )
                kv = (constrain(ck, where, *CACHE_AXES), constrain(cv, where, *CACHE_AXES))
                k, v = ck[i].astype(self.dtype), cv[i].astype(self.dtype)
            if prefix is not None:
                pk, pv = xs["prefix"]
                pk = jnp.broadcast_to(pk, (b, *pk.shape[1:]))
                pv = jnp.broadcast_to(pv, (b, *pv.shape[1:]))
                k = constrain(jnp.concatenate([pk, k], axis=1), where, *KV_AXES)
                v = constrain(jnp.concatenate([pv, v], axis=1), where, *KV_AXES)
            layer_mask = mask.replace(window=xs["window"]) if "window" in xs else mask
            attn = attention(
                q,
                k,
                v,
                layer_mask,
                self.attention,
                where,
                scale=c.attention_scale,
                softcap=c.attn_softcap,
            )
            attn = constrain(attn, where, *HEAD_AXES)
            out = project("o", attn)
            if c.out_bias:
                out = out + params["o_bias"]
            if c.post_norms:
                out = _norm(out, params, "attn_post_norm", c)
            x = constrain(x + out, where, *HIDDEN_AXES)
            out = _mlp(_norm(x, params, "mlp_norm", c), params, project, c, where)
            if c.post_norms:
                out = _norm(out, params, "mlp_post_norm", c)
            return (constrain(x + out, where, *HIDDEN_AXES), kv), None

        if self.remat_policy is not None:
            layer = jax.checkpoint(layer, policy=remat_policy(self.remat_policy))
        carry = (x, None if cache is None else (cache.keys, cache.values))
        if top_layers is None:
            (x, new_kv), _ = jax.lax.scan(layer, carry, per_layer)
        else:
            x, new_kv = _scan_with_top_layers(layer, carry, per_layer, top_layers, self.dtype)
        x = _norm_apply(
            x,
            self.final_norm_scale[...],
            self.final_norm_bias[...] if c.norm == "layer" else None,
            c,
        ).astype(self.dtype)
        if cache is not None:
            cache = cache.replace(
                keys=new_kv[0],
                values=new_kv[1],
                valid=key_valid,
                index=cache.index + t,
                next_position=cache.next_position + attention_mask.sum(-1).astype(jnp.int32),
            )
        return x, cache


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


def _scan_with_top_layers(layer, carry, per_layer: dict, top: dict[str, Array], dtype):
    """Scan the stored lower layers, then the last k with `top`'s weights swapped in.

    Two scans rather than one over concatenated weights: nothing below the top layers
    depends on `top`, so autodiff neither runs the backward pass there nor builds weight
    gradients for those layers.
    """
    n_lower = per_layer["params"]["q"].shape[0] - next(iter(top.values())).shape[0]
    lower = jax.tree.map(lambda a: a[:n_lower], per_layer)
    upper = jax.tree.map(lambda a: a[n_lower:], per_layer)
    upper["params"] = {
        **upper["params"],
        **{name: cast_layer_weight(name, w, dtype) for name, w in top.items()},
    }
    carry, _ = jax.lax.scan(layer, carry, lower)
    carry, _ = jax.lax.scan(layer, carry, upper)
    return carry


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


def prefix_lengths(prefix: PrefixKV) -> Array:
    """Number of attendable prefix slots per row ([batch or 1])."""
    if prefix.mask is None:
        return jnp.full((prefix.keys.shape[1],), prefix.length, jnp.int32)
    return prefix.mask.astype(jnp.int32).sum(-1)


def check_prefix(prefix: PrefixKV, c: ModelConfig, batch: int) -> None:
    expected = (c.num_layers, c.num_kv_heads, c.head_dim)
    got = (prefix.keys.shape[0], *prefix.keys.shape[3:])
    if prefix.keys.ndim != 5 or got != expected or prefix.values.shape != prefix.keys.shape:
        raise ValueError(
            "prefix keys/values must be [layers, batch or 1, p, kv_heads, head_dim] with "
            f"layers, kv_heads, head_dim = {expected}; got keys {prefix.keys.shape}, "
            f"values {prefix.values.shape}"
        )
    if prefix.keys.shape[1] not in (1, batch):
        raise ValueError(f"prefix batch {prefix.keys.shape[1]} is neither 1 nor {batch}")


def _norm_apply(x: Array, scale: Array, bias: Array | None, c: ModelConfig) -> Array:
    """LayerNorm, or RMSNorm times `scale` (Llama: in x's dtype) or times
    `norm_offset + scale` (Gemma: all in float32, as transformers computes it). Also serves
    the encoder-decoder's `Seq2SeqConfig`, which has no `norm_offset`."""
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


def _norm(x: Array, params: dict, name: str, c: ModelConfig) -> Array:
    return _norm_apply(x, params[f"{name}_scale"], params.get(f"{name}_bias"), c).astype(x.dtype)


def _qkv(h: Array, params: dict, project: Callable, c: ModelConfig) -> tuple[Array, Array, Array]:
    q, k, v = project("q", h), project("k", h), project("v", h)
    if c.qkv_bias:
        q, k, v = q + params["q_bias"], k + params["k_bias"], v + params["v_bias"]
    if c.qk_norm:  # per head, over head_dim
        q = _norm(q, params, "q_norm", c)
        k = _norm(k, params, "k_norm", c)
    return q, k, v


def _mlp(
    h: Array, params: dict, project: Callable, c: ModelConfig, where: ActivationSharding | None
) -> Array:
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


class DecoderLayers(nnx.Module):
    """All layers' weights, stacked on a leading `layers` axis for `lax.scan`."""

    def __init__(self, c: ModelConfig, *, rngs: nnx.Rngs, param_dtype):
        L, d, H, KV, hd, F = (
            c.num_layers,
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.intermediate_size,
        )
        pd, one = param_dtype, 1.0 - c.norm_offset  # norm weights that scale by 1
        self.attn_norm_scale = _const((L, d), ("layers", "embed"), pd, one)
        self.mlp_norm_scale = _const((L, d), ("layers", "embed"), pd, one)
        if c.post_norms:
            self.attn_post_norm_scale = _const((L, d), ("layers", "embed"), pd, one)
            self.mlp_post_norm_scale = _const((L, d), ("layers", "embed"), pd, one)
        if c.norm == "layer":
            self.attn_norm_bias = _const((L, d), ("layers", "embed"), pd, 0.0)
            self.mlp_norm_bias = _const((L, d), ("layers", "embed"), pd, 0.0)
        self.q = _param(rngs, (L, d, H, hd), ("layers", "embed", "heads", "head_dim"), pd)
        self.k = _param(rngs, (L, d, KV, hd), ("layers", "embed", "kv_heads", "head_dim"), pd)
        self.v = _param(rngs, (L, d, KV, hd), ("layers", "embed", "kv_heads", "head_dim"), pd)
        self.o = _param(rngs, (L, H, hd, d), ("layers", "heads", "head_dim", "embed"), pd)
        if c.qkv_bias:
            self.q_bias = _const((L, H, hd), ("layers", "heads", "head_dim"), pd, 0.0)
            self.k_bias = _const((L, KV, hd), ("layers", "kv_heads", "head_dim"), pd, 0.0)
            self.v_bias = _const((L, KV, hd), ("layers", "kv_heads", "head_dim"), pd, 0.0)
        if c.out_bias:
            self.o_bias = _const((L, d), ("layers", "embed"), pd, 0.0)
        if c.qk_norm:
            self.q_norm_scale = _const((L, hd), ("layers", "head_dim"), pd, one)
            self.k_norm_scale = _const((L, hd), ("layers", "head_dim"), pd, one)
        if c.gated_mlp:
            self.gate = _param(rngs, (L, d, F), ("layers", "embed", "mlp"), pd)
        self.up = _param(rngs, (L, d, F), ("layers", "embed", "mlp"), pd)
        self.down = _param(rngs, (L, F, d), ("layers", "mlp", "embed"), pd)
        if c.mlp_bias:
            self.up_bias = _const((L, F), ("layers", "mlp"), pd, 0.0)
            self.down_bias = _const((L, d), ("layers", "embed"), pd, 0.0)

    def stacked(self, dtype) -> dict[str, Array]:
        """Weights by name, cast to the compute dtype (norm scales stay in float32)."""
        return {
            name: cast_layer_weight(name, var[...], dtype)
            for name, var in vars(self).items()
            if isinstance(var, nnx.Param)
        }


def cast_layer_weight(name: str, w: Array, dtype) -> Array:
    """A layer weight in the compute dtype; norm scales and biases stay in float32."""
    keep = name.endswith("norm_scale") or name.endswith("norm_bias")
    return w.astype(jnp.float32 if keep else dtype)
