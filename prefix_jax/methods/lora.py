"""LoRA (Hu et al., 2021): trainable low-rank updates `W + (alpha / r) A B` of chosen weights.

Factors are stacked like the layer weights they update: A [layers, *in, r] and
B [layers, r, *out] in the weight's own layout (q: A [L, embed, r], B [L, r, heads,
head_dim]), and ride through the layer scan as the transformer's `deltas` hook. As in
PEFT, A starts kaiming-uniform (U(-1/sqrt(fan_in), 1/sqrt(fan_in))) and B at zero, so an
untrained LoRA model computes exactly the base model's logits; dropout applies to the
input of A in training.

Targets are regular expressions full-matched against our weight names (q, k, v, o, gate,
up, down); PEFT's module names are accepted too (q_proj ... down_proj; GPT-2's c_attn =
q, k, v; attn.c_proj = o; c_fc = up; mlp.c_proj = down; c_proj = o and down).

GPT-2's fused c_attn is one module in PEFT, with one A shared by q, k and v: LoRA on
c_attn is a rank-r update of the fused [d, 3d] weight, ours on q, k, v three rank-r
updates (4dr vs 6dr parameters per layer). Ours exports to PEFT exactly as a rank-3r LoRA
on c_attn (stacked A, block-diagonal B, alpha scaled by 3 to keep alpha / r).

An encoder-decoder's LoRA (both stacks, cross-attention included) exports to PEFT's
SEQ_2_SEQ_LM layout under BART's or T5's module names.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from prefix_jax.methods.api import Loaded, Method, Model, Writer
from prefix_jax.methods.common import WrappedLM, read_artifact, write_artifact
from prefix_jax.models.config import ModelConfig
from prefix_jax.models.layers import PROJECTIONS, LowRankDeltas, projection_in_dims
from prefix_jax.models.pretrained import model_identity
from prefix_jax.models.seq2seq import EncoderDecoder, Seq2SeqDeltas
from prefix_jax.models.transformer import Transformer

Array = jax.Array
FORMAT_VERSION = 1

PEFT_NAMES: dict[str, tuple[str, ...]] = {
    "q_proj": ("q",),
    "k_proj": ("k",),
    "v_proj": ("v",),
    "o_proj": ("o",),
    "gate_proj": ("gate",),
    "up_proj": ("up",),
    "down_proj": ("down",),
    "c_attn": ("q", "k", "v"),
    "attn.c_proj": ("o",),
    "c_fc": ("up",),
    "mlp.c_proj": ("down",),
    "c_proj": ("o", "down"),
}


class LoraParam(nnx.Param):
    """Trainable LoRA factors: the partition LoRA optimizes."""


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Rank, scaling (alpha / rank), dropout and target weights of LoRA."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "v")
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))  # lists from JSON configs
        if self.rank <= 0:
            raise ValueError(f"lora rank must be positive, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"lora alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ValueError("lora targets must name at least one weight, e.g. ('q', 'v')")
        for pattern in self.targets:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"lora target {pattern!r} is not a valid regex: {e}") from None

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def target_names(self, model: ModelConfig) -> tuple[str, ...]:
        """Our weight names the targets select in this decoder-only model, in layer order."""
        available = [  # a decoder-only model has no cross-attention
            n
            for n in PROJECTIONS
            if not n.startswith("cross_") and (n != "gate" or model.gated_mlp)
        ]
        chosen = self.matches(available)
        for pattern, names in chosen.items():
            if not names:
                raise ValueError(
                    f"lora target {pattern!r} matches no weight of this {model.family} model; "
                    f"weights: {', '.join(available)} (or PEFT names: {', '.join(PEFT_NAMES)})"
                )
        return _in_order(available, chosen)

    def matches(self, available: list[str]) -> dict[str, list[str]]:
        """Each target pattern's matches among the `available` weight names."""
        out = {}
        for pattern in self.targets:
            names = PEFT_NAMES.get(pattern) or [n for n in available if re.fullmatch(pattern, n)]
            out[pattern] = [n for n in names if n in available]
        return out

    def num_params(self, model: ModelConfig) -> int:
        """Trainable parameter count: layers * r * (fan_in + fan_out) per target weight."""
        d, f, L = model.hidden_size, model.intermediate_size, model.num_layers
        q, kv = model.num_heads * model.head_dim, model.kv_dim
        fans = {
            "q": (d, q),
            "k": (d, kv),
            "v": (d, kv),
            "o": (q, d),
            "gate": (d, f),
            "up": (d, f),
            "down": (f, d),
        }
        return sum(L * self.rank * sum(fans[n]) for n in self.target_names(model))


