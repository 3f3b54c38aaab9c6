r"""Prompt tuning (Lester et al., 2021) on DART, a baseline for prefix-tuning.

    python -m prefix_jax.train.loop --config configs/dart_prompt.py --workdir runs/dart_prompt

A soft prompt of `prompt.length` vectors (default 10, initialized from sampled
vocabulary embeddings) in front of the input embeddings; the model is frozen.

Data, batch size and decoding as in configs/dart_prefix.py (including its `:local`
variant); the optimizer settings are the method's (`configs.base.METHOD_OPTIM`).
"""

from configs import dart_prefix
from configs.base import use_method


def get_config(arg: str | None = None):
    return use_method(dart_prefix.get_config(arg), "prompt", local=arg == "local")
