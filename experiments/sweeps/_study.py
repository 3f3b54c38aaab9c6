"""Data and budget shared by the study sweeps (lr_select, low_data, prefix_length).

Data: the E2E devset split by MR, 100 MRs (868 pairs) held out with `data.split_seed=0`
(the config default), the same for every trial seed and training-set size; the other 447
MRs (3,804 pairs) are the training pool. The devset is read from
`$PREFIX_JAX_DATA/e2e/devset.csv` (default: `shared/data` next to the repository), or pass
`--set data.path=PATH`.

Budget, sized for the 2-core CPU: 200 AdamW steps of batch 8 with 10 warm-up steps and
linear decay for every method and training-set size (a fixed budget: 50 examples are 32
epochs, the whole pool under half of one), beam 3 and at most 48 new tokens on all 100
held-out MRs. `--set` replaces any of these for every trial, e.g. on a GPU:

    --set max_steps=2000 --set batch_size=10 --set decode.beam_size=5 \
    --set decode.max_new_tokens=64

and Li & Liang's full-E2E setting (their training and validation sets, 5 epochs, batch 10,
no warm-up, beam 5) adds `--set data.path=e2e_nlg --set data.eval_sources=0 --set
max_steps=0 --set epochs=5 --set optim.warmup_steps=0`. Learning rates are part of the
trials (`_learning_rates.py`), not of `--set`: rerun lr_select with the same `--set` flags
at a new budget and update that file.
"""

import os
from pathlib import Path

DATA_ROOT = Path(
    os.environ.get("PREFIX_JAX_DATA", Path(__file__).resolve().parents[3] / "shared/data")
)
HELD_OUT_MRS = 100

DATA = {
    "data.path": str(DATA_ROOT / "e2e" / "devset.csv"),
    "data.eval_sources": HELD_OUT_MRS,
}
CPU_BUDGET = {
    "max_steps": 200,
    "batch_size": 8,
    "optim.warmup_steps": 10,
    "eval_every": 0,
    "checkpoint_every": 50,
    "log_every": 10,
    "decode.beam_size": 3,
    "decode.max_new_tokens": 48,
}
# Li & Liang's task-relevant real words for table-to-text (their initialization study).
TEXT_INIT = "text:table-to-text:"
SEEDS = (0, 1, 2)
