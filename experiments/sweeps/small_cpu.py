"""A sweep this 2-core CPU machine can finish: prefix length p in {1, 5, 10, 20} x
reparameterization {none, mlp}, plus prompt tuning and LoRA at the same budget.

    prefix-jax launch small_cpu --workdir runs/cpu
    prefix-jax report runs/cpu

Every trial uses its method's `:local` config (`configs/e2e.py:method=<method>,local`: 60 steps
of batch 8, 32 held-out MRs, beam 2) on the E2E devset split by MR (100 MRs held out), as
the demo does. The devset is read from `$PREFIX_JAX_DATA/e2e/devset.csv` (default:
`shared/data` next to the repository), or pass `--set data.path=PATH`. Ten trials of a few
minutes each; one seed.
"""

from prefix_jax.study.sweep import METHOD_SEED_KEYS, Sweep, chain, product, sweep

from ._study import DATA


def get_sweep() -> Sweep:
    return Sweep(
        name="small_cpu",
        config="configs/e2e.py:method={method},local",
        grid=chain(
            product(
                sweep("method", ["prefix"]),
                sweep("prefix.length", [1, 5, 10, 20]),
                sweep("prefix.reparam", ["none", "mlp"]),
            ),
            sweep("method", ["prompt", "lora"]),
        ),
        seeds=(0,),
        seed_keys=METHOD_SEED_KEYS,
        base_overrides=dict(DATA),
    )
