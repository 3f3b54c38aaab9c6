"""One configuration type for every supported decoder family.

GPT-2, Llama-style and Gemma checkpoints differ only in a handful of switches (norm,
activation, positions, biases, soft-caps, per-layer windows), so the transformer reads this
config instead of branching on names.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

SUPPORTED_ARCHITECTURES = (
    "gpt2",
    "llama",
    "mistral",
    "phi3",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3_text",
)
ROPE_TYPES = ("default", "linear", "llama3", "longrope")
# Families whose transformers code applies `sliding_window` from config.json (Qwen2 keeps it
# behind use_sliding_window, off in released checkpoints). Gemma reads its own, per layer.
WINDOWED_FAMILIES = ("mistral", "phi3")
# Values of HF `layer_types` (per layer) that this decoder implements.
LAYER_TYPES = ("full_attention", "sliding_attention")


class UnsupportedArchitectureError(ValueError):
    """A checkpoint's architecture is not one this decoder implements."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling read from a checkpoint (`rope_type` as in transformers)."""

    rope_type: str = "default"  # one of ROPE_TYPES
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    # LongRoPE (Phi-3 128k, Phi-3.5): one divisor per frequency, the long set once a call's
    # positions pass the original context, and a factor on cos/sin (the rotated dims of q, k).
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()
    attention_factor: float = 1.0

    def __post_init__(self) -> None:
        # Tuples, not JSON lists: the config is static data of jitted functions (hashed).
        for name in ("short_factor", "long_factor"):
            object.__setattr__(self, name, tuple(float(x) for x in getattr(self, name)))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and switches of a decoder-only transformer."""

    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    norm: str = "rms"  # rms | layer
    norm_eps: float = 1e-5
    activation: str = "silu"  # silu | gelu_tanh | gelu
    gated_mlp: bool = True  # SwiGLU (Llama) vs plain 2-layer MLP (GPT-2)
    positions: str = "rope"  # rope | learned
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = dataclasses.field(default_factory=RopeScaling)
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm over head_dim on queries and keys before RoPE (Qwen3)
    # RoPE rotates only the first `rotary_dim` dims of each head, the rest pass through
    # (Phi-3's partial_rotary_factor); 0 rotates all of head_dim.
    rotary_dim: int = 0
    # >0: each token sees only the last `sliding_window` tokens (itself included; Mistral);
    # the prefix stays visible to every token, as it has no position.
    sliding_window: int = 0
    # Per layer "sliding_attention" | "full_attention" (HF `layer_types`); empty: every layer
    # slides when `sliding_window` > 0 (Mistral). Gemma alternates local and global layers.
    layer_types: tuple[str, ...] = ()
    # RoPE base of the sliding layers (Gemma 3's rope_local_base_freq, no scaling); 0: the
    # same frequencies as the global layers.
    rope_local_theta: float = 0.0
    # Gemma switches. RMSNorm weights are stored as the checkpoint has them (HF form) and
    # applied as (norm_offset + w): Gemma's (1 + w); GGUF files, which hold 1 + w, are shifted
    # back at load.
    norm_offset: float = 0.0
    post_norms: bool = False  # RMSNorm on the attention and MLP outputs before each residual
    embed_scale: bool = False  # token embeddings times sqrt(hidden_size)
    query_pre_attn_scalar: float = 0.0  # attention scale = this ** -0.5; 0: head_dim ** -0.5
    attn_softcap: float = 0.0  # scores -> cap * tanh(scores / cap) before the mask; 0: none
    final_softcap: float = 0.0  # the same on the output logits
    tie_embeddings: bool = True
    name: str = ""  # model identity recorded in exported prefixes

    def __post_init__(self) -> None:
        if self.family not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedArchitectureError(
                f"unsupported architecture {self.family!r}; supported: "
                f"{', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads"):
            if getattr(self, field) <= 0:
                raise ValueError(
                    f"ModelConfig.{field} must be positive, got {getattr(self, field)}"
                )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.norm not in ("rms", "layer"):
            raise ValueError(f"norm must be 'rms' or 'layer', got {self.norm!r}")
        if self.positions not in ("rope", "learned"):
            raise ValueError(f"positions must be 'rope' or 'learned', got {self.positions!r}")
        if self.activation not in ("silu", "gelu_tanh", "gelu"):
            raise ValueError(f"unknown activation {self.activation!r}")
        if self.sliding_window < 0:
            raise ValueError(f"sliding_window must be >= 0, got {self.sliding_window}")
        if not 0 <= self.rotary_dim <= self.head_dim or self.rotary_dim % 2:
            raise ValueError(
                f"rotary_dim must be even and within [0, head_dim={self.head_dim}], "
                f"got {self.rotary_dim}"
            )
        object.__setattr__(self, "layer_types", tuple(self.layer_types))  # lists from JSON
        if self.layer_types and len(self.layer_types) != self.num_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers"
            )
        unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if unknown:
            raise UnsupportedArchitectureError(
                f"unknown layer types {unknown}; supported: {', '.join(LAYER_TYPES)}"
            )
        for field in ("attn_softcap", "final_softcap", "query_pre_attn_scalar"):
            if getattr(self, field) < 0:
                raise ValueError(f"ModelConfig.{field} must be >= 0, got {getattr(self, field)}")
        self._check_rope_scaling()

    def _check_rope_scaling(self) -> None:
        r = self.rope_scaling
        if r.rope_type not in ROPE_TYPES:
            raise UnsupportedArchitectureError(
                f"unsupported rope scaling type {r.rope_type!r}; supported: {', '.join(ROPE_TYPES)}"
            )
        if r.rope_type != "longrope":
            return
        half = self.rope_dim // 2
        if len(r.short_factor) != half or len(r.long_factor) != half:
            raise ValueError(
                f"longrope needs rope_dim / 2 = {half} short and long factors, got "
                f"{len(r.short_factor)} short and {len(r.long_factor)} long"
            )

    @property
    def rope_dim(self) -> int:
        """How many leading dims of each head RoPE rotates."""
        return self.rotary_dim or self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of one layer's keys (or values): what a prefix stores per token and layer."""
        return self.num_kv_heads * self.head_dim

    @property
    def attention_scale(self) -> float:
        """Factor on q.k: query_pre_attn_scalar ** -0.5 (Gemma), else head_dim ** -0.5."""
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    @property
    def residual(self) -> str:
        """How sublayers join the residual stream (`prefix_jax.models.layers.RESIDUALS`):
        Gemma's extra norms on each sublayer's output make it "sandwich"."""
        return "sandwich" if self.post_norms else "pre"

    def layer_windows(self) -> tuple[int, ...]:
        """Each layer's sliding window (0 = global attention)."""
        if not self.layer_types:
            return (self.sliding_window,) * self.num_layers
        return tuple(
            self.sliding_window if kind == "sliding_attention" else 0 for kind in self.layer_types
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        d["rope_scaling"] = RopeScaling(**d.get("rope_scaling", {}))
        return cls(**d)

    def num_params(self) -> int:
        """Parameter count of the base model (embeddings counted once when tied)."""
        d, f, L = self.hidden_size, self.intermediate_size, self.num_layers
        attn = d * (self.num_heads * self.head_dim) * 2 + d * self.kv_dim * 2
        attn += (self.num_heads * self.head_dim + 2 * self.kv_dim) if self.qkv_bias else 0
        attn += d if self.out_bias else 0
        attn += 2 * self.head_dim if self.qk_norm else 0
        mlp = d * f * (3 if self.gated_mlp else 2)
        mlp += (f + d) if self.mlp_bias else 0
        norm_size = d * (2 if self.norm == "layer" else 1)
        per_layer = attn + mlp + (4 if self.post_norms else 2) * norm_size
        total = L * per_layer + norm_size + self.vocab_size * d
        total += 0 if self.tie_embeddings else self.vocab_size * d
        total += self.max_position_embeddings * d if self.positions == "learned" else 0
        return total


def _rope_dict(hf: dict[str, Any]) -> dict[str, Any]:
    """transformers 4.x keeps `rope_theta`/`rope_scaling`; 5.x moves both to `rope_parameters`."""
    return {**(hf.get("rope_parameters") or {}), **(hf.get("rope_scaling") or {})}


def _rope_scaling_from_hf(hf: dict[str, Any], family: str) -> tuple[float, RopeScaling]:
    rope = _rope_dict(hf)
    theta = rope.get("rope_theta") or hf.get("rope_theta") or 10000.0
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if family == "phi3" and rope_type in ("su", "yarn"):
        rope_type = "longrope"  # Phi-3's early names for it, renamed so by transformers
    if rope_type not in ROPE_TYPES:
        raise UnsupportedArchitectureError(
            f"unsupported rope scaling type {rope_type!r}; supported: {', '.join(ROPE_TYPES)}"
        )
    keys = {f.name for f in dataclasses.fields(RopeScaling)} - {"rope_type", "attention_factor"}
    kwargs = {k: rope[k] for k in keys if rope.get(k) is not None}
    if rope_type == "longrope":
        kwargs.update(_longrope_from_hf(hf, rope, family))
    return float(theta), RopeScaling(rope_type=rope_type, **kwargs)


def _longrope_from_hf(hf: dict[str, Any], rope: dict[str, Any], family: str) -> dict[str, Any]:
    """LongRoPE's context lengths and attention factor as transformers derives them."""
    top = hf.get("original_max_position_embeddings")
    if top is None and family == "phi3":
        top = 4096  # Phi3Config's default, which transformers prefers to the rope dict's
    original = top or rope.get("original_max_position_embeddings") or hf["max_position_embeddings"]
    factor = rope.get("factor") or hf["max_position_embeddings"] / original
    attention = rope.get("attention_factor")
    if attention is None:  # the LongRoPE paper's choice for a context extended `factor` times
        attention = math.sqrt(1 + math.log(factor) / math.log(original)) if factor > 1 else 1.0
    return {
        "original_max_position_embeddings": int(original),
        "factor": float(factor),
        "attention_factor": float(attention),
    }


def _rotary_dim_from_hf(hf: dict[str, Any], family: str, head_dim: int) -> int:
    """Phi-3 rotates `partial_rotary_factor` of each head (0 here: all of it); the other
    families' transformers code ignores that key."""
    if family != "phi3":
        return 0
    fraction = _rope_dict(hf).get("partial_rotary_factor") or hf.get("partial_rotary_factor")
    dim = int(head_dim * (fraction or 1.0))
    return 0 if dim == head_dim else dim


# HF `hidden_activation` values of Gemma checkpoints -> our activations.
_GEMMA_ACTIVATIONS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu"}


def _gemma3_rope(hf: dict[str, Any]) -> tuple[float, RopeScaling, float]:
    """(global theta, global scaling, local theta) of a Gemma 3 config.

    transformers 5.x nests one `rope_parameters` dict per layer type; 4.x has `rope_theta`
    and `rope_scaling` for the global layers and `rope_local_base_freq` for the local ones.
    """
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params or "sliding_attention" in params:
        full = dict(params.get("full_attention") or {})
        local = dict(params.get("sliding_attention") or {})
    else:
        full = {"rope_theta": hf.get("rope_theta"), **(hf.get("rope_scaling") or {})}
        local = {"rope_theta": hf.get("rope_local_base_freq")}
    local_type = local.get("rope_type") or local.get("type") or "default"
    if local_type != "default":
        raise UnsupportedArchitectureError(
            f"unsupported rope type {local_type!r} for gemma3_text sliding layers; "
            "supported: default"
        )
    full["rope_theta"] = full.get("rope_theta") or 1_000_000.0  # transformers' defaults
    # The global layers' RoPE dict in place of the config's own, the rest (contexts) as is.
    theta, scaling = _rope_scaling_from_hf(
        {**hf, "rope_scaling": None, "rope_parameters": full}, "gemma3_text"
    )
    return theta, scaling, float(local.get("rope_theta") or 10_000.0)


def _gemma_layer_types(hf: dict[str, Any], default_pattern: int) -> tuple[str, ...]:
    """HF `layer_types`, or every `sliding_window_pattern`-th layer global (older configs)."""
    if hf.get("layer_types"):
        return tuple(hf["layer_types"])
    pattern = hf.get("sliding_window_pattern") or default_pattern
    return tuple(
        "sliding_attention" if (i + 1) % pattern else "full_attention"
        for i in range(hf["num_hidden_layers"])
    )


def _gemma_from_hf(hf: dict[str, Any], name: str) -> ModelConfig:
    """Gemma 2 and Gemma 3 (text): GeGLU, (1 + w) RMSNorms before and after attention and
    MLP, scaled embeddings, local/global layers; soft-caps (Gemma 2) or q/k norms (Gemma 3)."""
    model_type = hf["model_type"]
    gemma3 = model_type == "gemma3_text"
    if hf.get("use_bidirectional_attention"):
        raise UnsupportedArchitectureError(
            f"{model_type} with use_bidirectional_attention is not supported; causal only"
        )
    act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in _GEMMA_ACTIVATIONS:
        raise UnsupportedArchitectureError(
            f"unsupported hidden_activation {act!r} for {model_type}; supported: "
            f"{', '.join(_GEMMA_ACTIVATIONS)}"
        )
    if gemma3:
        theta, scaling, local_theta = _gemma3_rope(hf)
        # transformers' Gemma 3 attention never applies attn_logit_softcapping (llama.cpp's
        # converter asserts it is unset): Gemma 3 replaced it by the q/k norms.
        attn_cap, final_cap = 0.0, hf.get("final_logit_softcapping")
    else:
        (theta, scaling), local_theta = _rope_scaling_from_hf(hf, "gemma2"), 0.0
        attn_cap = hf.get("attn_logit_softcapping", 50.0)  # transformers' defaults
        final_cap = hf.get("final_logit_softcapping", 30.0)
    max_positions = hf.get("max_position_embeddings", 131_072 if gemma3 else 8192)
    window = hf.get("sliding_window") or 0
    if window >= max_positions:
        window = 0  # a window as long as the context is full attention
    heads = hf["num_attention_heads"]
    return ModelConfig(
        family=model_type,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        intermediate_size=hf["intermediate_size"],
        max_position_embeddings=max_positions,
        norm="rms",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        activation=_GEMMA_ACTIVATIONS[act],
        gated_mlp=True,
        positions="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        qkv_bias=bool(hf.get("attention_bias", False)),
        out_bias=bool(hf.get("attention_bias", False)),
        qk_norm=gemma3,
        sliding_window=window,
        layer_types=_gemma_layer_types(hf, 6 if gemma3 else 2),
        rope_local_theta=local_theta,
        norm_offset=1.0,
        post_norms=True,
        embed_scale=True,
        query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar", 256)),
        attn_softcap=float(attn_cap or 0.0),
        final_softcap=float(final_cap or 0.0),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        name=name,
    )


def config_from_hf(hf: dict[str, Any], name: str = "") -> ModelConfig:
    """Translate a Hugging Face `config.json` dict into a ModelConfig."""
    model_type = hf.get("model_type")
    if model_type == "gemma3":
        raise UnsupportedArchitectureError(
            "model_type 'gemma3' is the multimodal Gemma3ForConditionalGeneration (vision tower "
            "and text model in one checkpoint); only the text decoder is supported: use a "
            "text-only checkpoint (model_type 'gemma3_text', e.g. google/gemma-3-1b-pt)"
        )
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {model_type!r} (architectures={hf.get('architectures')}); "
            f"supported model_type values: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    if model_type == "gpt2":
        d, heads = hf["n_embd"], hf["n_head"]
        act = hf.get("activation_function", "gelu_new")
        return ModelConfig(
            family="gpt2",
            vocab_size=hf["vocab_size"],
            hidden_size=d,
            num_layers=hf["n_layer"],
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=d // heads,
            intermediate_size=hf.get("n_inner") or 4 * d,
            max_position_embeddings=hf["n_positions"],
            norm="layer",
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            activation="gelu_tanh" if act in ("gelu_new", "gelu_pytorch_tanh") else "gelu",
            gated_mlp=False,
            positions="learned",
            qkv_bias=True,
            out_bias=True,
            mlp_bias=True,
            tie_embeddings=hf.get("tie_word_embeddings", True),
            name=name,
        )
    if model_type in ("gemma2", "gemma3_text"):
        return _gemma_from_hf(hf, name)
    if model_type == "qwen3" and hf.get("use_sliding_window"):
        raise UnsupportedArchitectureError(
            "qwen3 with use_sliding_window is not supported; only full attention"
        )
    window = (hf.get("sliding_window") or 0) if model_type in WINDOWED_FAMILIES else 0
    if window >= hf.get("max_position_embeddings", math.inf):
        window = 0  # a window as long as the context is full attention
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedArchitectureError(f"unsupported hidden_act {act!r} for {model_type}")
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    theta, scaling = _rope_scaling_from_hf(hf, model_type)
    return ModelConfig(
        family=model_type,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        norm="rms",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        activation="silu",
        gated_mlp=True,
        positions="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        qkv_bias=model_type == "qwen2" or bool(hf.get("attention_bias", False)),
        out_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        qk_norm=model_type == "qwen3",
        rotary_dim=_rotary_dim_from_hf(hf, model_type, head_dim),
        sliding_window=window,
        tie_embeddings=hf.get("tie_word_embeddings", False),
        name=name,
    )
