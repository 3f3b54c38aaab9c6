"""Parameter-efficient methods and baselines; each marks its trainable variables with its own
variable type (full fine-tuning: every `nnx.Param`). `registry` finds a method by name."""

from prefix_jax.methods.finetune import FinetuneConfig, FinetuneLM, TopLayerParam, create_finetune
from prefix_jax.methods.lora import (
    Lora,
    LoraConfig,
    LoraLM,
    LoraParam,
    Seq2SeqLora,
    create_lora,
)
from prefix_jax.methods.partition import count_params
from prefix_jax.methods.prefix.core import (
    Prefix,
    PrefixConfig,
    PrefixLM,
    PrefixParam,
    PrefixParts,
    create_prefix,
)
from prefix_jax.methods.prompt import (
    PromptConfig,
    PromptLM,
    PromptParam,
    Seq2SeqPromptLM,
    SoftPrompt,
    create_prompt,
)

__all__ = [
    "FinetuneConfig",
    "FinetuneLM",
    "Lora",
    "LoraConfig",
    "LoraLM",
    "LoraParam",
    "Prefix",
    "PrefixConfig",
    "PrefixLM",
    "PrefixParam",
    "PrefixParts",
    "PromptConfig",
    "PromptLM",
    "PromptParam",
    "Seq2SeqLora",
    "Seq2SeqPromptLM",
    "SoftPrompt",
    "TopLayerParam",
    "count_params",
    "create_finetune",
    "create_lora",
    "create_prefix",
    "create_prompt",
]
