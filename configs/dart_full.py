r"""Full fine-tuning on DART, a baseline for prefix-tuning.

    python -m prefix_jax.train.loop --config configs/dart_full.py --workdir runs/dart_full

Every weight trains. FT-top2 (only the last two layers train, as in Li & Liang's
comparison) is `--config.finetune.top_layers=2`. No small artifact is exported: the
weights are in `checkpoints/`.

Data, batch size and decoding as in configs/dart_prefix.py (including its `:local`
variant); the optimizer settings are the method's (`configs.base.METHOD_OPTIM`).
"""

from configs import dart_prefix
from configs.base import use_method


def get_config(arg: str | None = None):
    return use_method(dart_prefix.get_config(arg), "full", local=arg == "local")
