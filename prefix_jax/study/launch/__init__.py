"""Launch a sweep: plan every trial (`plan`), then hand the plans to a backend (`backend`):
`local` runs them here (`run`), `print` writes shell lines, `skypilot` managed jobs
(`sky_task`, `sky_jobs`), `tpu-pod` gcloud commands.

Trial `T` lives in `<workdir>/T/` (the training workdir); it runs
`python -m prefix_jax.cli train ...` then `python -m prefix_jax.cli evaluate ...`.
"""

from prefix_jax.study.launch.backend import Backend, Launch, plan_launch
from prefix_jax.study.launch.local import LocalBackend
from prefix_jax.study.launch.plan import (
    REPO_ROOT,
    Step,
    TrialPlan,
    plan_trials,
    resolve_config,
    trial_state,
    write_sweep_json,
)
from prefix_jax.study.launch.shell import ShellBackend, shell_line
from prefix_jax.study.launch.sky_jobs import status_lines, submitted_jobs, sync_results
from prefix_jax.study.launch.sky_task import Resources
from prefix_jax.study.launch.skypilot import SkyPilotBackend
from prefix_jax.study.launch.tpu_pod import TpuPodBackend

__all__ = [
    "REPO_ROOT",
    "Backend",
    "Launch",
    "LocalBackend",
    "Resources",
    "ShellBackend",
    "SkyPilotBackend",
    "Step",
    "TpuPodBackend",
    "TrialPlan",
    "plan_launch",
    "plan_trials",
    "resolve_config",
    "shell_line",
    "status_lines",
    "submitted_jobs",
    "sync_results",
    "trial_state",
    "write_sweep_json",
]
