"""Learning rates of the study sweeps (low_data, prefix_length): the one place
they come from. `lr_select` chooses them on validation loss; copy the dict that
`prefix-jax report runs/lr_select` prints (its keys are the settings as the
report labels them) over the one below and say which run chose it.

Chosen by: `prefix-jax launch lr_select --workdir runs/lr_select` (one seed,
200 steps of batch 8, loss on 50 tuning MRs; `experiments/results/lr_select/`): each rate
is the interior minimum of its method's grid.
"""

PREFIX_MLP = "method=prefix,prefix.reparam=mlp"
PREFIX_DIRECT = "method=prefix,prefix.reparam=none,prefix.init=vocab"
PROMPT = "method=prompt"
LORA = "method=lora"
FULL = "method=full"

LEARNING_RATES = {
    PREFIX_MLP: 1e-3,
    PREFIX_DIRECT: 0.1,
    PROMPT: 0.03,
    LORA: 0.003,
    FULL: 3e-4,
}
# Settings whose rate above is a stand-in, not lr_select's choice: the launcher warns.
NOT_CHOSEN: tuple[str, ...] = ()


def not_chosen_note(keys: list[str]) -> str:
    """The launcher's warning for a sweep using rates in `NOT_CHOSEN` ("" if none)."""
    pending = [k for k in keys if k in NOT_CHOSEN]
    if not pending:
        return ""
    return (
        f"learning rate of {', '.join(pending)} not chosen by lr_select yet "
        "(experiments/sweeps/_learning_rates.py): its trials use a stand-in rate"
    )


def lr(key: str) -> dict[str, float]:
    """The override `{"optim.learning_rate": rate}` of a setting (a key above)."""
    return {"optim.learning_rate": LEARNING_RATES[key]}
