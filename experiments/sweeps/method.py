"""Method comparison on E2E: prefix-tuning vs every other registered method (prompt
tuning, LoRA, full fine-tuning, LN-tuning).

    python -m prefix_jax.study.launch experiments/sweeps/method.py --workdir runs/method
    python -m prefix_jax.study.report runs/method        # metric_by_setting.png

Each method trains from its own config, `configs/e2e_<method>.py`, so with its own optimizer
settings (its `Method.optimizer` in `prefix_jax.methods.registry`); tune them further with a
learning-rate sweep per method (`--set method=lora` on learning_rate.py).
"""

from prefix_jax.methods import registry
from prefix_jax.study.sweep import METHOD_SEED_KEYS, Sweep, sweep


def get_sweep() -> Sweep:
    return Sweep(
        name="method",
        config="configs/e2e_{method}.py",
        grid=sweep("method", list(registry.METHODS)),
        seeds=(0, 1, 2),
        seed_keys=METHOD_SEED_KEYS,
    )
