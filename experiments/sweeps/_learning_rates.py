"""Learning rates of the study sweeps (low_data, prefix_length): the one place
they come from. `lr_select` chooses them on validation loss; copy the dict that
`python -m experiments.report runs/lr_select` prints (its keys are the settings as the
report labels them) over the one below and say which run chose it.

Chosen by: nobody yet. These are the `:local` configs' rates (`configs.base.apply_local`
and `METHOD_OPTIM`, the rates `small_cpu` ran with), the configs' defaults for a run of
a few hundred steps, until lr_select has run. The direct prefix (reparam none) starts from
the MLP prefix's rate.
"""

PREFIX_MLP = "method=prefix,prefix.reparam=mlp"
PREFIX_DIRECT = "method=prefix,prefix.reparam=none,prefix.init=vocab"
PROMPT = "method=prompt"
LORA = "method=lora"
FULL = "method=full"

LEARNING_RATES = {
    PREFIX_MLP: 1e-3,
    PREFIX_DIRECT: 1e-3,
    PROMPT: 3e-2,
    LORA: 1e-3,
    FULL: 1e-4,
}


def lr(key: str) -> dict[str, float]:
    """The override `{"optim.learning_rate": rate}` of a setting (a key above)."""
    return {"optim.learning_rate": LEARNING_RATES[key]}
