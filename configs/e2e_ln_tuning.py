r"""LN-tuning (PEFT's LNTuningConfig) on E2E, a baseline for prefix-tuning.

    python -m prefix_jax.train.loop --config configs/e2e_ln_tuning.py --workdir runs/e2e_ln

Only the norms' scales (and biases) train; `--config.ln_tuning.targets=final_norm` picks
some. Data, batch size and decoding as in configs/e2e_prefix.py (including its `:local`
variant); the optimizer settings are the method's (its `Method.optimizer`).
"""

from configs import e2e_prefix
from configs.base import use_method


def get_config(arg: str | None = None):
    return use_method(e2e_prefix.get_config(arg), "ln_tuning", local=arg == "local")
