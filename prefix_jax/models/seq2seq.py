"""One encoder-decoder in Flax NNX for BART and T5, with Li & Liang's three prefixes.

Built like the decoder-only `Transformer`: each stack's layer weights are stacked on a
leading `layers` axis and run by one `lax.scan`; attention goes through
`prefix_jax.models.attention.attention` (every kernel), projections through the shared
projection table (so LoRA deltas reach `q, k, v, o, gate, up, down` and, in the decoder,
`cross_q, cross_k, cross_v, cross_o`), and activations are constrained to the same logical
axes as the decoder-only model.

The two families differ by switches of `Seq2SeqConfig`:
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

T5 scores are unscaled: its attention passes `scale=1.0` to the kernels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from prefix_jax.models.attention import (
    HEAD_AXES,
    KV_AXES,
    AttentionMask,
    RelativeBias,
    attention,
    resolve,
)
from prefix_jax.models.config import UnsupportedArchitectureError
from prefix_jax.models.transformer import (
    ACTIVATIONS,
    CACHE_AXES,
    HIDDEN_AXES,
    DecoderLayers,
    KVCache,
    LowRankDeltas,
    PrefixKV,
    _const,
    _mlp,
    _norm,
    _norm_apply,
    _param,
    _qkv,
    apply_projection,
    delta_inputs,
    prefix_lengths,
    remat_policy,
)
from prefix_jax.scale.sharding import ActivationSharding, constrain

Array = jax.Array

SEQ2SEQ_ARCHITECTURES = ("bart", "t5")
# transformers' activation names -> ours (`prefix_jax.models.transformer.ACTIVATIONS`).
_HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "relu": "relu", "silu": "silu"}


@dataclasses.dataclass(frozen=True)
class Seq2SeqConfig:
    """Shape and switches of an encoder-decoder transformer (BART or T5)."""

    family: str
    vocab_size: int
    hidden_size: int
    num_encoder_layers: int
    num_decoder_layers: int
    num_heads: int
    head_dim: int
    intermediate_size: int
    positions: str = "learned"  # learned (BART) | relative (T5)
    max_position_embeddings: int = 0  # learned positions only
    position_offset: int = 0  # BART's learned positions start at row 2
    relative_buckets: int = 32
    relative_max_distance: int = 128
    norm: str = "layer"  # layer | rms
    norm_eps: float = 1e-5
    post_norm: bool = True  # BART: norm after each residual; T5: before each sublayer
    embedding_norm: bool = False  # BART's layernorm_embedding
    final_norm: bool = False  # T5's final_layer_norm of each stack
    embed_scale: float = 1.0  # BART scale_embedding: sqrt(d_model)
    scale_attention: bool = True  # 1/sqrt(head_dim) on scores; T5 has none
    activation: str = "gelu"
    gated_mlp: bool = False
    bias: bool = True  # biases of every projection and the MLP (BART)
    final_logits_bias: bool = False
    tie_embeddings: bool = True
    scale_decoder_outputs: bool = False  # T5 with a tied head: decoder output * d**-0.5
    pad_id: int = 0
    eos_id: int = 1
    decoder_start_id: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        if self.family not in SEQ2SEQ_ARCHITECTURES:
            raise UnsupportedArchitectureError(
                f"unsupported encoder-decoder {self.family!r}; supported: "
                f"{', '.join(SEQ2SEQ_ARCHITECTURES)}"
            )
        for field in (
            "vocab_size",
            "hidden_size",
            "num_encoder_layers",
            "num_decoder_layers",
            "num_heads",
            "head_dim",
            "intermediate_size",
        ):
            if getattr(self, field) <= 0:
                raise ValueError(
                    f"Seq2SeqConfig.{field} must be positive, got {getattr(self, field)}"
                )
        if self.norm not in ("rms", "layer"):
            raise ValueError(f"norm must be 'rms' or 'layer', got {self.norm!r}")
        if self.positions not in ("learned", "relative"):
            raise ValueError(f"positions must be 'learned' or 'relative', got {self.positions!r}")
        if self.positions == "learned" and self.max_position_embeddings <= 0:
            raise ValueError("learned positions need max_position_embeddings > 0")
        if self.positions == "relative" and (
            self.relative_buckets < 4 or self.relative_max_distance <= self.relative_buckets // 4
        ):
            raise ValueError(
                f"relative positions need >= 4 buckets and a max distance above a quarter of "
                f"them; got {self.relative_buckets} buckets, max distance "
                f"{self.relative_max_distance}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; known: {list(ACTIVATIONS)}")

    # Names the shared layer helpers (`_qkv`, `_mlp`, norms) read from a config.
    @property
    def num_kv_heads(self) -> int:
        return self.num_heads

    @property
    def kv_dim(self) -> int:
        """Width of one layer's keys (or values): what a prefix stores per token and layer."""
        return self.num_heads * self.head_dim

    @property
    def qkv_bias(self) -> bool:
        return self.bias

    @property
    def out_bias(self) -> bool:
        return self.bias

    @property
    def mlp_bias(self) -> bool:
        return self.bias

    @property
    def qk_norm(self) -> bool:
        return False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Seq2SeqConfig:
        return cls(**d)

    def layer_params(self, cross: bool) -> int:
        """One layer's weights: self-attention (and cross-attention), MLP, their norms."""
        d, f, h = self.hidden_size, self.intermediate_size, self.num_heads * self.head_dim
        norm = d * (2 if self.norm == "layer" else 1)
        attn = 4 * d * h + ((3 * h + d) if self.bias else 0)
        mlp = d * f * (3 if self.gated_mlp else 2) + ((f + d) if self.bias else 0)
        return (2 if cross else 1) * attn + mlp + (3 if cross else 2) * norm

    def num_params(self) -> int:
        """Parameter count (embeddings once when tied; BART's final_logits_bias included)."""
        d = self.hidden_size
        norm = d * (2 if self.norm == "layer" else 1)
        total = self.num_encoder_layers * self.layer_params(cross=False)
        total += self.num_decoder_layers * self.layer_params(cross=True)
        total += self.vocab_size * d * (1 if self.tie_embeddings else 2)
        if self.positions == "learned":
            total += 2 * (self.max_position_embeddings + self.position_offset) * d
        else:
            total += 2 * self.relative_buckets * self.num_heads
        total += 2 * norm * (int(self.embedding_norm) + int(self.final_norm))
        return total + (self.vocab_size if self.final_logits_bias else 0)


