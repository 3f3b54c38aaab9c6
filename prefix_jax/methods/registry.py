"""Every method by name: the one place that lists them.

    from prefix_jax.methods import registry
    method = registry.get(config.method)   # ValueError naming the known methods
    lm, trainable, info = method.create(model, config, tokenizer)

Adding a method is one module (a `Method` subclass) and one line here.
"""

from __future__ import annotations

from prefix_jax.methods.api import Method
from prefix_jax.methods.finetune import FinetuneMethod
from prefix_jax.methods.ln_tuning import LNTuningMethod
from prefix_jax.methods.lora import LoraMethod
from prefix_jax.methods.prefix.method import PrefixMethod
from prefix_jax.methods.prompt import PromptMethod

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        PrefixMethod(),
        PromptMethod(),
        LoraMethod(),
        FinetuneMethod(),
        LNTuningMethod(),
    )
}


def get(name: str) -> Method:
    """The method called `name`."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def seed_keys() -> tuple[str, ...]:
    """The trial seed and every method's own init seed: a sweep across methods sets them
    all to the trial's seed."""
    return ("seed", *(key for m in METHODS.values() for key in m.seed_keys))