def _in_order(available: list[str], chosen: dict[str, list[str]]) -> tuple[str, ...]:
    picked = {n for names in chosen.values() for n in names}
    return tuple(n for n in available if n in picked)


class Lora(nnx.Module):
    """The stacked A/B factors of every target weight (`<name>_a`, `<name>_b`) of one stack
    of layers (`model.layers`, or `stack`, e.g. an encoder-decoder's `decoder_layers`, with
    the weight names `targets`)."""

    def __init__(
        self,
        model: Transformer | EncoderDecoder,
        config: LoraConfig,
        *,
        rngs: nnx.Rngs,
        stack: str = "layers",
        targets: tuple[str, ...] | None = None,
    ):
        self.config = config
        self.targets = config.target_names(model.config) if targets is None else targets
        r = config.rank
        weights = getattr(model, stack)
        for name in self.targets:
            weight = getattr(weights, name)
            axes = weight.get_metadata("logical_axes")  # (layers, *in, *out)
            n_in = projection_in_dims(name)
            layers, ins, outs = (
                weight.shape[0],
                weight.shape[1 : 1 + n_in],
                weight.shape[1 + n_in :],
            )
            bound = 1.0 / math.sqrt(math.prod(ins))
            a = jax.random.uniform(rngs.params(), (layers, *ins, r), jnp.float32, -bound, bound)
            setattr(self, f"{name}_a", LoraParam(a, logical_axes=(*axes[: 1 + n_in], "lora_rank")))
            setattr(
                self,
                f"{name}_b",
                LoraParam(
                    jnp.zeros((layers, r, *outs), jnp.float32),
                    logical_axes=(axes[0], "lora_rank", *axes[1 + n_in :]),
                ),
            )

    def factors(self) -> dict[str, tuple[Array, Array]]:
        return {
            n: (getattr(self, f"{n}_a")[...], getattr(self, f"{n}_b")[...]) for n in self.targets
        }

    def __call__(self, dropout_key: Array | None = None) -> LowRankDeltas:
        """The deltas for the transformer; dropout only when a key (training) is given."""
        return LowRankDeltas(
            factors=self.factors(),
            scale=self.config.scale,
            dropout=self.config.dropout,
            dropout_key=dropout_key,
        )


class Seq2SeqLora(nnx.Module):
    """LoRA on both stacks of an encoder-decoder: `encoder` and `decoder` (the decoder's
    targets may include the cross-attention's `cross_q`, `cross_k`, `cross_v`, `cross_o`).
    A target pattern must match a weight of at least one stack."""

    def __init__(self, model: EncoderDecoder, config: LoraConfig, *, rngs: nnx.Rngs):
        self.config = config
        stacks = {}
        for stack in ("encoder", "decoder"):
            layers = getattr(model, f"{stack}_layers")
            available = [n for n in PROJECTIONS if isinstance(getattr(layers, n, None), nnx.Param)]
            stacks[stack] = (available, config.matches(available))
        for pattern in config.targets:
            if not any(chosen[pattern] for _, chosen in stacks.values()):
                raise ValueError(
                    f"lora target {pattern!r} matches no weight of this {model.config.family} "
                    f"model; weights: {', '.join(stacks['decoder'][0])}"
                )
        for stack, (available, chosen) in stacks.items():
            targets = _in_order(available, chosen)
            lora = Lora(model, config, rngs=rngs, stack=f"{stack}_layers", targets=targets)
            setattr(self, stack, lora)

    def __call__(self, dropout_key: Array | None = None) -> Seq2SeqDeltas:
        """Each stack's deltas (None for a stack without targets); dropout only with a key."""
        keys = (None, None) if dropout_key is None else tuple(jax.random.split(dropout_key))
        return Seq2SeqDeltas(
            encoder=self.encoder(keys[0]) if self.encoder.targets else None,
            decoder=self.decoder(keys[1]) if self.decoder.targets else None,
        )


