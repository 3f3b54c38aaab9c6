"""The seam between planning trials and running them: a `Backend` takes a `Launch` (a sweep's
planned trials and where they report) and runs them, or writes what runs them elsewhere.

Backends: `local` (this machine, one trial after another), `print` (one shell line per
trial for any scheduler), `skypilot` (one SkyPilot managed job per trial: each `TrialPlan`
becomes a task with resources, a bucket mount and the trial's commands as its run script)
and `tpu-pod` (gcloud ssh to a TPU VM slice you already hold).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from prefix_jax.study.launch.plan import TrialPlan, local_config, plan_trials
from prefix_jax.study.sweep import Point, Sweep


@dataclasses.dataclass(frozen=True)
class Launch:
    """One launch request: the sweep, its planned trials, and how it was asked for."""

    sweep: Sweep
    plans: list[TrialPlan]
    workdir: Path
    global_overrides: Point
    command: str = ""  # the command line, recorded in launch.jsonl for the report
    dry_run: bool = False


class Backend(Protocol):
    """Where trials run."""

    @property
    def python(self) -> Sequence[str]:
        """The interpreter command on the machines that run the trials."""
        ...

    @property
    def runs_here(self) -> bool:
        """Whether trials run from this checkout (then repo-relative config paths are made
        to work from any current directory)."""
        ...

    def launch(self, launch: Launch) -> int:
        """Run (or emit) every planned trial; the exit status (nonzero if any failed)."""
        ...


def plan_launch(
    sweep: Sweep,
    workdir: str | Path,
    backend: Backend,
    *,
    global_overrides: Point | None = None,
    seeds: Sequence[int] | None = None,
    only: str | None = None,
    split: str = "validation",
    dry_run: bool = False,
    command: str = "",
) -> Launch:
    """Plan the sweep's trials for `backend` (see `plan_trials`); `backend.launch` runs
    them. Raises ValueError when no trial matches `only`."""
    global_overrides = dict(global_overrides or {})
    plans = plan_trials(
        sweep,
        workdir,
        python=backend.python,
        global_overrides=global_overrides,
        seeds=seeds,
        only=only,
        split=split,
        config=local_config(sweep.config) if backend.runs_here else None,
    )
    if not plans:
        raise ValueError(f"no trial of sweep {sweep.name!r} matches --only {only!r}")
    return Launch(sweep, plans, Path(workdir), global_overrides, command, dry_run)
