r"""Prefix-tuning on DART v1.1.1 (Nan et al., 2021).

    python -m prefix_jax.train.loop --config configs/dart_prefix.py --workdir runs/dart_prefix \
        --config.data.path=PATH/TO/dart-v1.1.1-full-train.json

Small run on the dev file, split by triple set:

    python -m prefix_jax.train.loop --config configs/dart_prefix.py:local \
        --workdir runs/dart_local \
        --config.data.path=../shared/data/dart/dart-v1.1.1-full-dev.json \
        --config.data.eval_sources=100

Li & Liang (DART): lr 5e-5, batch 5, 5 epochs, p=10 (their Appendix A).
"""

from configs.base import apply_local, get_base_config


def get_config(arg: str | None = None):
    c = get_base_config()
    c.data.task = "dart"
    c.data.path = "dart"
    c.optim.learning_rate = 5e-5
    c.batch_size = 5
    return apply_local(c) if arg == "local" else c
