"""One encoder-decoder in Flax NNX for BART and T5, with Li & Liang's three prefixes.

Built like the decoder-only `Transformer` and from the same blocks
(`prefix_jax.models.layers`): each stack's layer weights are stacked on a leading `layers`
axis and run by one `lax.scan` of an `EncoderLayer` or a `CrossDecoderLayer`; attention
goes through `prefix_jax.models.attention.attention` (every kernel), projections through
the shared projection table (so LoRA deltas reach `q, k, v, o, gate, up, down` and, in the
decoder, `cross_q, cross_k, cross_v, cross_o`), and activations are constrained to the
same logical axes as the decoder-only model.

The two families differ by switches of `Seq2SeqConfig` (`seq2seq_config.py`):
- BART: learned positions (offset 2), `layernorm_embedding`, post-LN layers, GELU, biases
  everywhere, `scale_embedding`, `final_logits_bias`, tied LM head. transformers' BART has
  no pre-LN variant (`normalize_before` is not read by modeling_bart.py).
- T5: relative position buckets (bidirectional in the encoder, causal in the decoder; one
  table per stack, stored in its layer 0 by transformers and shared by all its layers), RMS
  norm without mean subtraction, pre-LN, no 1/sqrt(head_dim) score scaling, ReLU (v1.0) or
  gated GELU-tanh (v1.1, Flan-T5), and for a tied head the d_model**-0.5 rescale of the
  decoder output.

Positions are slots: seq2seq batches are right-padded, and transformers numbers BART's
positions and T5's relative distances by index too, so both agree on every real token.

Prefixes (Li & Liang, section 4.2): an encoder self-attention prefix, a decoder
self-attention prefix and a decoder cross-attention prefix, each optional, each a
`PrefixKV` [layers, batch or 1, p, heads, head_dim] of its own length. As in the rest of
the project the prefix has no position: prefix keys get no relative position bias (T5) and
real tokens are numbered from 0 (unless `positions_after_prefix`, which moves BART's
learned positions by p as PEFT does). PEFT/transformers would instead place the prefix at
positions 0..p-1, so under T5 its keys would get relative-position biases.

T5 scores are unscaled: its `Seq2SeqConfig.attention_scale` is 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx, struct

from prefix_jax.models.attention import AttentionMask, RelativeBias
from prefix_jax.models.kv import (
    CACHE_AXES,
    PrefixKV,
    Seq2SeqCache,
    check_prefix,
    empty_cache,
    fill_prefix,
    mask_with_prefix,
    prefix_lengths,
    prefix_valid,
    prepend,
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
from prefix_jax.models.seq2seq_config import Seq2SeqConfig
from prefix_jax.scale.sharding import ActivationSharding, constrain

Array = jax.Array


class Seq2SeqPrefix(struct.PyTreeNode):
    """Li & Liang's three prefixes, each optional and of its own length:
    `encoder` (encoder self-attention), `decoder` (decoder self-attention) and `cross`
    (decoder cross-attention, keys in front of the encoder's)."""

    encoder: PrefixKV | None = None
    decoder: PrefixKV | None = None
    cross: PrefixKV | None = None


class Seq2SeqDeltas(struct.PyTreeNode):
    """Low-rank deltas of each stack (decoder names include `cross_q/k/v/o`)."""

    encoder: LowRankDeltas | None = None
    decoder: LowRankDeltas | None = None


class Seq2SeqLayers(LayerStack):
    """One stack's layer weights on a leading `layers` axis; `cross` adds cross-attention.

    Norm names follow the decoder-only model: `attn_norm` (self-attention), `cross_norm`,
    `mlp_norm`; under post-LN (BART) each normalizes its sublayer's residual sum instead.
    """

    def __init__(self, c: Seq2SeqConfig, num_layers: int, cross: bool, *, rngs, param_dtype):
        L, d, H, hd, F, pd = (
            num_layers,
            c.hidden_size,
            c.num_heads,
            c.head_dim,
            c.intermediate_size,
            param_dtype,
        )
        norms = ("attn_norm", "cross_norm", "mlp_norm") if cross else ("attn_norm", "mlp_norm")
        for norm in norms:
            setattr(self, f"{norm}_scale", const((L, d), ("layers", "embed"), pd, 1.0))
            if c.norm == "layer":
                setattr(self, f"{norm}_bias", const((L, d), ("layers", "embed"), pd, 0.0))
        for prefix in ("", "cross_") if cross else ("",):
            for name in ("q", "k", "v"):
                axes = ("layers", "embed", "heads", "head_dim")
                setattr(self, prefix + name, param(rngs, (L, d, H, hd), axes, pd))
                if c.bias:
                    bias_axes = ("layers", "heads", "head_dim")
                    setattr(self, f"{prefix}{name}_bias", const((L, H, hd), bias_axes, pd, 0.0))
            axes = ("layers", "heads", "head_dim", "embed")
            setattr(self, prefix + "o", param(rngs, (L, H, hd, d), axes, pd))
            if c.bias:
                setattr(self, f"{prefix}o_bias", const((L, d), ("layers", "embed"), pd, 0.0))
        if c.gated_mlp:
            self.gate = param(rngs, (L, d, F), ("layers", "embed", "mlp"), pd)
        self.up = param(rngs, (L, d, F), ("layers", "embed", "mlp"), pd)
        self.down = param(rngs, (L, F, d), ("layers", "mlp", "embed"), pd)
        if c.bias:
            self.up_bias = const((L, F), ("layers", "mlp"), pd, 0.0)
            self.down_bias = const((L, d), ("layers", "embed"), pd, 0.0)


class EncoderDecoder(LanguageModel):
    """BART / T5. `encode` the source once, then `decode` targets against it (with a
    `Seq2SeqCache` for step-by-step decoding); `__call__` is teacher forcing."""

    def __init__(
        self, config: Seq2SeqConfig, *, rngs: nnx.Rngs, param_dtype=jnp.float32, **options
    ):
        """`options`: dtype, remat_policy, activation_sharding, attention (`LanguageModel`)."""
        super().__init__(config, rngs=rngs, param_dtype=param_dtype, **options)
        c, pd, d = config, param_dtype, config.hidden_size
        for stack in ("encoder", "decoder"):
            if c.positions == "learned":
                rows = c.max_position_embeddings + c.position_offset
                setattr(self, f"{stack}_pos_embed", param(rngs, (rows, d), (None, "embed"), pd))
            else:
                shape = (c.relative_buckets, c.num_heads)
                setattr(self, f"{stack}_relative_bias", param(rngs, shape, (None, "heads"), pd))
            for norm, present in (("embed_norm", c.embedding_norm), ("final_norm", c.final_norm)):
                if present:
                    setattr(self, f"{stack}_{norm}_scale", const((d,), ("embed",), pd, 1.0))
                    if c.norm == "layer":
                        setattr(self, f"{stack}_{norm}_bias", const((d,), ("embed",), pd, 0.0))
        self.encoder_layers = Seq2SeqLayers(
            c, c.num_encoder_layers, False, rngs=rngs, param_dtype=pd
        )
        self.decoder_layers = Seq2SeqLayers(
            c, c.num_decoder_layers, True, rngs=rngs, param_dtype=pd
        )
        if not c.tie_embeddings:
            self.lm_head = param(rngs, (d, c.vocab_size), ("embed", "vocab"), pd)
        if c.final_logits_bias:
            self.final_logits_bias = const((c.vocab_size,), ("vocab",), pd, 0.0)

    # --- pieces shared by both stacks ------------------------------------------------------

    def _top_norm(self, x: Array, name: str) -> Array:
        bias = getattr(self, f"{name}_bias", None)
        scale = getattr(self, f"{name}_scale")[...]
        out = apply_norm(x, scale, None if bias is None else bias[...], self.config)
        return out.astype(self.dtype)

    def embed_tokens(self, tokens: Array) -> Array:
        """Token embeddings as the stacks read them (BART's `scale_embedding` applied)."""
        x = jnp.take(self.embed[...], tokens, axis=0).astype(self.dtype)
        return x * self.config.embed_scale

    def _embed(self, tokens: Array, input_embeds: Array | None, stack: str, positions: Array):
        """Token (or given) embeddings plus, for BART, learned positions and their norm."""
        c = self.config
        x = self.embed_tokens(tokens) if input_embeds is None else input_embeds.astype(self.dtype)
        if c.positions == "learned":
            table = getattr(self, f"{stack}_pos_embed")[...]
            x = x + jnp.take(table, positions + c.position_offset, axis=0).astype(self.dtype)
        if c.embedding_norm:
            x = self._top_norm(x, f"{stack}_embed_norm")
        return constrain(x, self.activation_sharding, *HIDDEN_AXES)

    def _bias(self, stack: str) -> RelativeBias | None:
        if self.config.positions != "relative":
            return None
        table = getattr(self, f"{stack}_relative_bias")[...].astype(jnp.float32)
        return RelativeBias(
            table, bidirectional=stack == "encoder", max_distance=self.config.relative_max_distance
        )

    # --- encoder ---------------------------------------------------------------------------

    def encode(
        self,
        tokens: Array,
        attention_mask: Array | None = None,
        *,
        prefix: PrefixKV | None = None,
        input_embeds: Array | None = None,
        deltas: LowRankDeltas | None = None,
    ) -> Array:
        """Final encoder states [B, S, d]. `input_embeds` [B, S, d] replaces the (scaled)
        token embeddings, e.g. with soft prompt embeddings prepended (prompt tuning)."""
        states, _ = self._encode(tokens, attention_mask, prefix, input_embeds, deltas)
        return states

    def encoder_keys_values(self, tokens: Array, attention_mask: Array | None = None):
        """Final encoder states and every encoder layer's self-attention keys/values
        ([L, B, S, H, hd] each): what a prefix initialized from real words copies."""
        states, (keys, values) = self._encode(tokens, attention_mask, collect=True)
        return states, PrefixKV(keys=keys, values=values)

    def _encode(
        self,
        tokens: Array,
        attention_mask: Array | None,
        prefix: PrefixKV | None = None,
        input_embeds: Array | None = None,
        deltas: LowRankDeltas | None = None,
        *,
        collect: bool = False,
    ) -> tuple[Array, tuple[Array, Array] | None]:
        """`encode`, and with `collect` each layer's self-attention keys/values too."""
        c = self.config
        attention_mask = check_tokens(tokens, attention_mask)
        b, s = tokens.shape
        slots = jnp.arange(s, dtype=jnp.int32)
        mask = AttentionMask(
            query_slots=slots,
            key_slots=slots,
            key_valid=attention_mask,
            query_valid=attention_mask,
            causal=False,
            bias=self._bias("encoder"),
        )
        per_layer = {
            "params": self.encoder_layers.stacked(self.dtype),
            **delta_inputs(deltas, c.num_encoder_layers, self.dtype),
        }
        positions = jnp.broadcast_to(slots, (b, s))
        if prefix is not None:
            check_prefix(prefix, c.num_encoder_layers, c.num_heads, c.head_dim, b, "encoder")
            mask = mask_with_prefix(mask, prefix, b)
            per_layer["prefix"] = (prefix.keys.astype(self.dtype), prefix.values.astype(self.dtype))
            positions = positions + _position_offset(prefix)
        x = self._embed(tokens, input_embeds, "encoder", positions)
        layer = EncoderLayer(
            config=c,
            mask=mask,
            deltas=deltas,
            kernel=self.attention,
            where=self.activation_sharding,
            collect=collect,
        )
        x, collected = scan_layers(layer, x, per_layer, self.remat_policy)
        return (self._top_norm(x, "encoder_final_norm") if c.final_norm else x), collected

    # --- decoder ---------------------------------------------------------------------------

    def init_cache(
        self,
        encoded: Array,
        encoded_mask: Array,
        max_len: int,
        *,
        cross_prefix: PrefixKV | None = None,
        self_prefix: PrefixKV | None = None,
        deltas: LowRankDeltas | None = None,
        dtype=None,
    ) -> Seq2SeqCache:
        """A decoding cache for `max_len` target tokens: the decoder self-attention cache
        (its first p slots holding `self_prefix`, if given) and every layer's cross-attention
        keys/values, computed here once from `encoded` (after `cross_prefix`, if given).
        `deltas` are the decoder's, for LoRA on `cross_k`/`cross_v`."""
        c, where = self.config, self.activation_sharding
        dtype = dtype or self.dtype
        b, layers = encoded.shape[0], c.num_decoder_layers
        encoded_mask = jnp.asarray(encoded_mask).astype(bool)
        p_self = 0 if self_prefix is None else self_prefix.length
        self_attn = empty_cache(layers, b, p_self + max_len, c.num_heads, c.head_dim, dtype, where)
        if self_prefix is not None:
            check_prefix(self_prefix, layers, c.num_heads, c.head_dim, b, "decoder")
            self_attn = fill_prefix(self_attn, self_prefix)
        keys, values = self._cross_keys_values(encoded, deltas)
        valid = encoded_mask
        if cross_prefix is not None:
            check_prefix(cross_prefix, layers, c.num_heads, c.head_dim, b, "cross")
            keys, values = jax.vmap(prepend)(
                (cross_prefix.keys.astype(keys.dtype), cross_prefix.values.astype(keys.dtype)),
                keys,
                values,
            )
            valid = jnp.concatenate([prefix_valid(cross_prefix, b), valid], axis=1)
        return Seq2SeqCache(
            self_attn=self_attn,
            cross_keys=constrain(keys.astype(dtype), where, *CACHE_AXES),
            cross_values=constrain(values.astype(dtype), where, *CACHE_AXES),
            cross_valid=valid,
            cross_prefix_length=0 if cross_prefix is None else cross_prefix.length,
        )

    def _cross_keys_values(self, encoded: Array, deltas: LowRankDeltas | None):
        """Every decoder layer's cross-attention keys/values [L, B, S, H, hd]."""
        c = self.config
        per_layer = {
            "params": self.decoder_layers.stacked(self.dtype),
            **delta_inputs(deltas, c.num_decoder_layers, self.dtype),
        }
        encoded = encoded.astype(self.dtype)

        def layer(_, xs):
            return None, cross_keys_values(
                encoded, xs["params"], partial(apply_projection, xs=xs, deltas=deltas), c
            )

        _, (keys, values) = jax.lax.scan(layer, None, per_layer)
        return keys, values

    def decode(
        self,
        tokens: Array,
        attention_mask: Array | None,
        encoded: Array | None,
        encoded_mask: Array | None,
        *,
        self_prefix: PrefixKV | None = None,
        cross_prefix: PrefixKV | None = None,
        cache: Seq2SeqCache | None = None,
        deltas: LowRankDeltas | None = None,
    ) -> tuple[Array, Seq2SeqCache | None]:
        """Logits [B, T, vocab] (float32) of target tokens, and the advanced cache if given.

        Without a cache, cross-attention keys/values come from `encoded`; with one they come
        from the cache (`encoded` may be None and `cross_prefix` must be in the cache).
        """
        c = self.config
        attention_mask = check_tokens(tokens, attention_mask)
        b, t = tokens.shape
        self_mask, positions = self._self_mask(attention_mask, cache, self_prefix, b, t)
        cross_mask = self._cross_mask(self_mask, encoded_mask, cross_prefix, cache, b)
        per_layer = {
            "params": self.decoder_layers.stacked(self.dtype),
            "layer": jnp.arange(c.num_decoder_layers, dtype=jnp.int32),
            **delta_inputs(deltas, c.num_decoder_layers, self.dtype),
        }
        if self_prefix is not None:
            check_prefix(self_prefix, c.num_decoder_layers, c.num_heads, c.head_dim, b, "decoder")
            self_kv = (self_prefix.keys.astype(self.dtype), self_prefix.values.astype(self.dtype))
            per_layer["prefix"] = self_kv
        if cache is not None:
            per_layer["cross"] = (cache.cross_keys, cache.cross_values)
        elif cross_prefix is not None:
            per_layer["cross_prefix"] = (
                cross_prefix.keys.astype(self.dtype),
                cross_prefix.values.astype(self.dtype),
            )
        layer = CrossDecoderLayer(
            config=c,
            self_mask=self_mask,
            cross_mask=cross_mask,
            encoded=None if encoded is None else encoded.astype(self.dtype),
            deltas=deltas,
            cache_index=None if cache is None else cache.self_attn.index,
            dtype=self.dtype,
            kernel=self.attention,
            where=self.activation_sharding,
        )
        x = self._embed(tokens, None, "decoder", positions)
        kv0 = None if cache is None else (cache.self_attn.keys, cache.self_attn.values)
        (x, kv), _ = scan_layers(layer, (x, kv0), per_layer, self.remat_policy)
        if cache is not None:
            old = cache.self_attn
            cache = cache.replace(
                self_attn=old.replace(
                    keys=kv[0],
                    values=kv[1],
                    valid=self_mask.key_valid[:, -old.max_len :],
                    index=old.index + t,
                    next_position=old.next_position + t,
                )
            )
        return self.unembed(x), cache

    def _self_mask(self, attention_mask, cache, prefix, b, t) -> tuple[AttentionMask, Array]:
        """The decoder self-attention mask and the target tokens' positions."""
        steps = jnp.arange(t, dtype=jnp.int32)
        if cache is None:
            key_slots, key_valid, query_slots = steps, attention_mask, steps
            start = jnp.zeros((1,), jnp.int32)
        else:
            kv = cache.self_attn
            query_slots = kv.index + steps
            key_valid = jax.lax.dynamic_update_slice(kv.valid, attention_mask, (0, kv.index))
            key_slots = jnp.arange(kv.max_len, dtype=jnp.int32)
            key_slots = jnp.where(key_slots < kv.prefix_length, -1, key_slots)
            start = kv.next_position
        mask = AttentionMask(
            query_slots=query_slots,
            key_slots=key_slots,
            key_valid=key_valid,
            query_valid=attention_mask,
            prefix_length=0 if cache is None else cache.self_attn.prefix_length,
            self_aligned=cache is None,
            bias=self._bias("decoder"),
        )
        positions = jnp.broadcast_to(start[:, None] + steps, (b, t))
        if prefix is not None:
            mask = mask_with_prefix(mask, prefix, b)
            if cache is None:
                positions = positions + _position_offset(prefix)
        return mask, positions

    def _cross_mask(self, self_mask, encoded_mask, prefix, cache, b) -> AttentionMask:
        if cache is not None:
            if prefix is not None:
                raise ValueError("cross_prefix is already in the cache; give it to init_cache")
            valid, p = cache.cross_valid, cache.cross_prefix_length
        else:
            if encoded_mask is None:
                raise ValueError("decode without a cache needs encoded and encoded_mask")
            valid, p = jnp.asarray(encoded_mask).astype(bool), 0
            if prefix is not None:
                c = self.config
                check_prefix(prefix, c.num_decoder_layers, c.num_heads, c.head_dim, b, "cross")
                p = prefix.length
                valid = jnp.concatenate([prefix_valid(prefix, b), valid], axis=1)
        slots = jnp.arange(valid.shape[1], dtype=jnp.int32)
        return AttentionMask(
            query_slots=self_mask.query_slots,
            key_slots=jnp.where(slots < p, -1, slots - p),
            key_valid=valid,
            query_valid=self_mask.query_valid,
            prefix_length=p,
            causal=False,
        )

    def unembed(self, hidden: Array) -> Array:
        """Logits (float32) of final decoder states."""
        c = self.config
        if c.final_norm:
            hidden = self._top_norm(hidden, "decoder_final_norm")
        if c.scale_decoder_outputs:
            hidden = hidden * jnp.asarray(c.hidden_size**-0.5, hidden.dtype)
        lm_head = None if c.tie_embeddings else self.lm_head[...]
        logits = unembed(hidden, self.embed[...], lm_head, self.dtype, None)
        if c.final_logits_bias:
            logits = logits + self.final_logits_bias[...].astype(jnp.float32)
        return constrain(logits, self.activation_sharding, "batch", "length", "vocab")

    def __call__(
        self,
        source: Array,
        source_mask: Array | None,
        target: Array,
        target_mask: Array | None,
        *,
        prefix: Seq2SeqPrefix | None = None,
        deltas: Seq2SeqDeltas | None = None,
    ) -> Array:
        """Teacher-forced logits [B, T, vocab] (float32) of `target` given `source`."""
        prefix = prefix or Seq2SeqPrefix()
        deltas = deltas or Seq2SeqDeltas()
        if source_mask is None:
            source_mask = jnp.ones(source.shape, bool)
        encoded = self.encode(source, source_mask, prefix=prefix.encoder, deltas=deltas.encoder)
        logits, _ = self.decode(
            target,
            target_mask,
            encoded,
            source_mask,
            self_prefix=prefix.decoder,
            cross_prefix=prefix.cross,
            deltas=deltas.decoder,
        )
        return logits


# --- one layer of each stack ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class EncoderLayer:
    """One scan step of the encoder: self-attention (behind the encoder prefix) and MLP;
    with `collect`, the layer's keys/values are its scan output."""

    config: Seq2SeqConfig
    mask: AttentionMask
    deltas: LowRankDeltas | None
    kernel: str
    where: ActivationSharding | None
    collect: bool = False

    def __call__(self, x: Array, xs: dict):
        c, params, where = self.config, xs["params"], self.where
        project = partial(apply_projection, xs=xs, deltas=self.deltas)
        q, k, v = qkv(sublayer_input(x, params, "attn", c), params, project, c)
        out = attention_block(
            q,
            k,
            v,
            self.mask,
            xs.get("prefix"),
            "o",
            params,
            project,
            c,
            kernel=self.kernel,
            where=where,
        )
        x = add_residual(x, out, params, "attn", c, where)
        out = mlp(sublayer_input(x, params, "mlp", c), params, project, c, where)
        return add_residual(x, out, params, "mlp", c, where), (k, v) if self.collect else None


@dataclasses.dataclass(frozen=True, eq=False)
class CrossDecoderLayer:
    """One scan step of the decoder: self-attention (over the cache when decoding, behind
    the decoder prefix), cross-attention to the encoder output (behind the cross prefix),
    and MLP."""

    config: Seq2SeqConfig
    self_mask: AttentionMask
    cross_mask: AttentionMask
    encoded: Array | None
    deltas: LowRankDeltas | None
    cache_index: Array | None
    dtype: jnp.dtype
    kernel: str
    where: ActivationSharding | None

    def __call__(self, carry, xs: dict):
        x, kv = carry
        c, params, where = self.config, xs["params"], self.where
        project = partial(apply_projection, xs=xs, deltas=self.deltas)
        q, k, v = qkv(sublayer_input(x, params, "attn", c), params, project, c)
        if kv is not None:
            k, v, kv = write_cache(kv, xs["layer"], self.cache_index, k, v, where)
        out = self._attend(q, k, v, self.self_mask, xs.get("prefix"), "o", params, project)
        x = add_residual(x, out, params, "attn", c, where)
        h = sublayer_input(x, params, "cross", c)
        q = project("cross_q", h)
        if c.qkv_bias:
            q = q + params["cross_q_bias"]
        if "cross" in xs:  # computed once, in the cache
            k, v = (a.astype(self.dtype) for a in xs["cross"])
        else:
            k, v = cross_keys_values(self.encoded, params, project, c)
        cross_prefix = xs.get("cross_prefix")
        out = self._attend(q, k, v, self.cross_mask, cross_prefix, "cross_o", params, project)
        x = add_residual(x, out, params, "cross", c, where)
        out = mlp(sublayer_input(x, params, "mlp", c), params, project, c, where)
        return (add_residual(x, out, params, "mlp", c, where), kv), None

    def _attend(self, q, k, v, mask, prefix_kv, out_name, params, project) -> Array:
        return attention_block(
            q,
            k,
            v,
            mask,
            prefix_kv,
            out_name,
            params,
            project,
            self.config,
            kernel=self.kernel,
            where=self.where,
        )


def cross_keys_values(
    encoded: Array, params: dict, project: Callable, c: Seq2SeqConfig
) -> tuple[Array, Array]:
    """One decoder layer's cross-attention keys and values of the encoder output."""
    k, v = project("cross_k", encoded), project("cross_v", encoded)
    if c.qkv_bias:
        k, v = k + params["cross_k_bias"], v + params["cross_v_bias"]
    return k, v


def _position_offset(prefix: PrefixKV) -> Array:
    """[batch or 1, 1]: how far real tokens' learned positions move behind the prefix."""
    if not prefix.positions_after_prefix:
        return jnp.zeros((1, 1), jnp.int32)
    return prefix_lengths(prefix)[:, None]