class LoraLM(WrappedLM):
    """A frozen base model with LoRA updates on its target weights (a decoder's `Lora`, an
    encoder-decoder's `Seq2SeqLora`)."""

    def __init__(self, base: Transformer | EncoderDecoder, lora: Lora | Seq2SeqLora):
        if isinstance(lora, Seq2SeqLora) != isinstance(base, EncoderDecoder):
            raise ValueError(
                "an encoder-decoder takes Seq2SeqLora factors, a decoder-only model Lora"
            )
        if isinstance(lora, Lora):
            for name in lora.targets:
                want = getattr(base.layers, name).shape
                a, b = getattr(lora, f"{name}_a"), getattr(lora, f"{name}_b")
                if (*a.shape[:-1], *b.shape[2:]) != want:
                    raise ValueError(
                        f"lora factors for {name!r} ({a.shape}, {b.shape}) do not fit the "
                        f"model's weight {want}"
                    )
        self.base = base
        self.lora = lora

    def forward_kwargs(self, dropout_key: Array | None) -> dict:
        return {"deltas": self.lora(dropout_key)}

    def stack_kwargs(self, stack: str) -> dict:
        """An encoder-decoder's decoding calls take their stack's deltas (dropout off); a
        decoder-only model's come with `hidden_states`."""
        if isinstance(self.lora, Lora):
            return {}
        return {"deltas": getattr(self.lora(), stack)}


def create_lora(
    model: Transformer | EncoderDecoder, config: LoraConfig
) -> tuple[Lora | Seq2SeqLora, dict[str, float]]:
    """LoRA factors for `model` (B = 0, so the model starts as the base); and init info."""
    if isinstance(model, EncoderDecoder):
        return Seq2SeqLora(model, config, rngs=nnx.Rngs(config.seed)), {}
    return Lora(model, config, rngs=nnx.Rngs(config.seed)), {}


# --- export -------------------------------------------------------------------------------


def _stacks(lora: Lora | Seq2SeqLora) -> dict[str, Lora]:
    """The LoRA of each stack by tensor-name prefix: "" for a decoder-only model."""
    if isinstance(lora, Seq2SeqLora):
        return {"encoder.": lora.encoder, "decoder.": lora.decoder}
    return {"": lora}


def save(
    lora: Lora | Seq2SeqLora,
    model: Transformer | EncoderDecoder,
    directory: str | Path,
    training: dict | None = None,
) -> Path:
    """Our format: `lora.safetensors` (`<name>.a`, `<name>.b`, stacked as in `Lora`; an
    encoder-decoder's prefixed `encoder.` / `decoder.`) and `lora_config.json`."""
    tensors = {}
    for stack, part in _stacks(lora).items():
        for name, (a, b) in part.factors().items():
            tensors[f"{stack}{name}.a"], tensors[f"{stack}{name}.b"] = np.asarray(a), np.asarray(b)
    meta = {
        "format": "prefix_jax.lora",
        "version": FORMAT_VERSION,
        "rank": lora.config.rank,
        "alpha": lora.config.alpha,
        "targets": list(lora.config.targets if isinstance(lora, Seq2SeqLora) else lora.targets),
        "layout": "a: [layers, *weight input dims, rank]; b: [layers, rank, *weight output dims]",
        "model": model_identity(model),
        "training": {"lora": dataclasses.asdict(lora.config), **(training or {})},
    }
    return write_artifact(directory, "lora.safetensors", tensors, "lora_config.json", meta)


