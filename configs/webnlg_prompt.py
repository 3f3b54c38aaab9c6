r"""Prompt tuning (Lester et al., 2021) on WebNLG 2017, a baseline for prefix-tuning.

    python -m prefix_jax.train.loop --config configs/webnlg_prompt.py --workdir runs/webnlg_prompt

A soft prompt of `prompt.length` vectors (default 10, initialized from sampled
vocabulary embeddings) in front of the input embeddings; the model is frozen.

Data, batch size and decoding as in configs/webnlg_prefix.py (including its `:local`
variant); the optimizer settings are the method's (`configs.base.METHOD_OPTIM`).
"""

from configs import webnlg_prefix
from configs.base import use_method


def get_config(arg: str | None = None):
    return use_method(webnlg_prefix.get_config(arg), "prompt", local=arg == "local")
