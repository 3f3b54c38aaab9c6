r"""LoRA (Hu et al., 2021) on WebNLG 2017, a baseline for prefix-tuning.

    python -m prefix_jax.train.loop --config configs/webnlg_lora.py --workdir runs/webnlg_lora

Rank 4, alpha 32, dropout 0.1 on q and v (Hu et al.'s GPT-2 E2E setting); other
weights with e.g. `--config.lora.targets="('q','k','v','o')"`.

Data, batch size and decoding as in configs/webnlg_prefix.py (including its `:local`
variant); the optimizer settings are the method's (`configs.base.METHOD_OPTIM`).
"""

from configs import webnlg_prefix
from configs.base import use_method


def get_config(arg: str | None = None):
    return use_method(webnlg_prefix.get_config(arg), "lora", local=arg == "local")
