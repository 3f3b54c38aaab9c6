r"""`prefix-jax launch SWEEP --workdir DIR`: run every trial of a sweep, train then evaluate.

    prefix-jax launch prefix_length --workdir runs/pl [--seeds 0,1,2] [--dry-run]
    prefix-jax launch experiments/sweeps/prefix_length.py --workdir runs/pl
    prefix-jax launch small_cpu --workdir runs/cpu --set data.path=devset.csv
    prefix-jax launch prefix_length --workdir runs/pl --backend=print -o trials.sh
    prefix-jax launch prefix_length --workdir runs/pl --backend=skypilot \
        --accelerators tpu-v5litepod-16 --spot --bucket gs://my-bucket [--execute]
    prefix-jax launch prefix_length --workdir runs/pl --backend=skypilot \
        --accelerators H100:8 --num-nodes 2 --bucket s3://my-bucket [--execute]
    prefix-jax launch prefix_length --workdir runs/pl --backend=skypilot [--status] \
        [--sync --bucket s3://my-bucket]
    prefix-jax launch prefix_length --workdir runs/pl --backend=tpu-pod \
        --tpu my-v4-32 --zone us-central2-b [--execute]

SWEEP is a grid file's path or a name in `experiments/sweeps/` (under the current directory,
or `--sweeps-dir`). Trial `T` lives in `<workdir>/T/`. The local backend runs trials one after
another; a finished trial is skipped, an interrupted one resumes, a failing one is recorded
in `T/FAILED` and `<workdir>/launch.jsonl` and the next runs; the exit status is 1 if any
trial failed. `--backend=print` writes one shell line per trial for any scheduler;
`--backend=skypilot` writes (with `--execute` submits) one SkyPilot managed job per
unfinished trial, `--status` shows their jobs' states and `--sync` copies their results
from the bucket into the workdir; `--backend=tpu-pod` prints (or with `--execute` runs)
gcloud ssh commands for a TPU VM slice you already hold.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from prefix_jax.study.launch import (
    Backend,
    LocalBackend,
    Resources,
    ShellBackend,
    SkyPilotBackend,
    TpuPodBackend,
    plan_launch,
    status_lines,
    submitted_jobs,
    sync_results,
)
from prefix_jax.study.launch.sky_jobs import query_jobs
from prefix_jax.study.sweep import SWEEPS_DIR, Point, available, load_sweep

BACKENDS = ("local", "print", "skypilot", "tpu-pod")


def parse_sets(items: Sequence[str]) -> Point:
    """`--set key=value` pairs; values are passed through verbatim to `--config.key=value`."""
    out: Point = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix("config.")
        if not sep or not re.match(r"^[A-Za-z_][\w.]*$", key):
            raise ValueError(f"--set expects KEY=VALUE with a config key, got {item!r}")
        out[key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    shipped = available()
    parser = argparse.ArgumentParser(
        prog="prefix-jax launch",
        description=__doc__.split("\n\n")[0],
        epilog=f"sweeps in {SWEEPS_DIR}: {', '.join(shipped)}" if shipped else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sweep", help="grid file path, or a name in the sweeps folder")
    parser.add_argument("--workdir", required=True, help="root directory; one subdir per trial")
    parser.add_argument(
        "--sweeps-dir",
        type=Path,
        default=SWEEPS_DIR,
        help=f"where bare sweep names are found (default: {SWEEPS_DIR})",
    )
    parser.add_argument("--backend", default="local", choices=BACKENDS)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every trial (repeatable), e.g. --set data.path=x.csv",
    )
    parser.add_argument("--seeds", help="comma-separated seeds replacing the sweep's, e.g. 0,1")
    parser.add_argument("--only", metavar="REGEX", help="only trials whose name matches")
    parser.add_argument("--split", default="validation", help="split to evaluate")
    parser.add_argument(
        "--python",
        help="interpreter command (shell-split); default: this interpreter for local runs, "
        "'python' for print, 'python3' for tpu-pod",
    )
    parser.add_argument("--dry-run", action="store_true", help="print commands, run nothing")
    parser.add_argument("--timeout", type=float, help="seconds per command (local/--execute)")
    parser.add_argument(
        "--skip-failed", action="store_true", help="do not retry trials with a FAILED record"
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="print: write the lines to this file; skypilot: write the task files to this "
        "folder (default: <workdir>/skypilot)",
    )
    parser.add_argument(
        "--repo-dir", help="directory to cd into first (tpu-pod default: prefix_jax in $HOME)"
    )
    parser.add_argument("--tpu", help="tpu-pod: TPU VM name")
    parser.add_argument("--zone", help="tpu-pod: zone; skypilot: zone of --region")
    parser.add_argument("--project", help="tpu-pod: GCP project (default: gcloud's)")
    parser.add_argument(
        "--execute",
        action="store_true",
        help="skypilot: submit the tasks; tpu-pod: run the gcloud commands (else print)",
    )
    sky = parser.add_argument_group("skypilot")
    sky.add_argument("--accelerators", help="per node: tpu-v5litepod-16, H100:8, ...")
    sky.add_argument("--num-nodes", type=int, default=1, help="GPU nodes per trial (default 1)")
    sky.add_argument("--spot", action="store_true", help="spot capacity; preemptions recover")
    sky.add_argument("--bucket", help="gs://BUCKET[/PREFIX] or s3://...: the sweep's workdir")
    sky.add_argument("--cloud", help="e.g. gcp, aws (default: SkyPilot's choice)")
    sky.add_argument("--region", help="region of --cloud")
    sky.add_argument("--status", action="store_true", help="each trial's managed-job state")
    sky.add_argument("--sync", action="store_true", help="copy results from --bucket here")
    return parser


def make_backend(args: argparse.Namespace) -> Backend:
    """The backend the flags name, with its own options."""
    python = {"python": tuple(shlex.split(args.python))} if args.python else {}
    repo_dir = {"repo_dir": args.repo_dir} if args.repo_dir else {}
    if args.backend == "print":
        return ShellBackend(output=args.output, repo_dir=args.repo_dir, **python)
    if args.backend == "skypilot":
        resources = Resources(
            accelerators=args.accelerators,
            num_nodes=args.num_nodes,
            spot=args.spot,
            bucket=args.bucket,
            cloud=args.cloud,
            region=args.region,
            zone=args.zone,
        )
        resources.check(submit=args.execute and not args.dry_run)
        return SkyPilotBackend(resources, output=args.output, execute=args.execute, **python)
    if args.backend == "tpu-pod":
        return TpuPodBackend(
            tpu=args.tpu,
            zone=args.zone,
            project=args.project,
            **repo_dir,
            execute=args.execute,
            timeout=args.timeout,
            skip_failed=args.skip_failed,
            **python,
        )
    return LocalBackend(timeout=args.timeout, skip_failed=args.skip_failed, **python)


def main(argv: list[str] | None = None) -> int:
    """Launch the sweep; the exit status (1 if any trial failed)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.backend == "tpu-pod" and not (args.tpu and args.zone):
        parser.error("--backend=tpu-pod needs --tpu NAME and --zone ZONE")
    reading = args.status or args.sync  # jobs already submitted: no resources needed
    if args.backend == "skypilot" and not args.accelerators and not reading:
        parser.error("--backend=skypilot needs --accelerators, e.g. tpu-v5litepod-16 or H100:8")
    if (args.status or args.sync) and args.backend != "skypilot":
        parser.error("--status and --sync are for --backend=skypilot")
    if args.sync and not args.bucket:
        parser.error("--sync needs --bucket, where the trials wrote their results")
    try:
        backend = ShellBackend() if reading else make_backend(args)  # reading: plans only
    except ValueError as e:
        parser.error(str(e))
    try:
        sweep = load_sweep(args.sweep, args.sweeps_dir)
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()] if args.seeds else None
        launch = plan_launch(
            sweep,
            args.workdir,
            backend,
            global_overrides=parse_sets(args.set),
            seeds=seeds,
            only=args.only,
            split=args.split,
            dry_run=args.dry_run,
            command=shlex.join(["prefix-jax", "launch", *argv]),
        )
    except (OSError, ImportError, AttributeError, TypeError, ValueError) as e:
        parser.error(str(e))
    if args.status:
        jobs = submitted_jobs(launch.workdir)
        print("\n".join(status_lines(launch.plans, jobs, query_jobs)))
        return 0
    if args.sync:
        return sync_results(args.bucket, launch.workdir)
    if sweep.note:
        print(f"note ({sweep.name}): {sweep.note}", file=sys.stderr)
    try:
        return backend.launch(launch)
    except (ImportError, ValueError) as e:
        parser.error(str(e))
