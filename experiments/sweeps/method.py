"""Method comparison on E2E: prefix-tuning vs every other registered method (prompt
tuning, LoRA, full fine-tuning, LN-tuning).

    prefix-jax launch method --workdir runs/method
    prefix-jax report runs/method        # metric_by_setting.png

Each method trains from the task config with its `method` argument,
`configs/e2e.py:method=<method>`, so with its own optimizer settings (its
`Method.optimizer_defaults` in `prefix_jax.methods.registry`); tune them further with a
learning-rate sweep per method (`--set method=lora` on learning_rate.py).
"""

from prefix_jax.methods import registry
from prefix_jax.study.sweep import METHOD_SEED_KEYS, Sweep, sweep


def get_sweep() -> Sweep:
    return Sweep(
        name="method",
        config="configs/e2e.py:method={method}",
        grid=sweep("method", list(registry.METHODS)),
        seeds=(0, 1, 2),
        seed_keys=METHOD_SEED_KEYS,
    )
