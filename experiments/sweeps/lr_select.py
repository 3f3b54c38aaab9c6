"""Each method's learning rate, chosen on validation loss, for the study sweeps.

    prefix-jax launch lr_select --workdir runs/lr_select
    prefix-jax report runs/lr_select --out experiments/results/lr_select

The report's "chosen by validation loss" section gives, per method, the rate with the
lowest mean `eval_loss` and the dict to paste into `experiments/sweeps/_learning_rates.py`
(with a line saying which run chose it); a choice at the edge of its grid is flagged, and
the grid should then be extended (`GRIDS` below) before trusting it.

Validation here is not the held-out set: `data.tune_sources=50` holds out 50 further MRs of
the training pool and computes the loss (and decodes 20 MRs, beam 2, for a look at BLEU)
on them, so the 100 held-out MRs of the studies never inform a choice. Trials train on the
remaining 397 MRs with the studies' budget (`_study.py`): one seed, 21 trials on the CPU.
Add `--seeds 0,1` for two seeds (the report averages them), `--set data.train_examples=200`
to choose in the low-data regime, and the same `--set` budget flags as the studies when
scaling them up (see `_study.py`). The direct prefix is tuned with the vocabulary init
(the random init diverges; `experiments/results/small_cpu`).
"""

from prefix_jax.study.sweep import METHOD_SEED_KEYS, Sweep, chain, product, sweep

from ._learning_rates import FULL, LORA, PREFIX_DIRECT, PREFIX_MLP, PROMPT
from ._study import CPU_BUDGET, DATA

# Three rates per method, a factor of about 3 apart, around the current rate, extended
# where the lowest loss was at the top of the grid:
# - the direct prefix: 1.775 at 1e-3, 1.568 at 3e-3, 1.427 at 1e-2, 1.346 at 3e-2, 1.321
#   at 1e-1, and up again at 3e-1 (1.355);
# - LoRA: 1.435 at 3e-4, 1.330 at 1e-3, 1.269 at 3e-3, and up again at 1e-2 (1.315);
# - full fine-tuning: 1.255 at 3e-5, 1.186 at 1e-4, 1.178 at 3e-4, and up again at 1e-3
#   (1.227).
GRIDS = {
    PREFIX_MLP: (3e-4, 1e-3, 3e-3),
    PREFIX_DIRECT: (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
    PROMPT: (1e-2, 3e-2, 1e-1),
    LORA: (3e-4, 1e-3, 3e-3, 1e-2),
    FULL: (3e-5, 1e-4, 3e-4, 1e-3),
}
TUNE_MRS = 50


def _setting(key: str) -> list[dict]:
    """`method=prefix,prefix.reparam=mlp` -> [{"method": "prefix", "prefix.reparam": "mlp"}]."""
    return [dict(part.split("=", 1) for part in key.split(","))]


def get_sweep() -> Sweep:
    return Sweep(
        name="lr_select",
        config="configs/e2e.py:method={method}",
        grid=chain(
            *(
                product(_setting(key), sweep("optim.learning_rate", rates))
                for key, rates in GRIDS.items()
            )
        ),
        seeds=(0,),
        seed_keys=METHOD_SEED_KEYS,
        base_overrides={
            **DATA,
            **CPU_BUDGET,
            "data.tune_sources": TUNE_MRS,
            "data.max_eval_groups": 20,
            "decode.beam_size": 2,
        },
    )