def seq2seq_config_from_hf(hf: dict[str, Any], name: str = "") -> Seq2SeqConfig:
    """Translate a Hugging Face BART or T5 `config.json` dict into a Seq2SeqConfig."""
    model_type = hf.get("model_type")
    if model_type == "bart":
        return _bart_config(hf, name)
    if model_type == "t5":
        return _t5_config(hf, name)
    raise UnsupportedArchitectureError(
        f"unsupported encoder-decoder model_type {model_type!r} "
        f"(architectures={hf.get('architectures')}); supported: {', '.join(SEQ2SEQ_ARCHITECTURES)}"
    )


def _activation(hf_name: str, model_type: str) -> str:
    if hf_name not in _HF_ACTIVATIONS:
        raise UnsupportedArchitectureError(f"unsupported activation {hf_name!r} for {model_type}")
    return _HF_ACTIVATIONS[hf_name]


def _bart_config(hf: dict[str, Any], name: str) -> Seq2SeqConfig:
    for ours, enc, dec in (
        ("heads", "encoder_attention_heads", "decoder_attention_heads"),
        ("MLP width", "encoder_ffn_dim", "decoder_ffn_dim"),
    ):
        if hf[enc] != hf[dec]:
            raise UnsupportedArchitectureError(
                f"bart with different encoder/decoder {ours} ({enc}={hf[enc]}, "
                f"{dec}={hf[dec]}) is not supported"
            )
    d, heads = hf["d_model"], hf["encoder_attention_heads"]
    if d % heads:
        raise ValueError(f"bart d_model={d} is not a multiple of {heads} heads")
    return Seq2SeqConfig(
        family="bart",
        vocab_size=hf["vocab_size"],
        hidden_size=d,
        num_encoder_layers=hf["encoder_layers"],
        num_decoder_layers=hf["decoder_layers"],
        num_heads=heads,
        head_dim=d // heads,
        intermediate_size=hf["encoder_ffn_dim"],
        positions="learned",
        max_position_embeddings=hf["max_position_embeddings"],
        position_offset=2,
        norm="layer",
        norm_eps=1e-5,  # torch.nn.LayerNorm's default, which BART uses
        post_norm=True,
        embedding_norm=True,
        embed_scale=math.sqrt(d) if hf.get("scale_embedding") else 1.0,
        activation=_activation(hf.get("activation_function", "gelu"), "bart"),
        bias=True,
        final_logits_bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True) is not False,
        pad_id=hf.get("pad_token_id", 1),
        eos_id=hf.get("eos_token_id", 2),
        decoder_start_id=hf.get("decoder_start_token_id", 2),
        name=name,
    )


