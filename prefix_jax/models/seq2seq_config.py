"""The shape and switches of an encoder-decoder (BART, T5), read from its `config.json`.

BART and T5 differ by switches of one `Seq2SeqConfig`: learned or relative positions,
LayerNorm or RMSNorm, post-LN or pre-LN residuals, biases, embedding scaling and the
tied-head rescale (see `prefix_jax.models.seq2seq` for what each does in the model).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from prefix_jax.models.config import UnsupportedArchitectureError
from prefix_jax.models.layers import ACTIVATIONS

SEQ2SEQ_ARCHITECTURES = ("bart", "t5")
# transformers' activation names -> ours (`prefix_jax.models.layers.ACTIVATIONS`).
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

    # Names the shared blocks (`prefix_jax.models.layers`) read from a config.
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

    @property
    def attention_scale(self) -> float:
        """Factor on q.k: head_dim ** -0.5, or 1 for T5 (its scores are unscaled)."""
        return self.head_dim**-0.5 if self.scale_attention else 1.0

    @property
    def attn_softcap(self) -> float:
        return 0.0

    @property
    def residual(self) -> str:
        """How sublayers join the residual stream (`prefix_jax.models.layers.RESIDUALS`)."""
        return "post" if self.post_norm else "pre"

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
