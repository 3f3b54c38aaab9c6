"""The `tpu-pod` backend: `gcloud compute tpus tpu-vm ssh` commands per trial, training on
every worker of the slice (`--distributed`: orbax's multi-host checkpointing needs
`jax.distributed`, which finds the slice's hosts itself) and evaluating on worker 0;
printed, or run from this machine (the local backend's bookkeeping) with `execute`. The
workdir is a path on the TPU VMs.

Kept for what the `skypilot` backend cannot do: run on a TPU VM slice you already hold
(one created by hand, or handed over by an admin), which SkyPilot will not adopt. It has no
retry and no preemption recovery; a sweep that outgrows one slice belongs on `skypilot`.
"""

from __future__ import annotations

import dataclasses
import shlex

from prefix_jax.study.launch.backend import Launch
from prefix_jax.study.launch.local import run_here
from prefix_jax.study.launch.plan import Step, TrialPlan
from prefix_jax.study.launch.shell import guarded, prologue, quote_path


@dataclasses.dataclass(frozen=True)
class TpuPodBackend:
    """Trials on the TPU VM slice `tpu` in `zone`, from the checkout `repo_dir` in $HOME."""

    tpu: str
    zone: str
    project: str | None = None  # default: gcloud's
    repo_dir: str = "prefix_jax"
    execute: bool = False  # run the gcloud commands (else print them)
    python: tuple[str, ...] = ("python3",)
    timeout: float | None = None
    skip_failed: bool = False
    runs_here: bool = False

    def launch(self, launch: Launch) -> int:
        plans = [
            dataclasses.replace(plan, steps=self.steps(plan), done=None) for plan in launch.plans
        ]
        if not self.execute or launch.dry_run:
            for plan in plans:
                for step in plan.steps:
                    print(shlex.join(step.argv))
            return 0
        launch = dataclasses.replace(launch, plans=plans)
        return run_here(launch, timeout=self.timeout, skip_failed=self.skip_failed)

    def steps(self, plan: TrialPlan) -> list[Step]:
        """gcloud commands: train on every worker of the pod slice, evaluate on worker 0."""
        base = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", self.tpu, "--zone", self.zone]
        if self.project:
            base += ["--project", self.project]
        train, evaluate = plan.steps
        train = dataclasses.replace(train, argv=[*train.argv, "--distributed"])
        train_cmd = " && ".join([*prologue(plan, self.repo_dir), guarded(plan, train)])
        eval_cmd = " && ".join([f"cd {quote_path(self.repo_dir)}", guarded(plan, evaluate)])
        return [
            Step("train", [*base, "--worker=all", "--command", train_cmd], None),
            Step("evaluate", [*base, "--worker=0", "--command", eval_cmd], None),
        ]
