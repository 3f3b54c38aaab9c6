"""A decoder-only transformer in Flax NNX covering the GPT-2, Llama and Gemma 2/3 families.

Layer weights are stacked along a leading `layers` axis and the forward pass is a
`jax.lax.scan` of one `DecoderLayer` over them: one layer is traced and compiled once,
whatever the depth, and per-layer inputs (prefix keys/values, KV-cache slices, RoPE
frequencies, and the sliding window where local and global layers alternate, as in Gemma)
ride along the same scan. The blocks (attention, MLP, norms, residuals) are the shared ones
of `prefix_jax.models.layers`; how the families differ is decided once, when their
`config.json` is translated into `ModelConfig` switches.

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

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from prefix_jax.models.attention import HEAD_AXES, KV_AXES, AttentionMask, soft_cap
from prefix_jax.models.config import ModelConfig
from prefix_jax.models.kv import (
    KVCache,
    PrefixKV,
    check_prefix,
    empty_cache,
    mask_with_prefix,
    prefix_lengths,
    write_cache,
)
from prefix_jax.models.layers import (
    HIDDEN_AXES,
    LanguageModel,
    LayerStack,
    LowRankDeltas,
    add_residual,
    apply_norm,
    apply_projection,
    attention_block,
    cast_layer_weight,
    check_tokens,
    const,
    delta_inputs,
    mlp,
    param,
    qkv,
    scan_layers,
    sublayer_input,
    unembed,
)
from prefix_jax.models.rope import apply_rope, layer_rope, positions_from_mask
from prefix_jax.scale.sharding import ActivationSharding, constrain

Array = jax.Array


class Transformer(LanguageModel):
    """Decoder-only LM. Call with tokens [B, T] and an attention mask (1 = real token)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32, **options):
        """`options`: dtype, remat_policy, activation_sharding, attention (`LanguageModel`)."""
        super().__init__(config, rngs=rngs, param_dtype=param_dtype, **options)
        c, pd, d = config, param_dtype, config.hidden_size
        if c.positions == "learned":
            self.pos_embed = param(rngs, (c.max_position_embeddings, d), (None, "embed"), pd)
        self.layers = DecoderLayers(c, rngs=rngs, param_dtype=pd)
        self.final_norm_scale = const((d,), ("embed",), pd, 1.0 - c.norm_offset)
        if c.norm == "layer":
            self.final_norm_bias = const((d,), ("embed",), pd, 0.0)
        if not c.tie_embeddings:
            self.lm_head = param(rngs, (d, c.vocab_size), ("embed", "vocab"), pd)

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        c = self.config
        return empty_cache(
            c.num_layers,
            batch,
            max_len,
            c.num_kv_heads,
            c.head_dim,
            dtype or self.dtype,
            self.activation_sharding,
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
        lm_head = None if self.config.tie_embeddings else self.lm_head[...]
        logits = unembed(hidden, self.embed[...], lm_head, self.dtype, None)
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
        c = self.config
        attention_mask = check_tokens(tokens, attention_mask)
        if prefix is not None:
            check_prefix(prefix, c.num_layers, c.num_kv_heads, c.head_dim, tokens.shape[0])
        mask, positions = self_attention_mask(c, attention_mask, cache, prefix)
        x = self._embed(tokens, input_embeds, positions)
        layer = DecoderLayer(
            config=c,
            mask=mask,
            positions=positions,
            deltas=deltas,
            cache_index=None if cache is None else cache.index,
            kernel=self.attention,
            where=self.activation_sharding,
        )
        per_layer = self._layer_inputs(positions, prefix, deltas)
        carry = (x, None if cache is None else (cache.keys, cache.values))
        if top_layers is None:
            (x, kv), _ = scan_layers(layer, carry, per_layer, self.remat_policy)
        else:
            x, kv = _scan_with_top_layers(
                layer, carry, per_layer, top_layers, self.dtype, self.remat_policy
            )
        final_bias = self.final_norm_bias[...] if c.norm == "layer" else None
        x = apply_norm(x, self.final_norm_scale[...], final_bias, c).astype(self.dtype)
        if cache is not None:
            cache = cache.replace(
                keys=kv[0],
                values=kv[1],
                valid=mask.key_valid[:, -cache.max_len :],
                index=cache.index + tokens.shape[1],
                next_position=cache.next_position + attention_mask.sum(-1).astype(jnp.int32),
            )
        return x, cache

    def _embed(self, tokens: Array, input_embeds: Array | None, positions: Array) -> Array:
        """Token (or given) embeddings, plus learned positions (GPT-2)."""
        x = (
            input_embeds.astype(self.dtype)
            if input_embeds is not None
            else self.embed_tokens(tokens)
        )
        if self.config.positions == "learned":
            x = x + jnp.take(self.pos_embed[...], positions, axis=0).astype(self.dtype)
        return constrain(x, self.activation_sharding, *HIDDEN_AXES)

    def _layer_inputs(
        self, positions: Array, prefix: PrefixKV | None, deltas: LowRankDeltas | None
    ) -> dict:
        """What the scan hands each layer: its weights and index, its deltas, RoPE
        frequencies, window and prefix keys/values, each stacked on the layer axis."""
        c = self.config
        per_layer = {
            "params": self.layers.stacked(self.dtype),
            "layer": jnp.arange(c.num_layers, dtype=jnp.int32),
            **delta_inputs(deltas, c.num_layers, self.dtype),
        }
        if c.positions == "rope":  # LongRoPE's choice of factors goes by the call's length
            per_layer["inv_freq"], per_layer["rope_scale"] = layer_rope(c, jnp.max(positions) + 1)
        windows = c.layer_windows()
        if len(set(windows)) > 1:  # local and global layers: a traced window per layer
            per_layer["window"] = jnp.asarray(windows, jnp.int32)
        if prefix is not None:
            per_layer["prefix"] = (prefix.keys.astype(self.dtype), prefix.values.astype(self.dtype))
        return per_layer


def self_attention_mask(
    c: ModelConfig, attention_mask: Array, cache: KVCache | None, prefix: PrefixKV | None
) -> tuple[AttentionMask, Array]:
    """The causal self-attention mask of one call (over the cache's slots, if any, and the
    prefix's in front) and the tokens' positions [B, T]."""
    b, t = attention_mask.shape
    offset = jnp.zeros((b if prefix is None else 1,), jnp.int32)
    if prefix is not None and prefix.positions_after_prefix:
        offset = prefix_lengths(prefix)
    if cache is None:
        positions = positions_from_mask(attention_mask, offset)
        key_valid = attention_mask
        query_slots = jnp.arange(t, dtype=jnp.int32)
        key_slots = query_slots
    else:
        positions = positions_from_mask(attention_mask, cache.next_position + offset)
        key_slots = jnp.arange(cache.max_len, dtype=jnp.int32)
        key_slots = jnp.where(key_slots < cache.prefix_length, -1, key_slots)
        if cache.index.ndim == 0:
            key_valid = jax.lax.dynamic_update_slice(cache.valid, attention_mask, (0, cache.index))
            query_slots = cache.index + jnp.arange(t, dtype=jnp.int32)
        else:
            key_valid, query_slots = _per_row_step(c, attention_mask, cache)
    windows = c.layer_windows()
    mask = AttentionMask(
        query_slots=query_slots,
        key_slots=key_slots,
        key_valid=key_valid,
        query_valid=attention_mask,
        prefix_length=0 if cache is None else cache.prefix_length,
        self_aligned=cache is None,
        window=windows[0] if len(set(windows)) == 1 else 0,  # else per layer, in the scan
    )
    if prefix is not None:
        mask = mask_with_prefix(mask, prefix, b)
    return mask, positions


def _per_row_step(c: ModelConfig, attention_mask: Array, cache: KVCache) -> tuple[Array, Array]:
    """key_valid and query_slots of a one-token step whose rows write at their own slots
    (`cache.index` [B], continuous batching). Each row's valid slots end at its own index,
    so key_valid alone is causal: the query slot is put past every key."""
    if attention_mask.shape[1] != 1:
        raise ValueError(
            f"a per-row cache index [B] takes one token per row, got {attention_mask.shape[1]}"
        )
    if any(c.layer_windows()):
        raise ValueError("a per-row cache index does not support sliding-window attention")
    rows = jnp.arange(attention_mask.shape[0])
    key_valid = cache.valid.at[rows, cache.index].set(attention_mask[:, 0], mode="drop")
    return key_valid, jnp.full((1,), cache.max_len, jnp.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class DecoderLayer:
    """One scan step: a layer of one forward call (`carry` = residual stream and, when
    decoding, the stacked cache; `xs` = this layer's slice of the per-layer inputs)."""

    config: ModelConfig
    mask: AttentionMask
    positions: Array
    deltas: LowRankDeltas | None
    cache_index: Array | None
    kernel: str
    where: ActivationSharding | None

    def __call__(self, carry, xs: dict):
        x, kv = carry  # constrained before the scan and at the end of every layer
        c, params, where = self.config, xs["params"], self.where
        project = partial(apply_projection, xs=xs, deltas=self.deltas)
        out, kv = self.self_attention(sublayer_input(x, params, "attn", c), xs, kv, project)
        x = add_residual(x, out, params, "attn", c, where)
        out = mlp(sublayer_input(x, params, "mlp", c), params, project, c, where)
        return (add_residual(x, out, params, "mlp", c, where), kv), None

    def self_attention(self, h: Array, xs: dict, kv, project) -> tuple[Array, tuple | None]:
        """Rotated queries over the cached (or current) keys, behind the prefix if any."""
        c, where = self.config, self.where
        q, k, v = qkv(h, xs["params"], project, c)
        if c.positions == "rope":
            q = apply_rope(q, self.positions, xs["inv_freq"], xs["rope_scale"])
            k = apply_rope(k, self.positions, xs["inv_freq"], xs["rope_scale"])
        q = constrain(q, where, *HEAD_AXES)
        k = constrain(k, where, *KV_AXES)
        v = constrain(v, where, *KV_AXES)
        if kv is not None:
            k, v, kv = write_cache(kv, xs["layer"], self.cache_index, k, v, where)
        mask = self.mask.replace(window=xs["window"]) if "window" in xs else self.mask
        out = attention_block(
            q,
            k,
            v,
            mask,
            xs.get("prefix"),
            "o",
            xs["params"],
            project,
            c,
            kernel=self.kernel,
            where=where,
        )
        return out, kv


def _scan_with_top_layers(
    layer, carry, per_layer: dict, top: dict[str, Array], dtype, remat: str | None
):
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
    carry, _ = scan_layers(layer, carry, lower, remat)
    carry, _ = scan_layers(layer, carry, upper, remat)
    return carry


class DecoderLayers(LayerStack):
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
        self.attn_norm_scale = const((L, d), ("layers", "embed"), pd, one)
        self.mlp_norm_scale = const((L, d), ("layers", "embed"), pd, one)
        if c.post_norms:
            self.attn_post_norm_scale = const((L, d), ("layers", "embed"), pd, one)
            self.mlp_post_norm_scale = const((L, d), ("layers", "embed"), pd, one)
        if c.norm == "layer":
            self.attn_norm_bias = const((L, d), ("layers", "embed"), pd, 0.0)
            self.mlp_norm_bias = const((L, d), ("layers", "embed"), pd, 0.0)
        self.q = param(rngs, (L, d, H, hd), ("layers", "embed", "heads", "head_dim"), pd)
        self.k = param(rngs, (L, d, KV, hd), ("layers", "embed", "kv_heads", "head_dim"), pd)
        self.v = param(rngs, (L, d, KV, hd), ("layers", "embed", "kv_heads", "head_dim"), pd)
        self.o = param(rngs, (L, H, hd, d), ("layers", "heads", "head_dim", "embed"), pd)
        if c.qkv_bias:
            self.q_bias = const((L, H, hd), ("layers", "heads", "head_dim"), pd, 0.0)
            self.k_bias = const((L, KV, hd), ("layers", "kv_heads", "head_dim"), pd, 0.0)
            self.v_bias = const((L, KV, hd), ("layers", "kv_heads", "head_dim"), pd, 0.0)
        if c.out_bias:
            self.o_bias = const((L, d), ("layers", "embed"), pd, 0.0)
        if c.qk_norm:
            self.q_norm_scale = const((L, hd), ("layers", "head_dim"), pd, one)
            self.k_norm_scale = const((L, hd), ("layers", "head_dim"), pd, one)
        if c.gated_mlp:
            self.gate = param(rngs, (L, d, F), ("layers", "embed", "mlp"), pd)
        self.up = param(rngs, (L, d, F), ("layers", "embed", "mlp"), pd)
        self.down = param(rngs, (L, F, d), ("layers", "mlp", "embed"), pd)
        if c.mlp_bias:
            self.up_bias = const((L, F), ("layers", "mlp"), pd, 0.0)
            self.down_bias = const((L, d), ("layers", "embed"), pd, 0.0)
