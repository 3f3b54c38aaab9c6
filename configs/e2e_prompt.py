r"""Prompt tuning (Lester et al., 2021) on E2E, a baseline for prefix-tuning.

    python -m prefix_jax.train.loop --config configs/e2e_prompt.py --workdir runs/e2e_prompt

A soft prompt of `prompt.length` vectors (default 10, initialized from sampled
vocabulary embeddings) in front of the input embeddings; the model is frozen.

Data, batch size and decoding as in configs/e2e_prefix.py (including its `:local`
variant); the optimizer settings are the method's (`configs.base.METHOD_OPTIM`).
"""

from configs import e2e_prefix
from configs.base import use_method


def get_config(arg: str | None = None):
    return use_method(e2e_prefix.get_config(arg), "prompt", local=arg == "local")
