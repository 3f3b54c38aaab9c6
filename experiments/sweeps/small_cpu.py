"""A sweep this 2-core CPU machine can finish: p in {1, 5, 10, 20} x reparam {none, mlp}.

    python -m experiments.launch experiments/sweeps/small_cpu.py --workdir runs/cpu
    python -m experiments.report runs/cpu

Uses `configs/e2e_prefix.py:local` (60 steps, 32 held-out MRs, beam 2) on the E2E devset
split by MR (100 MRs held out), as the demo does. The devset is read from
`$PREFIX_JAX_DATA/e2e/devset.csv` (default: `shared/data` next to the repository), or pass
`--set data.path=PATH`. Eight trials of a few minutes each; one seed.
"""

import os
from pathlib import Path

from experiments.sweeps import Sweep, product, sweep

DATA_ROOT = Path(
    os.environ.get("PREFIX_JAX_DATA", Path(__file__).resolve().parents[3] / "shared/data")
)


def get_sweep() -> Sweep:
    return Sweep(
        name="small_cpu",
        config="configs/e2e_prefix.py:local",
        grid=product(
            sweep("prefix.length", [1, 5, 10, 20]),
            sweep("prefix.reparam", ["none", "mlp"]),
        ),
        seeds=(0,),
        base_overrides={
            "data.path": str(DATA_ROOT / "e2e" / "devset.csv"),
            "data.eval_sources": 100,
        },
    )