def _t5_config(hf: dict[str, Any], name: str) -> Seq2SeqConfig:
    proj = hf.get("feed_forward_proj", "relu")
    parts = proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise UnsupportedArchitectureError(f"unsupported t5 feed_forward_proj {proj!r}")
    act = "gelu_new" if proj == "gated-gelu" else parts[-1]
    # Hub checkpoints of T5 v1.1 / Flan-T5 say tie_word_embeddings=false and carry lm_head;
    # transformers 5 always ties on save and records scale_decoder_outputs instead.
    tied = hf.get("tie_word_embeddings", True) is not False
    pad = hf.get("pad_token_id", 0)
    return Seq2SeqConfig(
        family="t5",
        vocab_size=hf["vocab_size"],
        hidden_size=hf["d_model"],
        num_encoder_layers=hf["num_layers"],
        num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        num_heads=hf["num_heads"],
        head_dim=hf["d_kv"],
        intermediate_size=hf["d_ff"],
        positions="relative",
        relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128),
        norm="rms",
        norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        post_norm=False,
        final_norm=True,
        scale_attention=False,
        activation=_activation(act, "t5"),
        gated_mlp=len(parts) == 2,
        bias=False,
        tie_embeddings=tied,
        scale_decoder_outputs=bool(hf.get("scale_decoder_outputs", tied)),
        pad_id=pad,
        eos_id=hf.get("eos_token_id", 1),
        decoder_start_id=hf.get("decoder_start_token_id", pad),
        name=name,
    )


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


class Seq2SeqCache(struct.PyTreeNode):
    """What decoding keeps between steps: the decoder self-attention cache, and each
    layer's cross-attention keys/values, computed once from the encoder output (with the
    cross prefix, if any, in their first `cross_prefix_length` slots)."""

    self_attn: KVCache
    cross_keys: Array  # [layers, batch, p_cross + S, heads, head_dim]
    cross_values: Array
    cross_valid: Array  # [batch, p_cross + S] bool
    cross_prefix_length: int = struct.field(pytree_node=False, default=0)


class Seq2SeqLayers(DecoderLayers):
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
            setattr(self, f"{norm}_scale", _const((L, d), ("layers", "embed"), pd, 1.0))
            if c.norm == "layer":
                setattr(self, f"{norm}_bias", _const((L, d), ("layers", "embed"), pd, 0.0))
        for prefix in ("", "cross_") if cross else ("",):
            for name in ("q", "k", "v"):
                axes = ("layers", "embed", "heads", "head_dim")
                setattr(self, prefix + name, _param(rngs, (L, d, H, hd), axes, pd))
                if c.bias:
                    bias_axes = ("layers", "heads", "head_dim")
                    setattr(self, f"{prefix}{name}_bias", _const((L, H, hd), bias_axes, pd, 0.0))
            axes = ("layers", "heads", "head_dim", "embed")
            setattr(self, prefix + "o", _param(rngs, (L, H, hd, d), axes, pd))
            if c.bias:
                setattr(self, f"{prefix}o_bias", _const((L, d), ("layers", "embed"), pd, 0.0))
        if c.gated_mlp:
            self.gate = _param(rngs, (L, d, F), ("layers", "embed", "mlp"), pd)
        self.up = _param(rngs, (L, d, F), ("layers", "embed", "mlp"), pd)
        self.down = _param(rngs, (L, F, d), ("layers", "mlp", "embed"), pd)
        if c.bias:
            self.up_bias = _const((L, F), ("layers", "mlp"), pd, 0.0)
            self.down_bias = _const((L, d), ("layers", "embed"), pd, 0.0)


