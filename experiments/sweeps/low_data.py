"""Low-data E2E (Li & Liang Sec. 7.3): 50, 200 and 500 training examples, subsampled by MR.

    prefix-jax launch low_data --workdir runs/low_data
    prefix-jax report runs/low_data --out experiments/results/low_data

Prefix-tuning (MLP, p=10) initialized with the activations of real words
(`text:table-to-text:`) and randomly, full fine-tuning, prompt tuning (p=10) and LoRA
(r=4 on q, v), each at its rate from `_learning_rates.py`; 3 seeds: 45 trials. The report
draws BLEU against `data.train_examples`, one line per method, each seed a point, with
mean ± std over seeds and a bootstrap 95% interval over the held-out MRs, and answers
`CONTRASTS` (prefix-tuning against each other method, real-word against random init) per
size and averaged over sizes, with paired intervals of the BLEU difference.

`data.train_examples=N` keeps exactly N examples of the training pool: whole MRs in an
order drawn with the trial seed, the last one cut to make N (so the seed varies both the
subsample and the training randomness; for one seed, 50 ⊂ 200 ⊂ 500). The held-out MRs do
not change with N or the seed. Every trial has the same budget, 200 steps of batch 8
(`_study.py`, which also shows the `--set` flags for a GPU).
"""

from prefix_jax.study.sweep import METHOD_SEED_KEYS, Contrast, Sweep, chain, sweep

from ._learning_rates import (
    FULL,
    LORA,
    PREFIX_MLP,
    PROMPT,
    lr,
    not_chosen_note,
)
from ._study import CPU_BUDGET, DATA, SEEDS, TEXT_INIT

SIZES = (50, 200, 500)


def methods() -> list[dict]:
    """The five methods with their rates (read when the sweep is built)."""
    return [
        {"method": "prefix", "prefix.init": TEXT_INIT, **lr(PREFIX_MLP)},  # MLP: the default
        {"method": "prefix", "prefix.init": "random", **lr(PREFIX_MLP)},
        {"method": "full", **lr(FULL)},
        {"method": "prompt", **lr(PROMPT)},
        {"method": "lora", **lr(LORA)},
    ]


PREFIX_TEXT = {"method": "prefix", "prefix.init": TEXT_INIT}
# The paper's questions, answered per size and on average over sizes by the report.
CONTRASTS = (
    Contrast(
        "Is prefix-tuning ahead of full fine-tuning at low data?",
        PREFIX_TEXT,
        {"method": "full"},
        within=("data.train_examples",),
    ),
    Contrast(
        "Does real-word init beat random init?",
        PREFIX_TEXT,
        {"method": "prefix", "prefix.init": "random"},
        within=("data.train_examples",),
    ),
    Contrast(
        "Is prefix-tuning ahead of prompt tuning?",
        PREFIX_TEXT,
        {"method": "prompt"},
        within=("data.train_examples",),
    ),
    Contrast(
        "Is prefix-tuning ahead of LoRA?",
        PREFIX_TEXT,
        {"method": "lora"},
        within=("data.train_examples",),
    ),
)


def get_sweep() -> Sweep:
    sizes = sweep("data.train_examples", SIZES)
    return Sweep(
        name="low_data",
        config="configs/e2e.py:method={method}",
        grid=chain(*([{**size, **method} for size in sizes] for method in methods())),
        seeds=SEEDS,
        seed_keys=METHOD_SEED_KEYS,
        base_overrides={**DATA, **CPU_BUDGET},
        contrasts=CONTRASTS,
        note=not_chosen_note([PREFIX_MLP, FULL, PROMPT, LORA]),
    )
