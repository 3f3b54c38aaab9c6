"""Prompt tuning (Lester et al., 2021): p trainable vectors in front of the token embeddings.

Unlike a prefix, the soft prompt enters only at the input layer; every layer's keys and
values at its positions are computed by the frozen model. The virtual tokens are real
input positions: they take positions 0..p-1 and the first real token is at p (PEFT's
convention; with left padding our real tokens still start at p, PEFT's would not).

Deep prompt tuning (P-tuning v2, trainable vectors at every layer) is prefix-tuning with
`reparam="none"`: use `PrefixConfig(reparam="none")`, not this module.

`PromptLM` returns logits only for the real tokens, so `lm_loss` and the train step work
unchanged. For decoding with a KV cache, `PromptLM.init_cache` returns a cache already
holding the soft prompt, so `prefix_jax.infer.decode.greedy`/`beam_search` take the wrapper as
the model.

On an encoder-decoder (T5, Lester et al.'s setting) the soft prompt goes in front of the
encoder's input: `Seq2SeqPromptLM.encode` returns p + S encoder states, and the decoder's
cross-attention sees the prompt's states as always valid.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from prefix_jax.methods.api import Loaded, Method, Model, Writer
from prefix_jax.methods.common import WrappedLM, read_artifact, write_artifact
from prefix_jax.models.config import ModelConfig
from prefix_jax.models.kv import KVCache
from prefix_jax.models.pretrained import model_identity
from prefix_jax.models.seq2seq import EncoderDecoder
from prefix_jax.models.transformer import Transformer

Array = jax.Array
FORMAT_VERSION = 1


class PromptParam(nnx.Param):
    """Trainable soft-prompt vectors: the partition prompt tuning optimizes."""


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """Length and initialization of the soft prompt."""

    length: int = 10
    init: str = "random"  # random | vocab (sampled vocabulary embeddings) | text:<words>
    init_scale: float = 1.0  # std of the random init (N(0, 1): PEFT's nn.Embedding default)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.length <= 0:
            raise ValueError(f"prompt length must be positive, got {self.length}")
        if self.init not in ("random", "vocab") and not self.init.startswith("text:"):
            raise ValueError(
                f"prompt init must be 'random', 'vocab' or 'text:<words>', got {self.init!r}"
            )
        if self.init.startswith("text:") and not self.init[5:].strip():
            raise ValueError("prompt init 'text:' needs words after the colon")
        if self.init_scale <= 0:
            raise ValueError(f"prompt init_scale must be positive, got {self.init_scale}")

    def num_params(self, model: ModelConfig) -> int:
        """Trainable parameter count: p vectors of the embedding width."""
        return self.length * model.hidden_size


class SoftPrompt(nnx.Module):
    """The [p, d_model] soft prompt."""

    def __init__(self, model_config: ModelConfig, config: PromptConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.model_config = model_config
        shape = (config.length, model_config.hidden_size)
        self.embedding = PromptParam(
            jax.random.normal(rngs.params(), shape) * config.init_scale,
            logical_axes=("prompt_len", "embed"),
        )

    @property
    def length(self) -> int:
        return self.config.length


def _check_width(prompt: SoftPrompt, base: Transformer | EncoderDecoder) -> None:
    if prompt.model_config.hidden_size != base.config.hidden_size:
        raise ValueError(
            f"soft prompt width {prompt.model_config.hidden_size} does not match the "
            f"model's hidden size {base.config.hidden_size}"
        )


class PromptLM(WrappedLM):
    """A frozen base model with a soft prompt in front of every sequence."""

    def __init__(self, base: Transformer, prompt: SoftPrompt):
        _check_width(prompt, base)
        self.base = base
        self.prompt = prompt

    def _prompt_embeds(self, batch: int) -> Array:
        p, d = self.prompt.embedding.shape
        return jnp.broadcast_to(self.prompt.embedding[...].astype(self.base.dtype), (batch, p, d))

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        """A cache of max_len + p slots whose first p hold the soft prompt."""
        p = self.prompt.length
        cache = self.base.init_cache(batch, max_len + p, dtype)
        _, cache = self.base.hidden_states(
            jnp.zeros((batch, p), jnp.int32),
            jnp.ones((batch, p), bool),
            cache=cache,
            input_embeds=self._prompt_embeds(batch),
        )
        return cache

    def hidden_states(
        self,
        tokens: Array,
        attention_mask: Array | None = None,
        *,
        dropout_key: Array | None = None,
        cache: KVCache | None = None,
        input_embeds: Array | None = None,
        **kw,
    ) -> tuple[Array, KVCache | None]:
        """Hidden states of the real tokens only. A `cache` must come from `init_cache`
        (it already holds the soft prompt); without one the prompt is prepended here."""
        del dropout_key  # prompt tuning has no dropout of its own
        if cache is not None:
            return self.base.hidden_states(
                tokens, attention_mask, cache=cache, input_embeds=input_embeds, **kw
            )
        b, t = tokens.shape
        p = self.prompt.length
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), bool)
        embeds = self.base.embed_tokens(tokens) if input_embeds is None else input_embeds
        hidden, _ = self.base.hidden_states(
            jnp.concatenate([jnp.zeros((b, p), tokens.dtype), tokens], axis=1),
            jnp.concatenate([jnp.ones((b, p), bool), attention_mask.astype(bool)], axis=1),
            input_embeds=jnp.concatenate(
                [self._prompt_embeds(b), embeds.astype(self.base.dtype)], 1
            ),
            **kw,
        )
        return hidden[:, p:], None

    def __call__(
        self,
        tokens: Array,
        attention_mask: Array | None = None,
        *,
        dropout_key: Array | None = None,
        **kw,
    ) -> tuple[Array, KVCache | None]:
        """Logits [B, T, vocab] (float32) of the real tokens, and the advanced cache."""
        hidden, cache = self.hidden_states(tokens, attention_mask, dropout_key=dropout_key, **kw)
        return self.unembed(hidden), cache


class Seq2SeqPromptLM(WrappedLM):
    """A frozen encoder-decoder with a soft prompt in front of every encoder input."""

    def __init__(self, base: EncoderDecoder, prompt: SoftPrompt):
        _check_width(prompt, base)
        self.base = base
        self.prompt = prompt

    def prompted_mask(self, source_mask: Array) -> Array:
        """The encoder states' mask: the p prompt positions are always valid."""
        ones = jnp.ones((source_mask.shape[0], self.prompt.length), bool)
        return jnp.concatenate([ones, source_mask.astype(bool)], axis=1)

    def encode(self, tokens: Array, attention_mask: Array | None = None, **kw) -> Array:
        """Encoder states [B, p + S, d] of the soft prompt followed by the source."""
        b, s = tokens.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, s), bool)
        p, d = self.prompt.embedding.shape
        prompt = jnp.broadcast_to(self.prompt.embedding[...].astype(self.base.dtype), (b, p, d))
        embeds = jnp.concatenate([prompt, self.base.embed_tokens(tokens)], axis=1)
        return self.base.encode(
            jnp.concatenate([jnp.zeros((b, p), tokens.dtype), tokens], axis=1),
            self.prompted_mask(attention_mask),
            input_embeds=embeds,
            **kw,
        )

    def _encoded_mask(self, encoded: Array, encoded_mask: Array) -> Array:
        if encoded.shape[1] == encoded_mask.shape[1] + self.prompt.length:
            return self.prompted_mask(encoded_mask)  # the source's mask: add the prompt's
        return encoded_mask

    def init_cache(self, encoded: Array, encoded_mask: Array, max_len: int, **kw):
        return super().init_cache(encoded, self._encoded_mask(encoded, encoded_mask), max_len, **kw)

    def decode(self, tokens, attention_mask, encoded, encoded_mask, **kw):
        if encoded is not None:
            encoded_mask = self._encoded_mask(encoded, encoded_mask)
        return super().decode(tokens, attention_mask, encoded, encoded_mask, **kw)

    def __call__(self, source, source_mask, target, target_mask, *, dropout_key=None) -> Array:
        """Teacher-forced logits [B, T, vocab] of the targets (prompt tuning has no dropout)."""
        del dropout_key
        if source_mask is None:
            source_mask = jnp.ones(source.shape, bool)
        encoded = self.encode(source, source_mask)
        logits, _ = self.decode(target, target_mask, encoded, self.prompted_mask(source_mask))
        return logits


