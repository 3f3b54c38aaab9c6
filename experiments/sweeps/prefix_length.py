"""Li & Liang Fig. 4 at a fixed budget: prefix length p in {1, 5, 10, 20, 40}.

    python -m experiments.launch prefix_length --workdir runs/prefix_length
    python -m experiments.report runs/prefix_length --out experiments/results/prefix_length

Prefix-tuning with the MLP reparameterization (random init, the config default) at each
p, with prompt tuning (p=10) and LoRA as reference lines (dashed in the report's
metric_vs_prefix_length.png); every method at its rate from `_learning_rates.py`, the
whole training pool of 447 MRs, the same 200 steps of batch 8 for every p; 3 seeds: 21
trials. The direct prefix is in `reparam.py`. For the paper's full-E2E setting (lr 8e-5 is
theirs, so rerun lr_select first) see the `--set` flags in `_study.py`.
"""

from experiments.sweeps import METHOD_SEED_KEYS, Sweep, chain, product, sweep
from experiments.sweeps._learning_rates import LORA, PREFIX_MLP, PROMPT, lr
from experiments.sweeps._study import CPU_BUDGET, DATA, SEEDS

LENGTHS = (1, 5, 10, 20, 40)


def get_sweep() -> Sweep:
    return Sweep(
        name="prefix_length",
        config="configs/e2e_{method}.py",
        grid=chain(
            product(
                [{"method": "prefix", **lr(PREFIX_MLP)}],  # MLP: the config default
                sweep("prefix.length", LENGTHS),
            ),
            [{"method": "prompt", **lr(PROMPT)}, {"method": "lora", **lr(LORA)}],
        ),
        seeds=SEEDS,
        seed_keys=METHOD_SEED_KEYS,
        base_overrides={**DATA, **CPU_BUDGET},
    )
