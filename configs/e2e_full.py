r"""Full fine-tuning on E2E, a baseline for prefix-tuning.

    python -m prefix_jax.train.loop --config configs/e2e_full.py --workdir runs/e2e_full

Every weight trains. FT-top2 (only the last two layers train, as in Li & Liang's
comparison) is `--config.finetune.top_layers=2`. No small artifact is exported: the
weights are in `checkpoints/`.

Data, batch size and decoding as in configs/e2e_prefix.py (including its `:local`
variant); the optimizer settings are the method's (`configs.base.METHOD_OPTIM`).
"""

from configs import e2e_prefix
from configs.base import use_method


def get_config(arg: str | None = None):
    return use_method(e2e_prefix.get_config(arg), "full", local=arg == "local")
