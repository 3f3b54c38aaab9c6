"""Run planned trials on this machine, one after another, as subprocesses.

A trial whose `eval_<split>/results.json` exists is finished and skipped; any other existing
trial directory is an interrupted trial and is simply rerun (training resumes from its
checkpoint, a finished training is not repeated). A failing command is recorded in
`T/FAILED` (step, exit status, error line, log tail) and in the status log, and the next
trial runs. Command output goes to `T/logs/<step>.log`, appended across reruns.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from prefix_jax.study.launch.plan import Step, TrialPlan, trial_state

TAIL_LINES = 40
_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b|FATAL|Error)")


def now() -> str:
    """Local time to the second, as the logs write it."""
    return datetime.datetime.now().isoformat(timespec="seconds")


def log_event(path: Path, **event) -> None:
    """Append one JSON event (with its time) to a status log such as `launch.jsonl`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps({"time": now(), **event}) + "\n")


def log_tail(path: Path, n: int = TAIL_LINES) -> list[str]:
    """Last `n` non-empty lines of the latest attempt in a log (logs are appended across
    reruns; progress bars' carriage returns split lines)."""
    if not path.exists():
        return []
    text = path.read_text(errors="replace")
    start = text.rfind("\n### ")
    text = text[start + 1 :] if start >= 0 else text
    lines = [line.rstrip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    return [line for line in lines if not line.startswith("### ")][-n:]


def error_line(tail: Sequence[str]) -> str:
    """The most telling line of a failed command's output: its last exception line."""
    for line in reversed(tail):
        if _ERROR_LINE.match(line.strip()):
            return line.strip()
    return tail[-1].strip() if tail else ""


def run_step(step: Step, tdir: Path, timeout: float | None) -> str | None:
    """Run one command with output appended to `logs/<step>.log`; None or why it failed."""
    log_path = tdir / "logs" / f"{step.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "a") as log:
        log.write(f"\n### {now()} $ {shlex.join(step.argv)}\n")
        log.flush()
        try:
            proc = subprocess.run(
                step.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                env=env,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"timed out after {timeout:g} s"
        except OSError as e:
            return f"could not start {step.argv[0]!r}: {e}"
    if proc.returncode != 0:
        return f"exit status {proc.returncode}"
    if step.marker is not None and not (tdir / step.marker).exists():
        return f"exited 0 without writing {step.marker}"
    return None


def record_failure(plan: TrialPlan, step: Step, reason: str) -> str:
    """Write `<trial>/FAILED`; returns the error line."""
    tail = log_tail(plan.dir / "logs" / f"{step.name}.log")
    error = (error_line(tail) or reason) if reason.startswith("exit status") else reason
    text = [
        f"step: {step.name}",
        f"reason: {reason}",
        f"error: {error}",
        f"time: {now()}",
        f"command: {shlex.join(step.argv)}",
        f"--- last lines of logs/{step.name}.log ---",
        *tail,
    ]
    (plan.dir / "FAILED").write_text("\n".join(text) + "\n")
    return error


def failure_of(tdir: Path) -> str:
    """The error line a trial's `FAILED` record names ("" if none)."""
    failed = tdir / "FAILED"
    if not failed.exists():
        return ""
    lines = failed.read_text().splitlines()
    return next((ln[7:] for ln in lines if ln.startswith("error: ")), "")


def run_trials(
    plans: Sequence[TrialPlan],
    status_log: Path,
    *,
    timeout: float | None = None,
    skip_failed: bool = False,
    echo: Callable[[str], None] | None = None,
) -> dict[str, list[str]]:
    """Run trials one after another; a failure is recorded and the next trial runs.

    Returns trial names by outcome: finished, skipped, failed.
    """
    echo = echo or functools.partial(print, flush=True)  # progress shows up when piped
    outcome: dict[str, list[str]] = {"finished": [], "skipped": [], "failed": []}
    for i, plan in enumerate(plans, 1):
        name, tag = plan.trial.name, f"[{i}/{len(plans)}] {plan.trial.name}"
        state = trial_state(plan)
        if state == "finished" or (state == "failed" and skip_failed):
            echo(f"{tag}: {state}, skipped")
            log_event(status_log, trial=name, event="skipped", state=state)
            outcome["skipped"].append(name)
            continue
        plan.dir.mkdir(parents=True, exist_ok=True)
        (plan.dir / "trial.json").write_text(json.dumps(plan.record, indent=2) + "\n")
        (plan.dir / "FAILED").unlink(missing_ok=True)
        resumed = state != "new"
        echo(f"{tag}: {'resuming (' + state + ')' if resumed else 'starting'}")
        log_event(status_log, trial=name, event="started", resumed=resumed)
        failed = None
        for step in plan.steps:
            if step.marker is not None and (plan.dir / step.marker).exists():
                echo(f"    {step.name}: already done")
                continue
            start = time.perf_counter()
            try:
                reason = run_step(step, plan.dir, timeout)
            except KeyboardInterrupt:
                log_event(status_log, trial=name, event="interrupted", step=step.name)
                raise
            seconds = round(time.perf_counter() - start, 1)
            if reason is not None:
                error = record_failure(plan, step, reason)
                echo(f"    {step.name}: FAILED after {seconds} s ({reason}): {error}")
                log_event(
                    status_log,
                    trial=name,
                    event="failed",
                    step=step.name,
                    reason=reason,
                    error=error,
                    seconds=seconds,
                )
                failed = error
                break
            echo(f"    {step.name}: ok ({seconds} s)")
            log_event(status_log, trial=name, event="step", step=step.name, seconds=seconds)
        if failed is None:
            log_event(status_log, trial=name, event="finished")
            outcome["finished"].append(name)
        else:
            outcome["failed"].append(name)
    return outcome
