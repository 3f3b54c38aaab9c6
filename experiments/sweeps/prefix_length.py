"""Li & Liang Fig. 4: prefix length p in {1, 5, 10, 20, 40} x reparameterization {none, mlp}.

    python -m experiments.launch experiments/sweeps/prefix_length.py --workdir runs/pl
    python -m experiments.report runs/pl          # metric_vs_prefix_length.png

Full E2E with the paper's settings (lr 8e-5, batch 10, 5 epochs, beam 5); 30 trials with
3 seeds, so meant for an accelerator (`--seeds 0` for a single pass).
"""

from experiments.sweeps import Sweep, product, sweep

LENGTHS = (1, 5, 10, 20, 40)


def get_sweep() -> Sweep:
    return Sweep(
        name="prefix_length",
        config="configs/e2e_prefix.py",
        grid=product(
            sweep("prefix.length", LENGTHS),
            sweep("prefix.reparam", ["none", "mlp"]),
        ),
        seeds=(0, 1, 2),
    )
