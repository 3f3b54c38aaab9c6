"""Li & Liang Fig. 4 and Sec. 7.4 at a fixed budget: prefix length and reparameterization.

    prefix-jax launch prefix_length --workdir runs/prefix_length
    prefix-jax report runs/prefix_length --out experiments/results/prefix_length

- Prefix length: the MLP prefix (hidden 512, random init, the config default) at p in
  {1, 5, 10, 20, 40}.
- Reparameterization at p=10: the same MLP prefix against the prefix learned directly
  (`prefix.reparam=none`) from the keys and values of sampled vocabulary tokens (`vocab`)
  and of real words (`text:table-to-text:`); a random N(0, 1) direct prefix diverges
  (`experiments/results/small_cpu`). The MLP at p=10 is shared by both questions, which
  is why they are one sweep.
- Prompt tuning (p=10) and LoRA as reference lines (dashed in the report's
  metric_vs_prefix_length.png).
- The report answers `CONTRASTS`: the MLP at p=10 against each other length, the direct
  prefixes, prompt tuning and LoRA, with paired intervals of the BLEU difference.

Every method at its rate from `_learning_rates.py`, the whole training pool of 447 MRs,
200 steps of batch 8 for every setting (`_study.py`, with the `--set` flags for a GPU or
the paper's full-E2E setting, whose rates need lr_select rerun); 3 seeds: 27 trials.
"""

from prefix_jax.study.sweep import METHOD_SEED_KEYS, Contrast, Sweep, chain, product, sweep

from ._learning_rates import (
    LORA,
    PREFIX_DIRECT,
    PREFIX_MLP,
    PROMPT,
    lr,
    not_chosen_note,
)
from ._study import CPU_BUDGET, DATA, SEEDS, TEXT_INIT

LENGTHS = (1, 5, 10, 20, 40)
REPARAM_LENGTH = 10
MLP_AT_10 = {"prefix.reparam": "mlp", "prefix.length": REPARAM_LENGTH}
# Fig. 4's shape (a peak near 10, a dip after), Sec. 7.4's reparameterization, and the
# reference lines, each as "is the MLP prefix at p=10 ahead?".
CONTRASTS = (
    *(
        Contrast(
            f"Is p=10 ahead of p={length}?",
            MLP_AT_10,
            {"prefix.reparam": "mlp", "prefix.length": length},
        )
        for length in LENGTHS
        if length != REPARAM_LENGTH
    ),
    *(
        Contrast(
            f"Is the MLP ahead of the direct prefix ({init} init)?",
            MLP_AT_10,
            {"prefix.reparam": "none", "prefix.init": init},
        )
        for init in ("vocab", TEXT_INIT)
    ),
    Contrast("Is prefix-tuning (p=10) ahead of prompt tuning?", MLP_AT_10, {"method": "prompt"}),
    Contrast("Is prefix-tuning (p=10) ahead of LoRA?", MLP_AT_10, {"method": "lora"}),
)


def get_sweep() -> Sweep:
    mlp = {"method": "prefix", "prefix.reparam": "mlp", "prefix.init": "random"}
    direct = {"method": "prefix", "prefix.reparam": "none", "prefix.length": REPARAM_LENGTH}
    return Sweep(
        name="prefix_length",
        config="configs/e2e.py:method={method}",
        grid=chain(
            product([{**mlp, **lr(PREFIX_MLP)}], sweep("prefix.length", LENGTHS)),
            product([{**direct, **lr(PREFIX_DIRECT)}], sweep("prefix.init", ["vocab", TEXT_INIT])),
            [{"method": "prompt", **lr(PROMPT)}, {"method": "lora", **lr(LORA)}],
        ),
        seeds=SEEDS,
        seed_keys=METHOD_SEED_KEYS,
        base_overrides={**DATA, **CPU_BUDGET},
        contrasts=CONTRASTS,
        note=not_chosen_note([PREFIX_MLP, PREFIX_DIRECT, PROMPT, LORA]),
    )
