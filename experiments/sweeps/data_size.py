"""Data efficiency (Li & Liang Sec. 7.2 / Fig. 3): train on 10% ... 100% of the E2E sources.

    prefix-jax launch data_size --workdir runs/data
    prefix-jax report runs/data        # metric_vs_data_train_fraction.png

`data.train_fraction` keeps that share of distinct training sources (all references of a
kept source stay); the subset is drawn with `seed`, so the seed axis varies both the subset
and the training randomness, as the paper averages over sampled datasets and seeds.
The step count follows the data (same number of epochs); compare with `--set max_steps=N`.
"""

from prefix_jax.study.sweep import Sweep, product, sweep

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def get_sweep() -> Sweep:
    return Sweep(
        name="data_size",
        config="configs/e2e.py",
        grid=product(sweep("data.train_fraction", FRACTIONS)),
        seeds=(0, 1, 2),
    )
