"""Parameter-efficient methods; each marks its trainable variables with its own type."""

from prefix_jax.methods.partition import count_params
from prefix_jax.methods.prefix import (
    Prefix,
    PrefixConfig,
    PrefixLM,
    PrefixParam,
    create_prefix,
)

__all__ = ["Prefix", "PrefixConfig", "PrefixLM", "PrefixParam", "count_params", "create_prefix"]
