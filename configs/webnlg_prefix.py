r"""Prefix-tuning on WebNLG 2017 (Gardent et al., 2017).

    python -m prefix_jax.train.loop --config configs/webnlg_prefix.py --workdir runs/webnlg_prefix \
        --config.data.path=PATH/TO/webnlg/train.json

Small run on the dev file, split by triple set:

    python -m prefix_jax.train.loop --config configs/webnlg_prefix.py:local \
        --workdir runs/webnlg_local \
        --config.data.path=../shared/data/webnlg2017/dev.json --config.data.eval_sources=100

Li & Liang (WebNLG): lr 5e-5, batch 5, 5 epochs, p=10 (their Appendix A). Training keeps
only lexicalisations marked `good`; evaluation groups keep all references of an entry.
"""

from configs.base import apply_local, get_base_config


def get_config(arg: str | None = None):
    c = get_base_config()
    c.data.task = "webnlg"
    c.data.path = "web_nlg"
    c.optim.learning_rate = 5e-5
    c.batch_size = 5
    return apply_local(c) if arg == "local" else c
