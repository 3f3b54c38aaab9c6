"""The `print` backend: one self-contained, idempotent shell line per trial, for any
scheduler, e.g. a Slurm array: `sed -n "${SLURM_ARRAY_TASK_ID}p" trials.sh | bash`.

A line skips the commands whose output exists (the local backend's skip logic) and writes
`FAILED` when one fails.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from pathlib import Path

from prefix_jax.study.launch.backend import Launch
from prefix_jax.study.launch.plan import Step, TrialPlan


@dataclasses.dataclass(frozen=True)
class ShellBackend:
    """Write the trials' shell lines to `output`, or to stdout; `repo_dir` is cd'ed into
    first (where the lines run from)."""

    python: tuple[str, ...] = ("python",)
    output: Path | None = None
    repo_dir: str | None = None
    runs_here: bool = False

    def launch(self, launch: Launch) -> int:
        lines = [shell_line(plan, self.repo_dir) for plan in launch.plans]
        text = "\n".join(lines) + "\n"
        if self.output:
            Path(self.output).write_text(text)
            print(f"{len(lines)} trial lines -> {self.output}", file=sys.stderr)
        else:
            sys.stdout.write(text)
        return 0


def quote_path(path: str) -> str:
    """Shell-quote a path but let a leading `~/` expand on the remote side."""
    if path.startswith("~/"):
        return "~/" + shlex.quote(path[2:])
    return shlex.quote(path)


def guarded(plan: TrialPlan, step: Step) -> str:
    """`{ test -f MARKER || COMMAND; }`: the command runs only if its output is missing."""
    command = shlex.join(step.argv)
    if step.marker is None:
        return command
    return f"{{ test -f {shlex.quote(str(plan.dir / step.marker))} || {command}; }}"


def prologue(plan: TrialPlan, repo_dir: str | None) -> list[str]:
    """cd into the checkout, make the trial directory, write its trial.json."""
    w = shlex.quote(str(plan.dir))
    record = shlex.quote(json.dumps(plan.record, sort_keys=True))
    cd = [f"cd {quote_path(repo_dir)}"] if repo_dir else []
    return [*cd, f"mkdir -p {w}", f"printf '%s\\n' {record} > {w}/trial.json"]


def shell_line(plan: TrialPlan, repo_dir: str | None = None) -> str:
    """One self-contained, idempotent shell line for the trial."""
    w = shlex.quote(str(plan.dir))
    parts = [*prologue(plan, repo_dir), f"rm -f {w}/FAILED"]
    parts += [guarded(plan, step) for step in plan.steps]
    failed = f'{{ echo "error: exit status $? (see the job log)" > {w}/FAILED; false; }}'
    return " && ".join(parts) + " || " + failed