def init_embeddings(
    config: PromptConfig, model: Transformer | EncoderDecoder, tokenizer=None
) -> Array | None:
    """Initial [p, d] vectors from vocabulary embeddings, or None for a random init.

    `vocab` samples p token ids uniformly (PEFT's SAMPLE_VOCAB); `text:` tokenizes the
    words and repeats or trims them to p (PEFT's TEXT init).
    """
    if config.init == "random":
        return None
    if config.init == "vocab":
        ids = jax.random.randint(
            jax.random.key(config.seed), (config.length,), 0, model.config.vocab_size
        )
    else:
        if tokenizer is None:
            raise ValueError(f"prompt init {config.init!r} needs a tokenizer")
        words = tokenizer(config.init[5:], add_special_tokens=False)["input_ids"]
        if not words:
            raise ValueError(f"prompt init {config.init!r} tokenizes to no tokens")
        reps = -(-config.length // len(words))
        ids = jnp.asarray((list(words) * reps)[: config.length], jnp.int32)
    # The vectors the model reads for those tokens (Gemma's and BART's embedding scale
    # applied): the soft prompt enters after that scaling.
    return model.embed_tokens(ids).astype(jnp.float32)


def create_prompt(
    model: Transformer | EncoderDecoder, config: PromptConfig, tokenizer=None
) -> tuple[SoftPrompt, dict[str, float]]:
    """Build and initialize a soft prompt for `model`; returns it and (no) init diagnostics."""
    prompt = SoftPrompt(model.config, config, rngs=nnx.Rngs(config.seed))
    vectors = init_embeddings(config, model, tokenizer)
    if vectors is not None:
        prompt.embedding[...] = vectors
    return prompt, {}


# --- export -------------------------------------------------------------------------------


def save(
    prompt: SoftPrompt, model: Transformer, directory: str | Path, training: dict | None = None
) -> Path:
    """Our format: `prompt.safetensors` (`prompt`, [p, d]) and `prompt_config.json`."""
    meta = {
        "format": "prefix_jax.prompt",
        "version": FORMAT_VERSION,
        "length": prompt.length,
        "hidden_size": prompt.model_config.hidden_size,
        "positions": "virtual tokens at 0..p-1, real tokens from p",
        "model": model_identity(model),
        "training": {"prompt": dataclasses.asdict(prompt.config), **(training or {})},
    }
    table = np.asarray(prompt.embedding[...])
    return write_artifact(
        directory, "prompt.safetensors", {"prompt": table}, "prompt_config.json", meta
    )


def load(directory: str | Path, model: Transformer) -> SoftPrompt:
    """The soft prompt `save` wrote, checked against `model`'s embedding width."""
    tensors, meta = read_artifact(
        directory, "prompt.safetensors", "prompt_config.json", "prefix_jax.prompt"
    )
    table = tensors["prompt"]
    if table.ndim != 2 or table.shape[1] != model.config.hidden_size:
        raise ValueError(
            f"{directory}: soft prompt of shape {table.shape} does not fit a model with hidden "
            f"size {model.config.hidden_size}"
        )
    config = PromptConfig(length=table.shape[0], **_config_fields(meta))
    prompt = SoftPrompt(model.config, config, rngs=nnx.Rngs(config.seed))
    prompt.embedding[...] = jnp.asarray(table)
    return prompt


def _config_fields(meta: dict) -> dict:
    saved = meta.get("training", {}).get("prompt", {})
    return {k: saved[k] for k in ("init", "init_scale", "seed") if k in saved}


def save_peft(
    prompt: SoftPrompt, model: Transformer | EncoderDecoder, directory: str | Path
) -> Path:
    """A PEFT PROMPT_TUNING adapter (`prompt_embeddings` [p, d]) that PeftModel loads. For
    an encoder-decoder, one transformer submodule: PEFT then puts the prompt in front of
    the encoder's input alone, as `Seq2SeqPromptLM` does."""
    c = model.config
    seq2seq = isinstance(model, EncoderDecoder)
    config = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM",
        "num_virtual_tokens": prompt.length,
        "token_dim": c.hidden_size,
        "num_transformer_submodules": 1,
        "num_attention_heads": c.num_heads,
        "num_layers": c.num_decoder_layers if seq2seq else c.num_layers,
        "prompt_tuning_init": "RANDOM",
        "inference_mode": True,
        "base_model_name_or_path": c.name,
        "revision": None,
    }
    table = np.asarray(prompt.embedding[...])
    return write_artifact(
        directory,
        "adapter_model.safetensors",
        {"prompt_embeddings": table},
        "adapter_config.json",
        config,
    )


