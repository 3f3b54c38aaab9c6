"""Learning rate x reparameterization on E2E (Li & Liang report the MLP as more stable).

    prefix-jax launch learning_rate --workdir runs/lr
    prefix-jax report runs/lr          # metric_vs_optim_learning_rate.png (log x)

The paper's E2E value is 8e-5 (batch 10, 5 epochs, linear decay, no warm-up).
"""

from prefix_jax.study.sweep import Sweep, product, sweep

LEARNING_RATES = (1e-5, 3e-5, 8e-5, 2e-4, 5e-4, 1e-3)


def get_sweep() -> Sweep:
    return Sweep(
        name="learning_rate",
        config="configs/e2e.py",
        grid=product(
            sweep("optim.learning_rate", LEARNING_RATES),
            sweep("prefix.reparam", ["none", "mlp"]),
        ),
        seeds=(0, 1),
    )
