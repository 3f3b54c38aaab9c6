"""A trial as a SkyPilot task: resources checked before anything is submitted, a setup that
installs this package, and a `run` script that every host of the slice or cluster executes.

The script trains on every host: on a GPU cluster `jax.distributed` is set up from
`SKYPILOT_NODE_RANK`, `SKYPILOT_NODE_IPS` (head first) and `SKYPILOT_NUM_NODES`; on a
multi-host TPU slice JAX discovers its peers (`--distributed`; SkyPilot gives each host of
the slice a rank). Rank 0 then evaluates. The trial's directory is `$SWEEP_DIR/<trial>`,
on the mounted bucket, so a job recovered on a fresh slice resumes from its checkpoints;
finished steps are skipped exactly as the `print` backend's lines skip them. Nothing here
imports SkyPilot (`skypilot.py` validates and submits).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shlex
from pathlib import Path

from prefix_jax.study.launch.plan import Step, TrialPlan

# TPU software version per chip generation, from Google's table "TPU software versions"
# (https://cloud.google.com/tpu/docs/runtimes, PyTorch and JAX): SkyPilot's default for
# every tpu-v5* type is v2-alpha-tpuv5, which is v5p's, not v5e's.
TPU_RUNTIME = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",  # v5e
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",  # Trillium
}
# GPUs by SkyPilot's names that the jax[cuda12] wheels run on (compute capability >= 7.0).
GPUS = (
    "V100", "V100-32GB", "T4", "A10", "A10G", "A100", "A100-80GB", "L4", "L40", "L40S",
    "H100", "H100-MEGA", "H200", "GH200", "B200",
)  # fmt: skip
MOUNT = "/prefix-jax-runs"  # where the bucket is mounted on every host
COORDINATOR_PORT = 8476  # jax.distributed's coordinator on the head node of a GPU cluster
BUCKET = re.compile(r"^(gs|s3)://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/[^\s]*)?$")
_TPU = re.compile(r"^tpu-(v[0-9]+[a-z]*(?:pod)?)-([0-9]+)$")


@dataclasses.dataclass(frozen=True)
class Resources:
    """What every trial of a launch runs on, checked by `check` before anything else."""

    accelerators: str  # tpu-v5litepod-16 or H100:8
    num_nodes: int = 1
    spot: bool = False
    bucket: str | None = None  # gs://B[/prefix] or s3://B[/prefix]
    cloud: str | None = None
    region: str | None = None
    zone: str | None = None

    @property
    def tpu(self) -> bool:
        return self.accelerators.startswith("tpu-")

    def check(self, *, submit: bool = False) -> None:
        """Raise ValueError naming the first bad option; `submit`: the tasks will run now."""
        if self.tpu:
            match = _TPU.match(self.accelerators)
            if not match or match.group(1) not in TPU_RUNTIME:
                known = ", ".join(f"tpu-{g}-N" for g in TPU_RUNTIME)
                raise ValueError(f"unknown TPU type {self.accelerators!r}; known: {known}")
            if self.num_nodes != 1:
                raise ValueError(
                    "--num-nodes is for GPU clusters: a TPU slice's hosts come with its type "
                    f"({self.accelerators} is one slice); got --num-nodes {self.num_nodes}"
                )
        else:
            name, _, count = self.accelerators.partition(":")
            if name not in GPUS or (count and not (count.isdigit() and int(count) > 0)):
                raise ValueError(
                    f"unknown accelerator {self.accelerators!r}: expected tpu-<type>-<size> "
                    f"(e.g. tpu-v5litepod-16) or GPU[:count] with GPU one of {', '.join(GPUS)}"
                )
            if self.num_nodes < 1:
                raise ValueError(f"--num-nodes must be at least 1, got {self.num_nodes}")
        if self.bucket is not None and not BUCKET.match(self.bucket):
            raise ValueError(
                f"--bucket must be a bucket URL, gs://BUCKET[/PREFIX] or s3://BUCKET[/PREFIX]; "
                f"got {self.bucket!r}"
            )
        if self.spot and self.bucket is None:
            raise ValueError(
                "--spot needs --bucket: a preempted job restarts on a fresh slice and finds "
                "its checkpoints only in a bucket"
            )
        if submit and self.bucket is None:
            raise ValueError(
                "--execute needs --bucket: a managed job's cluster is deleted when it ends, "
                "so its results must be written to a bucket"
            )
        if (self.region or self.zone) and not self.cloud:
            raise ValueError("--region and --zone need --cloud")
        if self.zone and not self.region:
            raise ValueError("--zone needs --region")

    def as_yaml(self) -> dict:
        """The task's `resources` section."""
        out: dict = {"accelerators": self.accelerators}
        if self.tpu:
            generation = _TPU.match(self.accelerators).group(1)
            out["accelerator_args"] = {"runtime_version": TPU_RUNTIME[generation]}
        if self.cloud:
            out["infra"] = "/".join(p for p in (self.cloud, self.region, self.zone) if p)
        elif self.tpu:
            out["infra"] = "gcp"
        if self.spot:
            out["use_spot"] = True
        # A preempted slice is always relaunched; a failing program (non-finite loss, bad
        # config: it fails the same way again) is not, and the job ends FAILED.
        out["job_recovery"] = {"max_restarts_on_errors": 0}
        return out

    def record(self) -> dict:
        """For launch.jsonl and the report."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, False)}


def job_name(sweep: str, trial: str) -> str:
    """A readable, unique managed-job name: lowercase letters, digits and dashes."""
    digest = hashlib.sha1(f"{sweep}/{trial}".encode()).hexdigest()[:8]
    slug = re.sub(r"[^a-z0-9]+", "-", f"{sweep}-{trial}".lower()).strip("-")[:48].strip("-")
    return f"{slug}-{digest}"


def remote_dir(bucket: str | None, workdir: Path) -> str:
    """The sweep's directory on every host: on the bucket's mount, else under the checkout
    on the host's disk (lost with the cluster)."""
    return f"{MOUNT}/{workdir.name}" if bucket else f"runs/{workdir.name}"


