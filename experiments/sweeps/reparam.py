"""Reparameterization at p=10: the MLP vs the prefix learned directly (Li & Liang Sec. 7.4).

    python -m experiments.launch reparam --workdir runs/reparam
    python -m experiments.report runs/reparam --out experiments/results/reparam

The MLP (hidden 512) from the random and the real-word init (`text:table-to-text:`); the
direct prefix (`prefix.reparam=none`) from the keys and values of sampled vocabulary
tokens (`vocab`) and of the real words (a random N(0, 1) direct prefix diverges, see
`experiments/results/small_cpu`). Each reparameterization at its rate from
`_learning_rates.py`, the whole training pool, 200 steps of batch 8 (`_study.py`, with the
`--set` flags for a GPU); 3 seeds: 12 trials. The report draws bars per setting with each
seed as a point.
"""

from experiments.sweeps import Sweep, chain, product, sweep
from experiments.sweeps._learning_rates import PREFIX_DIRECT, PREFIX_MLP, lr
from experiments.sweeps._study import CPU_BUDGET, DATA, SEEDS, TEXT_INIT


def get_sweep() -> Sweep:
    return Sweep(
        name="reparam",
        config="configs/e2e_prefix.py",
        grid=chain(
            product(
                [{"prefix.reparam": "mlp", **lr(PREFIX_MLP)}],
                sweep("prefix.init", ["random", TEXT_INIT]),
            ),
            product(
                [{"prefix.reparam": "none", **lr(PREFIX_DIRECT)}],
                sweep("prefix.init", ["vocab", TEXT_INIT]),
            ),
        ),
        seeds=SEEDS,
        base_overrides={**DATA, **CPU_BUDGET, "prefix.length": 10},
    )
