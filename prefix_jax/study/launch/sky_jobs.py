"""A sweep's SkyPilot managed jobs: which job each trial was submitted as (`launch.jsonl`),
what SkyPilot says of it, and its results brought home from the bucket.

SkyPilot's `sky.jobs.queue_v2` answers with `ManagedJobRecord`s whose `status` is a
`ManagedJobStatus`; `trial_state` folds its fourteen values into the five a sweep needs.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from prefix_jax.study.launch.plan import TrialPlan, trial_state

# ManagedJobStatus values (sky/jobs/state.py) -> the trial's state.
STATES = {
    "PENDING": "pending",
    "SUBMITTED": "pending",
    "STARTING": "pending",
    "RUNNING": "running",
    "WINDING_DOWN": "running",
    "RECOVERING": "recovering",
    "SUCCEEDED": "succeeded",
    "CANCELLING": "cancelled",
    "CANCELLED": "cancelled",
    "FAILED": "failed",
    "FAILED_SETUP": "failed",
    "FAILED_PRECHECKS": "failed",
    "FAILED_NO_RESOURCE": "failed",
    "FAILED_CONTROLLER": "failed",
}
# A trial in one of these states is not submitted again.
ACTIVE = ("pending", "running", "recovering", "succeeded")

Query = Callable[[list[int]], Sequence[Mapping]]


def submitted_jobs(root: Path) -> dict[str, list[int]]:
    """Each trial's managed-job ids, oldest first, from `<root>/launch.jsonl`."""
    path = root / "launch.jsonl"
    jobs: dict[str, list[int]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a killed launcher
        if event.get("event") == "submitted":
            jobs.setdefault(event["trial"], []).append(int(event["job_id"]))
    return jobs


def status_value(record: Mapping) -> str:
    """The record's `ManagedJobStatus` as its string value."""
    status = record["status"]
    return getattr(status, "value", status)


def job_states(jobs: Mapping[str, list[int]], query: Query) -> dict[str, tuple[str, int]]:
    """Each submitted trial's state and job id, from its latest job's record."""
    latest = {trial: ids[-1] for trial, ids in jobs.items() if ids}
    if not latest:
        return {}
    records = {r["job_id"]: r for r in query(sorted(set(latest.values())))}
    out = {}
    for trial, job_id in latest.items():
        record = records.get(job_id)
        if record is None:
            out[trial] = ("unknown (not in SkyPilot's job queue)", job_id)
        else:
            value = status_value(record)
            out[trial] = (STATES.get(value, f"unknown ({value})"), job_id)
    return out


def still_going(states: Mapping[str, tuple[str, int]]) -> dict[str, str]:
    """Trials not to submit again: their job is queued, running, recovering or succeeded."""
    return {trial: state for trial, (state, _) in states.items() if state in ACTIVE}


def query_jobs(job_ids: list[int]) -> Sequence[Mapping]:
    """SkyPilot's records of these managed jobs (`sky.jobs.queue_v2`)."""
    import sky

    records, *_ = sky.get(sky.jobs.queue_v2(refresh=False, job_ids=job_ids))
    return records


def status_lines(
    plans: Sequence[TrialPlan], jobs: Mapping[str, list[int]], query: Query
) -> list[str]:
    """One line per trial: its state (results here, or its job's), job id, name."""
    states = job_states(jobs, query)
    lines = []
    for plan in plans:
        name = plan.trial.name
        if trial_state(plan) == "finished":
            state, job = "finished (results here)", states.get(name, ("", None))[1]
        else:
            state, job = states.get(name, ("not submitted", None))
        lines.append(f"{state:<24} {'job ' + str(job) if job is not None else '-':<10} {name}")
    return lines


def sync_command(bucket: str, workdir: Path) -> list[str]:
    """The command that copies the sweep's results (not its checkpoints) from the bucket
    into `workdir`; the sweep lives under `<bucket>/<workdir's name>`."""
    source = f"{bucket.rstrip('/')}/{workdir.name}"
    if bucket.startswith("gs://"):
        rsync = ["gcloud", "storage", "rsync", "--recursive"]
        return [*rsync, "--exclude", r"(.*/)?checkpoints/.*", source, str(workdir)]
    return ["aws", "s3", "sync", source, str(workdir), "--exclude", "*/checkpoints/*"]


def sync_results(bucket: str, workdir: Path) -> int:
    """Bring the results home; the command's exit status."""
    workdir.mkdir(parents=True, exist_ok=True)
    command = sync_command(bucket, workdir)
    try:
        return subprocess.run(command, check=False).returncode
    except OSError as e:
        raise OSError(f"could not run {command[0]!r} to sync {bucket}: {e}") from e