def load(directory: str | Path, model: Transformer | EncoderDecoder) -> Lora | Seq2SeqLora:
    """The LoRA factors `save` wrote (dropout off: for evaluation), checked against `model`."""
    tensors, meta = read_artifact(
        directory, "lora.safetensors", "lora_config.json", "prefix_jax.lora"
    )
    config = LoraConfig(rank=meta["rank"], alpha=meta["alpha"], targets=tuple(meta["targets"]))
    lora, _ = create_lora(model, config)
    for stack, part in _stacks(lora).items():
        for name in part.targets:
            for factor in ("a", "b"):
                param = getattr(part, f"{name}_{factor}")
                value = tensors.get(f"{stack}{name}.{factor}")
                if value is None or value.shape != param.shape:
                    got = "missing" if value is None else f"shape {value.shape}"
                    raise ValueError(
                        f"{directory}: LoRA factor {stack}{name}.{factor} is {got}; this model "
                        f"needs {param.shape} (was it exported for another model?)"
                    )
                param[...] = jnp.asarray(value)
    return lora


_LLAMA_MODULES = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}
_GPT2_MODULES = {"o": "attn.c_proj", "up": "mlp.c_fc", "down": "mlp.c_proj"}


def peft_tensors(lora: Lora, model: Transformer) -> tuple[dict[str, np.ndarray], dict]:
    """PEFT LoRA state dict ([r, in] lora_A, [out, r] lora_B per layer and module) and the
    config entries that depend on the model."""
    c, r = model.config, lora.config.rank
    factors = {n: (np.asarray(a), np.asarray(b)) for n, (a, b) in lora.factors().items()}
    gpt2 = c.family == "gpt2"
    prefix, modules = (
        ("base_model.model.transformer.h", _GPT2_MODULES)
        if gpt2
        else ("base_model.model.model.layers", _LLAMA_MODULES)
    )
    fused = [n for n in ("q", "k", "v") if gpt2 and n in factors]
    tensors = {}
    for layer in range(c.num_layers):
        for name, (a, b) in factors.items():
            if name in fused:
                continue
            key = f"{prefix}.{layer}.{modules[name]}"
            tensors[f"{key}.lora_A.weight"] = a[layer].reshape(-1, r).T
            tensors[f"{key}.lora_B.weight"] = b[layer].reshape(r, -1).T
        if fused:
            # c_attn's output is [q | k | v]: a rank-(r * len(fused)) update with the A's
            # stacked and a block-diagonal B (zero rows for the parts without LoRA).
            d = c.hidden_size
            key = f"{prefix}.{layer}.attn.c_attn"
            a_fused = np.concatenate([factors[n][0][layer].T for n in fused])  # [n*r, d]
            b_fused = np.zeros((3 * d, len(fused) * r), np.float32)
            for i, n in enumerate(fused):
                j = ("q", "k", "v").index(n)
                b_fused[j * d : (j + 1) * d, i * r : (i + 1) * r] = (
                    factors[n][1][layer].reshape(r, d).T
                )
            tensors[f"{key}.lora_A.weight"] = a_fused
            tensors[f"{key}.lora_B.weight"] = b_fused
    names = [modules[n] for n in factors if n not in fused] + (["attn.c_attn"] if fused else [])
    extra = {"target_modules": sorted(names), "fan_in_fan_out": gpt2}
    if fused:
        extra["rank_pattern"] = {"attn.c_attn": len(fused) * r}
        extra["alpha_pattern"] = {"attn.c_attn": len(fused) * lora.config.alpha}
    return tensors, extra


_BART_MODULES = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.out_proj",
    "cross_q": "encoder_attn.q_proj",
    "cross_k": "encoder_attn.k_proj",
    "cross_v": "encoder_attn.v_proj",
    "cross_o": "encoder_attn.out_proj",
    "up": "fc1",
    "down": "fc2",
}


