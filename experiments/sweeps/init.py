"""Prefix initialization (Li & Liang Fig. 5): random vs real-word activations, low-data.

    prefix-jax launch init --workdir runs/init

The paper finds that initializing with activations of real words helps most with little
data, task-relevant words ("table-to-text:") more than irrelevant ones ("elephant"); so this
sweep trains on 10% of E2E. `vocab` uses p random vocabulary tokens.
"""

from prefix_jax.study.sweep import Sweep, sweep

INITS = ("random", "vocab", "text:table-to-text:", "text:elephant")


def get_sweep() -> Sweep:
    return Sweep(
        name="init",
        config="configs/e2e.py",
        grid=sweep("prefix.init", INITS),
        seeds=(0, 1, 2),
        base_overrides={"data.train_fraction": 0.1},
    )
