r"""Prefix-tuning on E2E (Novikova et al., 2017) with Li & Liang's settings.

    python -m prefix_jax.train.loop --config configs/e2e_prefix.py --workdir runs/e2e_prefix

Low-data run on the E2E devset held out by MR (447 MRs train, 100 validation), small:

    python -m prefix_jax.train.loop --config configs/e2e_prefix.py:local --workdir runs/e2e_local \
        --config.data.path=../shared/data/e2e/devset.csv --config.data.eval_sources=100

Li & Liang (E2E): lr 8e-5, batch 10, 5 epochs, p=10, MLP reparameterization (hidden 512),
beam 5. Override anything with `--config.x=y`.
"""

from configs.base import apply_local, get_base_config


def get_config(arg: str | None = None):
    c = get_base_config()
    c.data.task = "e2e"
    c.data.path = "e2e_nlg"
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    return apply_local(c) if arg == "local" else c