def _t5_modules(stack: str, gated: bool) -> dict[str, str]:
    """T5's module names under a block: the decoder's feed-forward is sublayer 2."""
    ff = f"layer.{2 if stack == 'decoder' else 1}.DenseReluDense"
    names = {n: f"layer.0.SelfAttention.{n}" for n in ("q", "k", "v", "o")}
    names |= {f"cross_{n}": f"layer.1.EncDecAttention.{n}" for n in ("q", "k", "v", "o")}
    if gated:
        return names | {"gate": f"{ff}.wi_0", "up": f"{ff}.wi_1", "down": f"{ff}.wo"}
    return names | {"up": f"{ff}.wi", "down": f"{ff}.wo"}


def peft_seq2seq_tensors(
    lora: Seq2SeqLora, model: EncoderDecoder
) -> tuple[dict[str, np.ndarray], dict]:
    """PEFT's LoRA state dict of BART or T5 (`base_model.model.[model.]<stack>.<layers>.<i>.
    <module>.lora_A/B.weight`) and its `target_modules`, the module names below a layer."""
    c, r = model.config, lora.config.rank
    tensors, modules = {}, set()
    for stack, part in (("encoder", lora.encoder), ("decoder", lora.decoder)):
        if c.family == "bart":
            prefix, names = f"base_model.model.model.{stack}.layers", _BART_MODULES
        else:
            prefix, names = f"base_model.model.{stack}.block", _t5_modules(stack, c.gated_mlp)
        for name, (a, b) in part.factors().items():
            a, b = np.asarray(a), np.asarray(b)
            modules.add(names[name])
            for layer in range(len(a)):
                key = f"{prefix}.{layer}.{names[name]}"
                tensors[f"{key}.lora_A.weight"] = a[layer].reshape(-1, r).T
                tensors[f"{key}.lora_B.weight"] = b[layer].reshape(r, -1).T
    return tensors, {"target_modules": sorted(modules), "fan_in_fan_out": False}


def save_peft(
    lora: Lora | Seq2SeqLora, model: Transformer | EncoderDecoder, directory: str | Path
) -> Path:
    """A PEFT LORA adapter (`adapter_config.json`, `adapter_model.safetensors`) that
    `peft.PeftModel.from_pretrained` loads onto the Hugging Face model."""
    seq2seq = isinstance(lora, Seq2SeqLora)
    tensors, extra = peft_seq2seq_tensors(lora, model) if seq2seq else peft_tensors(lora, model)
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM",
        "r": lora.config.rank,
        "lora_alpha": lora.config.alpha,
        "lora_dropout": lora.config.dropout,
        "bias": "none",
        "init_lora_weights": True,
        "inference_mode": True,
        "base_model_name_or_path": model.config.name,
        "revision": None,
        **extra,
    }
    return write_artifact(
        directory, "adapter_model.safetensors", tensors, "adapter_config.json", config
    )


class LoraMethod(Method):
    """Hu et al.'s LoRA; the defaults are their GPT-2 E2E setting (r=4, alpha=32, dropout
    0.1 on W_q and W_v) and optimizer (lr 2e-4, weight decay 0.01, 500 warmup steps)."""

    name = "lora"
    config_block = "lora"
    config_class = LoraConfig
    defaults = {"rank": 4, "alpha": 32.0, "dropout": 0.1}
    seed_keys = ("lora.seed",)
    optimizer = (
        {"learning_rate": 2e-4, "weight_decay": 0.01, "warmup_steps": 500},
        {"learning_rate": 1e-3, "weight_decay": 0.01},
    )

    def create(self, model: Model, config: ml_collections.ConfigDict, tokenizer=None):
        del tokenizer
        factors, info = create_lora(model, self.read_config(config))
        return LoraLM(model, factors), LoraParam, info

    def export(self, lm: nnx.Module, model: Model, training: dict) -> dict[str, Writer]:
        return {
            "export": lambda d: save(lm.lora, model, d, training),
            "export_peft": lambda d: save_peft(lm.lora, model, d),
        }

    def load(self, directory: str | Path, model: Model) -> Loaded:
        return Loaded(LoraLM(model, load(directory, model)))