def remote_plan(plan: TrialPlan) -> TrialPlan:
    """The plan with its trial directory as `$SWEEP_DIR/<trial>`, for the run script."""
    here, there = str(plan.dir), f"$SWEEP_DIR/{plan.trial.name}"
    steps = [
        dataclasses.replace(s, argv=[a.replace(here, there) for a in s.argv]) for s in plan.steps
    ]
    return dataclasses.replace(plan, steps=steps, dir=Path(there))


def _word(arg: str) -> str:
    """Shell-quote `arg`, leaving `$SWEEP_DIR` to expand."""
    return '"$SWEEP_DIR"'.join(shlex.quote(p) if p else "" for p in arg.split("$SWEEP_DIR"))


def _command(step: Step) -> str:
    return " ".join(_word(a) for a in step.argv)


def setup_script(resources: Resources) -> str:
    """Install this checkout (SkyPilot's workdir) into a Python 3.11 venv on every host."""
    jax = "'.[tpu]'" if resources.tpu else ". 'jax[cuda12]==0.10.2'"
    return "\n".join(
        [
            "set -e",
            'VENV="${PREFIX_JAX_VENV:-$HOME/prefix-jax-venv}"',
            "command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh",
            'export PATH="$HOME/.local/bin:$PATH"',
            'uv venv --python 3.11 --allow-existing "$VENV"',
            f'uv pip install --python "$VENV/bin/python" -e {jax}',
        ]
    )


def run_script(plan: TrialPlan, resources: Resources) -> str:
    """The trial on every host: train everywhere, evaluate on rank 0; `FAILED` on failure.

    `plan` is planned with the interpreter `python` (the setup's venv is activated).
    """
    train, evaluate = remote_plan(plan).steps
    trial = '"$TRIAL"'
    record = shlex.quote(json.dumps(plan.record, sort_keys=True))
    if resources.tpu:
        # JAX finds the slice's hosts itself; rank 0 evaluates alone, on its CPU, since a
        # host of a multi-host slice cannot start the TPU runtime without the others.
        distributed = ['DIST="--distributed"']
        eval_env = 'EVAL_ENV="JAX_PLATFORMS=cpu"'
    else:
        distributed = [
            'HEAD="$(printf "%s\\n" "$SKYPILOT_NODE_IPS" | head -n1)"',
            'PORT="${PREFIX_JAX_COORDINATOR_PORT:-' + str(COORDINATOR_PORT) + '}"',
            'DIST="--coordinator=$HEAD:$PORT --num-processes=$SKYPILOT_NUM_NODES'
            ' --process-id=$SKYPILOT_NODE_RANK"',
        ]
        eval_env = 'EVAL_ENV=""'
    fail = (
        '{ code=$?; [ "$SKYPILOT_NODE_RANK" = 0 ] && printf "step: %s\\nerror: exit status %s '
        '(see the job log)\\n" "$1" "$code" > ' + trial + "/FAILED; exit $code; }"
    )
    return "\n".join(
        [
            "set -u",
            '. "${PREFIX_JAX_VENV:-$HOME/prefix-jax-venv}/bin/activate"',
            f'TRIAL="$SWEEP_DIR"/{shlex.quote(plan.trial.name)}',
            f"mkdir -p {trial}",
            'if [ "$SKYPILOT_NODE_RANK" = 0 ]; then',
            f"  printf '%s\\n' {record} > {trial}/trial.json",
            f"  rm -f {trial}/FAILED",
            "fi",
            f"failed() {fail}",
            'DIST=""',
            'if [ "$SKYPILOT_NUM_NODES" -gt 1 ]; then',
            *(f"  {line}" for line in distributed),
            "fi",
            f"if [ ! -f {trial}/{train.marker} ]; then",
            f"  {_command(train)} $DIST || failed train",
            "fi",
            '[ "$SKYPILOT_NODE_RANK" = 0 ] || exit 0',
            eval_env,
            f"if [ ! -f {trial}/{evaluate.marker} ]; then",
            f"  env $EVAL_ENV {_command(evaluate)} || failed evaluate",
            "fi",
        ]
    )


def task(plan: TrialPlan, resources: Resources, *, sweep: str, sweep_dir: str, repo: Path) -> dict:
    """The SkyPilot task (YAML as a dict) for one trial."""
    out: dict = {
        "name": job_name(sweep, plan.trial.name),
        "workdir": str(repo),
        "num_nodes": resources.num_nodes,
        "resources": resources.as_yaml(),
        "envs": {"SWEEP_DIR": sweep_dir},
    }
    if resources.bucket:
        out["file_mounts"] = {MOUNT: {"source": resources.bucket, "mode": "MOUNT_CACHED"}}
    out["setup"] = setup_script(resources)
    out["run"] = run_script(plan, resources)
    return out
