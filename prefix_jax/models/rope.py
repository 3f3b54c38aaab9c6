"""Rotary position embeddings (RoPE) of the decoder-only families, with their scalings.

Linear, Llama 3.1 and LongRoPE (Phi-3) frequency scaling, partial rotary dims (Phi-3), and
per-layer frequencies where local and global layers use different bases (Gemma 3).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from prefix_jax.models.config import ModelConfig, RopeScaling

Array = jax.Array


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
