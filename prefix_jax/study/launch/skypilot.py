"""The `skypilot` backend: one SkyPilot managed job per unfinished trial, each on its own
TPU slice or GPU cluster, all in parallel; SkyPilot relaunches a preempted job on a fresh
slice and the trial resumes from its checkpoints on the bucket.

Every task is written to `<output>/<job name>.yaml` and checked by SkyPilot's own parser
(`sky.Task.from_yaml_config`); with `execute` each is submitted (`sky.jobs.launch`) and
`launch.jsonl` records the job ids, the resources and the commit. Trials whose results are
here already (`sync_results` brings them from the bucket) are not submitted again, nor,
when submitting, trials whose job is still queued, running, recovering or succeeded.
SkyPilot is imported only here, and only when a task is checked or a job submitted.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from prefix_jax.study import provenance
from prefix_jax.study.launch.backend import Launch
from prefix_jax.study.launch.plan import REPO_ROOT, trial_state, write_sweep_json
from prefix_jax.study.launch.run import log_event
from prefix_jax.study.launch.sky_jobs import job_states, query_jobs, still_going, submitted_jobs
from prefix_jax.study.launch.sky_task import MOUNT, Resources, remote_dir, task


@dataclasses.dataclass(frozen=True)
class SkyPilotBackend:
    """Write (and with `execute`, submit) one managed-job task per unfinished trial;
    `output` is the folder for the task files (default `<workdir>/skypilot`)."""

    resources: Resources
    output: Path | None = None
    execute: bool = False
    python: tuple[str, ...] = ("python",)
    runs_here: bool = False

    def launch(self, launch: Launch) -> int:
        submit = self.execute and not launch.dry_run
        self.resources.check(submit=submit)
        plans = [p for p in launch.plans if trial_state(p) != "finished"]
        skipped = {p.trial.name: "finished" for p in launch.plans if p not in plans}
        if submit:
            skipped |= still_going(job_states(submitted_jobs(launch.workdir), query_jobs))
            plans = [p for p in plans if p.trial.name not in skipped]
        sweep_dir = remote_dir(self.resources.bucket, launch.workdir)
        tasks = [
            task(p, self.resources, sweep=launch.sweep.name, sweep_dir=sweep_dir, repo=REPO_ROOT)
            for p in plans
        ]
        folder = Path(self.output or launch.workdir / "skypilot")
        paths = write_tasks(tasks, folder)
        for name, state in skipped.items():
            print(f"{name}: {state}, not submitted", file=sys.stderr)
        for key, value in local_paths(launch).items():
            print(
                f"warning: {key}={value} is a path on this machine, which the cluster does not "
                f"have; put it on the bucket (mounted at {MOUNT}) and pass --set {key}=...",
                file=sys.stderr,
            )
        print(f"{len(paths)} SkyPilot tasks -> {folder}", file=sys.stderr)
        if not submit or not tasks:
            return 0
        write_sweep_json(launch.workdir, launch.sweep, launch.plans, launch.global_overrides)
        status_log = launch.workdir / "launch.jsonl"
        log_launch(status_log, launch.command, self.resources)
        for plan, config, path in zip(plans, tasks, paths, strict=True):
            job_id = submit_task(config)
            print(f"{plan.trial.name}: managed job {job_id} ({config['name']})")
            log_submitted(status_log, plan.trial.name, job_id, config["name"], path)
        return 0


def log_launch(status_log: Path, command: str, resources: Resources) -> None:
    """`launch.jsonl`: this launch's command, commit, resources and submitting machine."""
    log_event(
        status_log,
        event="launch",
        backend="skypilot",
        command=command,
        **provenance.git_commit(REPO_ROOT),
        resources=resources.record(),
        submitted_from=provenance.machine(),
    )


def log_submitted(status_log: Path, trial: str, job_id: int, job_name: str, task: Path) -> None:
    """`launch.jsonl`: the managed job a trial was submitted as."""
    log_event(
        status_log,
        trial=trial,
        event="submitted",
        job_id=job_id,
        job_name=job_name,
        task=str(task),
    )


def local_paths(launch: Launch) -> dict[str, str]:
    """Overrides naming an existing file or folder of this machine outside the checkout."""
    overrides = {**launch.sweep.base_overrides, **launch.global_overrides}
    for plan in launch.plans:
        overrides.update(plan.trial.overrides)
    return {
        k: v
        for k, v in overrides.items()
        if isinstance(v, str)
        and v.startswith("/")
        and not v.startswith(MOUNT)
        and Path(v).exists()
        and not Path(v).resolve().is_relative_to(REPO_ROOT)
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the setup and run scripts) as readable `|` blocks."""


_Dumper.add_representer(
    str,
    lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None),
)


def write_tasks(tasks: Sequence[dict], folder: Path) -> list[Path]:
    """Each task to `<folder>/<name>.yaml`, after SkyPilot's parser accepts every one."""
    for config in tasks:
        validate(config)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for config in tasks:
        path = folder / f"{config['name']}.yaml"
        path.write_text(yaml.dump(config, Dumper=_Dumper, sort_keys=False))
        paths.append(path)
    return paths


def _sky():
    try:
        import sky
    except ImportError as e:
        raise ImportError("the skypilot backend needs SkyPilot: pip install -e '.[cloud]'") from e
    return sky


def validate(config: dict) -> None:
    """SkyPilot's own check of a task (schema, resources, mounts); raises ValueError."""
    sky = _sky()
    try:
        sky.Task.from_yaml_config(copy.deepcopy(config))  # it consumes its argument
    except Exception as e:  # SkyPilot raises its own exception types for a bad task
        raise ValueError(f"SkyPilot rejects task {config.get('name')!r}: {e}") from e


def submit_task(config: dict) -> int:
    """Submit one task as a managed job; its job id."""
    sky = _sky()
    task = sky.Task.from_yaml_config(copy.deepcopy(config))
    request = sky.jobs.launch(task, name=config["name"])
    job_ids, _ = sky.stream_and_get(request)
    return int(job_ids[0])
