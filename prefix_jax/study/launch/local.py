"""The `local` backend: every trial on this machine, one after another (`run.run_trials`).

Each launch appends a `launch` event to `<workdir>/launch.jsonl` with its command, the git
commit (and whether tracked files differed from it) and the machine, and each completed
command a `step` event with its seconds: the report's provenance section reads them.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys

from prefix_jax.study import provenance
from prefix_jax.study.launch.backend import Launch
from prefix_jax.study.launch.plan import REPO_ROOT, trial_state, write_sweep_json
from prefix_jax.study.launch.run import failure_of, log_event, run_trials


@dataclasses.dataclass(frozen=True)
class LocalBackend:
    """Run trials here as subprocesses; `timeout` is seconds per command."""

    python: tuple[str, ...] = (sys.executable,)
    timeout: float | None = None
    skip_failed: bool = False  # leave trials with a FAILED record alone
    runs_here: bool = True

    def launch(self, launch: Launch) -> int:
        if launch.dry_run:
            print_plans(launch)
            return 0
        return run_here(launch, timeout=self.timeout, skip_failed=self.skip_failed)


def print_plans(launch: Launch) -> None:
    """The commands each trial would run, its state, and which are done already."""
    plans = launch.plans
    for i, plan in enumerate(plans, 1):
        print(f"# [{i}/{len(plans)}] {plan.trial.name}: {trial_state(plan)}")
        for step in plan.steps:
            done = step.marker is not None and (plan.dir / step.marker).exists()
            print(("# done: " if done else "") + shlex.join(step.argv))


def run_here(launch: Launch, *, timeout: float | None, skip_failed: bool) -> int:
    """Record the launch, run its trials' commands from this machine, print the outcome;
    1 if any trial failed, 130 when interrupted (a rerun resumes)."""
    root = launch.workdir
    write_sweep_json(root, launch.sweep, launch.plans, launch.global_overrides)
    status_log = root / "launch.jsonl"
    log_event(
        status_log,
        event="launch",
        command=launch.command,
        **provenance.git_commit(REPO_ROOT),
        machine=provenance.machine(),
    )
    try:
        outcome = run_trials(launch.plans, status_log, timeout=timeout, skip_failed=skip_failed)
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    print(
        f"\nsweep {launch.sweep.name}: {len(launch.plans)} trials, "
        f"{len(outcome['finished'])} run now, {len(outcome['skipped'])} skipped, "
        f"{len(outcome['failed'])} failed"
    )
    for name in outcome["failed"]:
        print(f"  FAILED {name}: {failure_of(root / name)}  ({root / name / 'FAILED'})")
    return 1 if outcome["failed"] else 0
