r"""Full fine-tuning on WebNLG 2017, a baseline for prefix-tuning.

    python -m prefix_jax.train.loop --config configs/webnlg_full.py --workdir runs/webnlg_full

Every weight trains. FT-top2 (only the last two layers train, as in Li & Liang's
comparison) is `--config.finetune.top_layers=2`. No small artifact is exported: the
weights are in `checkpoints/`.

Data, batch size and decoding as in configs/webnlg_prefix.py (including its `:local`
variant); the optimizer settings are the method's (`configs.base.METHOD_OPTIM`).
"""

from configs import webnlg_prefix
from configs.base import use_method


def get_config(arg: str | None = None):
    return use_method(webnlg_prefix.get_config(arg), "full", local=arg == "local")