class EncoderDecoder(nnx.Module):
    """BART / T5. `encode` the source once, then `decode` targets against it (with a
    `Seq2SeqCache` for step-by-step decoding); `__call__` is teacher forcing."""

    def __init__(
        self,
        config: Seq2SeqConfig,
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
        for stack in ("encoder", "decoder"):
            if c.positions == "learned":
                rows = c.max_position_embeddings + c.position_offset
                setattr(self, f"{stack}_pos_embed", _param(rngs, (rows, d), (None, "embed"), pd))
            else:
                shape = (c.relative_buckets, c.num_heads)
                setattr(self, f"{stack}_relative_bias", _param(rngs, shape, (None, "heads"), pd))
            for norm, present in (("embed_norm", c.embedding_norm), ("final_norm", c.final_norm)):
                if present:
                    setattr(self, f"{stack}_{norm}_scale", _const((d,), ("embed",), pd, 1.0))
                    if c.norm == "layer":
                        setattr(self, f"{stack}_{norm}_bias", _const((d,), ("embed",), pd, 0.0))
        self.encoder_layers = Seq2SeqLayers(
            c, c.num_encoder_layers, False, rngs=rngs, param_dtype=pd
        )
        self.decoder_layers = Seq2SeqLayers(
            c, c.num_decoder_layers, True, rngs=rngs, param_dtype=pd
        )
        if not c.tie_embeddings:
            self.lm_head = _param(rngs, (d, c.vocab_size), ("embed", "vocab"), pd)
        if c.final_logits_bias:
            self.final_logits_bias = _const((c.vocab_size,), ("vocab",), pd, 0.0)

    # --- pieces shared by both stacks ------------------------------------------------------

    def _top_norm(self, x: Array, name: str) -> Array:
        bias = getattr(self, f"{name}_bias", None)
        scale = getattr(self, f"{name}_scale")[...]
        out = _norm_apply(x, scale, None if bias is None else bias[...], self.config)
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

    def _residual(self, x: Array, params: dict, norm: str, sublayer: Callable) -> Array:
        """Pre-LN `x + f(norm(x))` (T5) or post-LN `norm(x + f(x))` (BART)."""
        c, where = self.config, self.activation_sharding
        if c.post_norm:
            x = _norm(x + sublayer(x), params, norm, c)
        else:
            x = x + sublayer(_norm(x, params, norm, c))
        return constrain(x, where, *HIDDEN_AXES)

    def _attend(self, q, k, v, mask: AttentionMask, prefix_kv, out_name, xs, project) -> Array:
        """Attention of q over [prefix, k/v] and the output projection (with its bias)."""
        where = self.activation_sharding
        q = constrain(q, where, *HEAD_AXES)
        if prefix_kv is not None:
            k, v = _prepend(prefix_kv, k, v)
        k, v = constrain(k, where, *KV_AXES), constrain(v, where, *KV_AXES)
        scale = None if self.config.scale_attention else 1.0  # T5 scores are unscaled
        out = attention(q, k, v, mask, self.attention, where, scale=scale)
        out = project(out_name, constrain(out, where, *HEAD_AXES))
        if self.config.out_bias:
            out = out + xs["params"][f"{out_name}_bias"]
        return out

    def _mlp_block(self, h: Array, xs: dict, project: Callable) -> Array:
        return _mlp(h, xs["params"], project, self.config, self.activation_sharding)

    def _scan(self, layer: Callable, carry, per_layer: dict):
        if self.remat_policy is not None:
            layer = jax.checkpoint(layer, policy=remat_policy(self.remat_policy))
        return jax.lax.scan(layer, carry, per_layer)

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
        attention_mask = _check_tokens(tokens, attention_mask)
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
            _check_prefix(prefix, c, c.num_encoder_layers, b, "encoder")
            mask = _with_prefix(mask, prefix, b)
            per_layer["prefix"] = (prefix.keys.astype(self.dtype), prefix.values.astype(self.dtype))
            positions = positions + _position_offset(prefix)
        x = self._embed(tokens, input_embeds, "encoder", positions)

        def layer(x, xs):
            project = partial(_project, xs=xs, deltas=deltas)
            keys_values = {}

            def self_attention(h):
                q, k, v = _qkv(h, xs["params"], project, c)
                keys_values["kv"] = (k, v)
                return self._attend(q, k, v, mask, xs.get("prefix"), "o", xs, project)

            x = self._residual(x, xs["params"], "attn_norm", self_attention)
            x = self._residual(
                x, xs["params"], "mlp_norm", partial(self._mlp_block, xs=xs, project=project)
            )
            return x, keys_values["kv"] if collect else None

        x, collected = self._scan(layer, x, per_layer)
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
        from prefix_jax.infer.decode import fill_prefix  # decode imports models; not the reverse

        c, where = self.config, self.activation_sharding
        dtype = dtype or self.dtype
        b = encoded.shape[0]
        encoded_mask = jnp.asarray(encoded_mask).astype(bool)
        p_self = 0 if self_prefix is None else self_prefix.length
        shape = (c.num_decoder_layers, b, p_self + max_len, c.num_heads, c.head_dim)
        self_attn = KVCache(
            keys=constrain(jnp.zeros(shape, dtype), where, *CACHE_AXES),
            values=constrain(jnp.zeros(shape, dtype), where, *CACHE_AXES),
            valid=jnp.zeros((b, p_self + max_len), bool),
            index=jnp.zeros((), jnp.int32),
            next_position=jnp.zeros((b,), jnp.int32),
        )
        if self_prefix is not None:
            _check_prefix(self_prefix, c, c.num_decoder_layers, b, "decoder")
            self_attn = fill_prefix(self_attn, self_prefix)
        keys, values = self._cross_keys_values(encoded, deltas)
        valid = encoded_mask
        if cross_prefix is not None:
            _check_prefix(cross_prefix, c, c.num_decoder_layers, b, "cross")
            keys, values = jax.vmap(_prepend)(
                (cross_prefix.keys.astype(keys.dtype), cross_prefix.values.astype(keys.dtype)),
                keys,
                values,
            )
            valid = jnp.concatenate([_prefix_valid(cross_prefix, b), valid], axis=1)
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
            return None, _cross_kv(encoded, xs, partial(_project, xs=xs, deltas=deltas), c)

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
        attention_mask = _check_tokens(tokens, attention_mask)
        b, t = tokens.shape
        self_mask, positions = self._self_mask(attention_mask, cache, self_prefix, b, t)
        cross_mask = self._cross_mask(self_mask, encoded_mask, cross_prefix, cache, b)
        per_layer = {
            "params": self.decoder_layers.stacked(self.dtype),
            "layer": jnp.arange(c.num_decoder_layers, dtype=jnp.int32),
            **delta_inputs(deltas, c.num_decoder_layers, self.dtype),
        }
        if self_prefix is not None:
            _check_prefix(self_prefix, c, c.num_decoder_layers, b, "decoder")
            self_kv = (self_prefix.keys.astype(self.dtype), self_prefix.values.astype(self.dtype))
            per_layer["prefix"] = self_kv
        if cache is not None:
            per_layer["cross"] = (cache.cross_keys, cache.cross_values)
        elif cross_prefix is not None:
            per_layer["cross_prefix"] = (
                cross_prefix.keys.astype(self.dtype),
                cross_prefix.values.astype(self.dtype),
            )
        encoded = None if encoded is None else encoded.astype(self.dtype)
        x = self._embed(tokens, None, "decoder", positions)
        index = None if cache is None else cache.self_attn.index

        def layer(carry, xs):
            x, kv = carry
            project = partial(_project, xs=xs, deltas=deltas)

            def self_attention(h):
                nonlocal kv
                q, k, v = _qkv(h, xs["params"], project, c)
                if kv is not None:
                    k, v, kv = _write_cache(kv, xs["layer"], index, k, v, self.activation_sharding)
                return self._attend(q, k, v, self_mask, xs.get("prefix"), "o", xs, project)

            def cross_attention(h):
                q = project("cross_q", h)
                if c.qkv_bias:
                    q = q + xs["params"]["cross_q_bias"]
                if "cross" in xs:
                    k, v = (a.astype(self.dtype) for a in xs["cross"])
                else:
                    k, v = _cross_kv(encoded, xs, project, c)
                return self._attend(
                    q, k, v, cross_mask, xs.get("cross_prefix"), "cross_o", xs, project
                )

            x = self._residual(x, xs["params"], "attn_norm", self_attention)
            x = self._residual(x, xs["params"], "cross_norm", cross_attention)
            x = self._residual(
                x, xs["params"], "mlp_norm", partial(self._mlp_block, xs=xs, project=project)
            )
            return (x, kv), None

        kv0 = None if cache is None else (cache.self_attn.keys, cache.self_attn.values)
        (x, kv), _ = self._scan(layer, (x, kv0), per_layer)
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
            mask = _with_prefix(mask, prefix, b)
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
                _check_prefix(prefix, self.config, self.config.num_decoder_layers, b, "cross")
                p = prefix.length
                valid = jnp.concatenate([_prefix_valid(prefix, b), valid], axis=1)
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
        w = self.embed[...].T if c.tie_embeddings else self.lm_head[...]
        logits = jnp.einsum(
            "btd,dv->btv", hidden, w.astype(self.dtype), preferred_element_type=jnp.float32
        )
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


# --- helpers -------------------------------------------------------------------------------


def _project(name: str, h: Array, *, xs: dict, deltas: LowRankDeltas | None) -> Array:
    return apply_projection(name, h, xs, deltas)


def _cross_kv(encoded: Array, xs: dict, project: Callable, c: Seq2SeqConfig):
    k, v = project("cross_k", encoded), project("cross_v", encoded)
    if c.qkv_bias:
        k, v = k + xs["params"]["cross_k_bias"], v + xs["params"]["cross_v_bias"]
    return k, v


def _write_cache(kv, layer: Array, index: Array, k: Array, v: Array, where):
    """Write one layer's new keys/values at slot `index`; that layer's whole cache back."""
    ck, cv = kv
    ck = jax.lax.dynamic_update_slice(ck, k[None].astype(ck.dtype), (layer, 0, index, 0, 0))
    cv = jax.lax.dynamic_update_slice(cv, v[None].astype(cv.dtype), (layer, 0, index, 0, 0))
    ck, cv = constrain(ck, where, *CACHE_AXES), constrain(cv, where, *CACHE_AXES)
    return ck[layer].astype(k.dtype), cv[layer].astype(v.dtype), (ck, cv)


def _prepend(prefix_kv: tuple[Array, Array], k: Array, v: Array) -> tuple[Array, Array]:
    """[prefix, k] and [prefix, v] along the key axis; the prefix broadcast over the batch."""
    pk, pv = prefix_kv
    b = k.shape[0]
    pk = jnp.broadcast_to(pk, (b, *pk.shape[1:])).astype(k.dtype)
    pv = jnp.broadcast_to(pv, (b, *pv.shape[1:])).astype(v.dtype)
    return jnp.concatenate([pk, k], axis=1), jnp.concatenate([pv, v], axis=1)


def _prefix_valid(prefix: PrefixKV, batch: int) -> Array:
    p_mask = prefix.mask if prefix.mask is not None else jnp.ones((1, prefix.length), bool)
    return jnp.broadcast_to(p_mask.astype(bool), (batch, prefix.length))


def _with_prefix(mask: AttentionMask, prefix: PrefixKV, batch: int) -> AttentionMask:
    """The mask with p prefix keys (slot -1: seen by every query, no position) in front."""
    p = prefix.length
    return mask.replace(
        key_slots=jnp.concatenate([jnp.full((p,), -1, jnp.int32), mask.key_slots]),
        key_valid=jnp.concatenate([_prefix_valid(prefix, batch), mask.key_valid], axis=1),
        prefix_length=mask.prefix_length + p,
    )


def _position_offset(prefix: PrefixKV) -> Array:
    """[batch or 1, 1]: how far real tokens' learned positions move behind the prefix."""
    if not prefix.positions_after_prefix:
        return jnp.zeros((1, 1), jnp.int32)
    return prefix_lengths(prefix)[:, None]


def _check_tokens(tokens: Array, attention_mask: Array | None) -> Array:
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
    if attention_mask is None:
        return jnp.ones(tokens.shape, bool)
    if attention_mask.shape != tokens.shape:
        raise ValueError(
            f"attention_mask shape {attention_mask.shape} does not match tokens {tokens.shape}"
        )
    return jnp.asarray(attention_mask).astype(bool)


def _check_prefix(prefix: PrefixKV, c: Seq2SeqConfig, layers: int, batch: int, which: str):
    expected = (layers, c.num_heads, c.head_dim)
    got = (prefix.keys.shape[0], *prefix.keys.shape[3:])
    if prefix.keys.ndim != 5 or got != expected or prefix.values.shape != prefix.keys.shape:
        raise ValueError(
            f"the {which} prefix keys/values must be [layers, batch or 1, p, heads, head_dim] "
            f"with layers, heads, head_dim = {expected}; got keys {prefix.keys.shape}, "
            f"values {prefix.values.shape}"
        )
    if prefix.keys.shape[1] not in (1, batch):
        raise ValueError(
            f"the {which} prefix batch {prefix.keys.shape[1]} is neither 1 nor {batch}"
        )
