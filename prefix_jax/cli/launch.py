r"""`prefix-jax launch SWEEP --workdir DIR`: run every trial of a sweep, train then evaluate.

    prefix-jax launch prefix_length --workdir runs/pl [--seeds 0,1,2] [--dry-run]
    prefix-jax launch experiments/sweeps/prefix_length.py --workdir runs/pl
    prefix-jax launch small_cpu --workdir runs/cpu --set data.path=devset.csv
    prefix-jax launch prefix_length --workdir runs/pl --backend=print -o trials.sh
    prefix-jax launch prefix_length --workdir runs/pl --backend=tpu-pod \
        --tpu my-v4-32 --zone us-central2-b [--execute]

SWEEP is a grid file's path or a name in `experiments/sweeps/` (under the current directory,
or `--sweeps-dir`). Trial `T` lives in `<workdir>/T/`. The local backend runs trials one after
another; a finished trial is skipped, an interrupted one resumes, a failing one is recorded
in `T/FAILED` and `<workdir>/launch.jsonl` and the next runs; the exit status is 1 if any
trial failed. `--backend=print` writes one shell line per trial for any scheduler;
`--backend=tpu-pod` prints (or with `--execute` runs) gcloud ssh commands.
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
    ShellBackend,
    TpuPodBackend,
    plan_launch,
)
from prefix_jax.study.sweep import SWEEPS_DIR, Point, available, load_sweep

BACKENDS = ("local", "print", "tpu-pod")


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
    parser.add_argument("-o", "--output", type=Path, help="print backend: write lines here")
    parser.add_argument(
        "--repo-dir", help="directory to cd into first (tpu-pod default: prefix_jax in $HOME)"
    )
    parser.add_argument("--tpu", help="tpu-pod: TPU VM name")
    parser.add_argument("--zone", help="tpu-pod: zone")
    parser.add_argument("--project", help="tpu-pod: GCP project (default: gcloud's)")
    parser.add_argument(
        "--execute", action="store_true", help="tpu-pod: run the gcloud commands (else print)"
    )
    return parser


def make_backend(args: argparse.Namespace) -> Backend:
    """The backend the flags name, with its own options."""
    python = {"python": tuple(shlex.split(args.python))} if args.python else {}
    repo_dir = {"repo_dir": args.repo_dir} if args.repo_dir else {}
    if args.backend == "print":
        return ShellBackend(output=args.output, repo_dir=args.repo_dir, **python)
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
    backend = make_backend(args)
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
    if sweep.note:
        print(f"note ({sweep.name}): {sweep.note}", file=sys.stderr)
    return backend.launch(launch)