class PromptMethod(Method):
    """Lester et al.'s soft prompt. Sampled vocabulary embeddings start better than random;
    prompt tuning needs a large rate (PEFT's causal-LM prompt-tuning example: 3e-2)."""

    name = "prompt"
    config_block = "prompt"
    config_class = PromptConfig
    defaults = {"init": "vocab"}
    seed_keys = ("prompt.seed",)
    optimizer = ({"learning_rate": 3e-2}, {"learning_rate": 3e-2})

    def create(self, model: Model, config: ml_collections.ConfigDict, tokenizer=None):
        soft, info = create_prompt(model, self.read_config(config), tokenizer)
        wrapper = Seq2SeqPromptLM if isinstance(model, EncoderDecoder) else PromptLM
        return wrapper(model, soft), PromptParam, info

    def export(self, lm: nnx.Module, model: Model, training: dict) -> dict[str, Writer]:
        return {
            "export": lambda d: save(lm.prompt, model, d, training),
            "export_peft": lambda d: save_peft(lm.prompt, model, d),
        }

    def load(self, directory: str | Path, model: Model) -> Loaded:
        wrapper = Seq2SeqPromptLM if isinstance(model, EncoderDecoder) else PromptLM
        return Loaded(wrapper(model, load(directory, model)))

    def extra_input_tokens(self, config: ml_collections.ConfigDict) -> int:
        return config.prompt.length
