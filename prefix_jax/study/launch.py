r"""Run every trial of a sweep in its own workdir: train, then evaluate.

    python -m prefix_jax.study.launch experiments/sweeps/prefix_length.py --workdir runs/pl
    python -m prefix_jax.study.launch small_cpu --workdir runs/cpu --set data.path=devset.csv
    python -m prefix_jax.study.launch prefix_length --workdir runs/pl --dry-run
    python -m prefix_jax.study.launch prefix_length --workdir runs/pl --backend=print -o trials.sh
    python -m prefix_jax.study.launch prefix_length --workdir runs/pl --backend=tpu-pod \
        --tpu my-v4-32 --zone us-central2-b [--execute]

Trial `T` lives in `<workdir>/T/` (the training workdir). The local backend runs trials one
after another. A trial whose `eval_<split>/results.json` exists is finished and skipped; any
other existing trial directory is an interrupted trial and is simply rerun (training resumes
from its checkpoint, a finished training is not repeated). A failing command is recorded in
`T/FAILED` (step, exit status, error line, log tail) and in `<workdir>/launch.jsonl`, and the
launcher goes on with the next trial; it exits with status 1 if any trial failed. Command
output goes to `T/logs/<step>.log`.

Each local launch appends a `launch` event to `launch.jsonl` with its command, the git
commit (and whether tracked files differed from it) and the machine, and each completed
command a `step` event with its seconds: the report's provenance section reads them.

`--backend=print` writes one self-contained shell line per trial (same skip logic, writes
`FAILED` on error) for any scheduler, e.g. a Slurm array:
`sed -n "${SLURM_ARRAY_TASK_ID}p" trials.sh | bash`. `--backend=tpu-pod` prints (or with
`--execute` runs) `gcloud compute tpus tpu-vm ssh` commands: training on all workers,
evaluation on worker 0; the workdir is then a path on the TPU VMs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from prefix_jax.study import provenance
from prefix_jax.study.sweep import Point, Sweep, Trial, available, format_value, load_sweep

REPO_ROOT = Path(__file__).resolve().parents[1]
CLI_MODULE = "prefix_jax.cli"  # `python -m prefix_jax.cli <command>`: the current interpreter
TAIL_LINES = 40
_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b|FATAL|Error)")


@dataclasses.dataclass(frozen=True)
class Step:
    """One command of a trial; it is skipped when `marker` (relative to the trial) exists."""

    name: str
    argv: list[str]
    marker: str | None


@dataclasses.dataclass(frozen=True)
class TrialPlan:
    """A trial ready to launch: where it runs, what it runs, what it records in trial.json."""

    trial: Trial
    dir: Path
    steps: list[Step]
    record: dict
    done: str | None  # relative path whose existence means "finished"; None: unknown here


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


def train_argv(python: Sequence[str], config: str, workdir: Path, overrides: Point) -> list[str]:
    """`python -m prefix_jax.cli train --config=... --workdir=... --config.k=v ...`."""
    flags = [f"--config.{k}={format_value(v)}" for k, v in overrides.items()]
    command = [*python, "-m", CLI_MODULE, "train"]
    return [*command, f"--config={config}", f"--workdir={workdir}", *flags]


def eval_argv(python: Sequence[str], workdir: Path, split: str) -> list[str]:
    """`python -m prefix_jax.cli evaluate --workdir ... --split ...`."""
    return [*python, "-m", CLI_MODULE, "evaluate", "--workdir", str(workdir), "--split", split]


def plan_trials(
    sweep: Sweep,
    workdir: str | Path,
    *,
    python: Sequence[str],
    global_overrides: Point | None = None,
    seeds: Sequence[int] | None = None,
    only: str | None = None,
    split: str = "validation",
    config: str | None = None,
) -> list[TrialPlan]:
    """Every trial's directory and train/evaluate commands. Overrides apply in the order
    config file < sweep base overrides < `--set` < the trial's own grid point."""
    global_overrides = dict(global_overrides or {})
    trials = sweep.trials(seeds)
    grid_keys = {k for t in trials for k in t.overrides}
    clash = grid_keys & global_overrides.keys()
    if clash:
        raise ValueError(f"--set {sorted(clash)} would overwrite the sweep's own axis")
    if only:
        trials = [t for t in trials if re.search(only, t.name)]
    config = config or sweep.config
    plans = []
    for trial in trials:
        tdir = Path(workdir) / trial.name
        overrides = {**sweep.base_overrides, **global_overrides, **trial.overrides}
        trial_config = resolve_config(config, overrides)
        record = {
            "sweep": sweep.name,
            "trial": trial.name,
            "config": resolve_config(sweep.config, overrides),
            "overrides": trial.overrides,
            "seed_keys": list(sweep.seed_keys),
            "base_overrides": sweep.base_overrides,
            "global_overrides": global_overrides,
        }
        done = f"eval_{split}/results.json"
        steps = [
            Step("train", train_argv(python, trial_config, tdir, overrides), "train_summary.json"),
            Step("evaluate", eval_argv(python, tdir, split), done),
        ]
        plans.append(TrialPlan(trial, tdir, steps, record, done))
    return plans


def trial_state(plan: TrialPlan) -> str:
    """'finished', 'failed' (FAILED present), 'interrupted' (directory exists) or 'new'."""
    if plan.done is not None and (plan.dir / plan.done).exists():
        return "finished"
    if (plan.dir / "FAILED").exists():
        return "failed"
    return "interrupted" if plan.dir.exists() else "new"


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def _log_event(path: Path, **event) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps({"time": _now(), **event}) + "\n")


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
        log.write(f"\n### {_now()} $ {shlex.join(step.argv)}\n")
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
        f"time: {_now()}",
        f"command: {shlex.join(step.argv)}",
        f"--- last lines of logs/{step.name}.log ---",
        *tail,
    ]
    (plan.dir / "FAILED").write_text("\n".join(text) + "\n")
    return error


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
            _log_event(status_log, trial=name, event="skipped", state=state)
            outcome["skipped"].append(name)
            continue
        plan.dir.mkdir(parents=True, exist_ok=True)
        (plan.dir / "trial.json").write_text(json.dumps(plan.record, indent=2) + "\n")
        (plan.dir / "FAILED").unlink(missing_ok=True)
        resumed = state != "new"
        echo(f"{tag}: {'resuming (' + state + ')' if resumed else 'starting'}")
        _log_event(status_log, trial=name, event="started", resumed=resumed)
        failed = None
        for step in plan.steps:
            if step.marker is not None and (plan.dir / step.marker).exists():
                echo(f"    {step.name}: already done")
                continue
            start = time.perf_counter()
            try:
                reason = run_step(step, plan.dir, timeout)
            except KeyboardInterrupt:
                _log_event(status_log, trial=name, event="interrupted", step=step.name)
                raise
            seconds = round(time.perf_counter() - start, 1)
            if reason is not None:
                error = record_failure(plan, step, reason)
                echo(f"    {step.name}: FAILED after {seconds} s ({reason}): {error}")
                _log_event(
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
            _log_event(status_log, trial=name, event="step", step=step.name, seconds=seconds)
        if failed is None:
            _log_event(status_log, trial=name, event="finished")
            outcome["finished"].append(name)
        else:
            outcome["failed"].append(name)
    return outcome


def _quote_path(path: str) -> str:
    """Shell-quote a path but let a leading `~/` expand on the remote side."""
    if path.startswith("~/"):
        return "~/" + shlex.quote(path[2:])
    return shlex.quote(path)


def _guarded(plan: TrialPlan, step: Step) -> str:
    """`{ test -f MARKER || COMMAND; }`: the command runs only if its output is missing."""
    command = shlex.join(step.argv)
    if step.marker is None:
        return command
    return f"{{ test -f {shlex.quote(str(plan.dir / step.marker))} || {command}; }}"


def _prologue(plan: TrialPlan, repo_dir: str | None) -> list[str]:
    w = shlex.quote(str(plan.dir))
    record = shlex.quote(json.dumps(plan.record, sort_keys=True))
    cd = [f"cd {_quote_path(repo_dir)}"] if repo_dir else []
    return [*cd, f"mkdir -p {w}", f"printf '%s\\n' {record} > {w}/trial.json"]


def shell_line(plan: TrialPlan, repo_dir: str | None = None) -> str:
    """One self-contained, idempotent shell line for the trial (print backend)."""
    w = shlex.quote(str(plan.dir))
    parts = [*_prologue(plan, repo_dir), f"rm -f {w}/FAILED"]
    parts += [_guarded(plan, step) for step in plan.steps]
    failed = f'{{ echo "error: exit status $? (see the job log)" > {w}/FAILED; false; }}'
    return " && ".join(parts) + " || " + failed


def tpu_pod_steps(
    plan: TrialPlan, *, tpu: str, zone: str, project: str | None, repo_dir: str
) -> list[Step]:
    """gcloud commands: train on every worker of the pod slice, evaluate on worker 0."""
    base = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, "--zone", zone]
    if project:
        base += ["--project", project]
    train, evaluate = plan.steps
    train_cmd = " && ".join([*_prologue(plan, repo_dir), _guarded(plan, train)])
    eval_cmd = " && ".join([f"cd {_quote_path(repo_dir)}", _guarded(plan, evaluate)])
    return [
        Step("train", [*base, "--worker=all", "--command", train_cmd], None),
        Step("evaluate", [*base, "--worker=0", "--command", eval_cmd], None),
    ]


def write_sweep_json(root: Path, sweep: Sweep, plans: Sequence[TrialPlan], sets: Point) -> None:
    """`<workdir>/sweep.json`: every planned trial, so the report can list missing ones.
    Trials from earlier launches (e.g. other `--only` subsets) are kept."""
    path = root / "sweep.json"
    trials: dict[str, Point] = {}
    if path.exists():
        trials = {t["name"]: t["overrides"] for t in json.loads(path.read_text())["trials"]}
    trials.update({p.trial.name: p.trial.overrides for p in plans})
    root.mkdir(parents=True, exist_ok=True)
    data = {
        "sweep": sweep.name,
        "config": sweep.config,
        "seed_keys": list(sweep.seed_keys),
        "base_overrides": sweep.base_overrides,
        "global_overrides": sets,
        "trials": [{"name": k, "overrides": v} for k, v in trials.items()],
        "contrasts": [c.as_json() for c in sweep.contrasts],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_.]+)\}")


def resolve_config(config: str, overrides: Point) -> str:
    """Fill `{key}` placeholders of a sweep's config path from the trial's overrides, so
    that e.g. `configs/e2e.py:method={method}` gives each method its own config."""

    def value(match: re.Match) -> str:
        key = match.group(1)
        if key not in overrides:
            raise ValueError(f"config {config!r} names {{{key}}}, which the trial does not set")
        return format_value(overrides[key])

    return _PLACEHOLDER.sub(value, config)


def _local_config(config: str) -> str:
    """Make a repo-relative config path (or path template) work from any current directory."""
    path, sep, arg = config.partition(":")
    directory = Path(path).parent
    if not Path(path).is_absolute() and not directory.is_dir() and (REPO_ROOT / directory).is_dir():
        return str(REPO_ROOT / path) + sep + arg
    return config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m prefix_jax.study.launch",
        description=__doc__.split("\n\n")[0],
        epilog=f"sweeps shipped: {', '.join(available())}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sweep", help="sweep file, module or name (experiments/sweeps/*.py)")
    parser.add_argument("--workdir", required=True, help="root directory; one subdir per trial")
    parser.add_argument("--backend", default="local", choices=("local", "print", "tpu-pod"))
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
    parser.add_argument("-o", "--output", help="print backend: write the lines to this file")
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


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (1 if any trial failed)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.backend == "tpu-pod" and not (args.tpu and args.zone):
        parser.error("--backend=tpu-pod needs --tpu NAME and --zone ZONE")
    default_python = {"local": sys.executable, "print": "python", "tpu-pod": "python3"}
    python = shlex.split(args.python) if args.python else [default_python[args.backend]]
    try:
        sweep = load_sweep(args.sweep)
        sets = parse_sets(args.set)
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()] if args.seeds else None
        local = args.backend == "local"
        plans = plan_trials(
            sweep,
            args.workdir,
            python=python,
            global_overrides=sets,
            seeds=seeds,
            only=args.only,
            split=args.split,
            config=_local_config(sweep.config) if local else None,
        )
    except (OSError, ImportError, AttributeError, TypeError, ValueError) as e:
        parser.error(str(e))
    if not plans:
        parser.error(f"no trial of sweep {sweep.name!r} matches --only {args.only!r}")
    if sweep.note:
        print(f"note ({sweep.name}): {sweep.note}", file=sys.stderr)

    if args.backend == "print":
        lines = [shell_line(plan, args.repo_dir) for plan in plans]
        text = "\n".join(lines) + "\n"
        if args.output:
            Path(args.output).write_text(text)
            print(f"{len(lines)} trial lines -> {args.output}", file=sys.stderr)
        else:
            sys.stdout.write(text)
        return 0

    if args.backend == "tpu-pod":
        repo_dir = args.repo_dir or "prefix_jax"
        plans = [
            dataclasses.replace(
                plan,
                steps=tpu_pod_steps(
                    plan, tpu=args.tpu, zone=args.zone, project=args.project, repo_dir=repo_dir
                ),
                done=None,
            )
            for plan in plans
        ]
        if not args.execute or args.dry_run:
            for plan in plans:
                for step in plan.steps:
                    print(shlex.join(step.argv))
            return 0

    if args.dry_run:
        for i, plan in enumerate(plans, 1):
            print(f"# [{i}/{len(plans)}] {plan.trial.name}: {trial_state(plan)}")
            for step in plan.steps:
                done = step.marker is not None and (plan.dir / step.marker).exists()
                print(("# done: " if done else "") + shlex.join(step.argv))
        return 0

    root = Path(args.workdir)
    write_sweep_json(root, sweep, plans, sets)
    status_log = root / "launch.jsonl"
    command = shlex.join(["python", "-m", "prefix_jax.study.launch", *(argv or sys.argv[1:])])
    _log_event(
        status_log,
        event="launch",
        command=command,
        **provenance.git_commit(REPO_ROOT),
        machine=provenance.machine(),
    )
    try:
        outcome = run_trials(plans, status_log, timeout=args.timeout, skip_failed=args.skip_failed)
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    print(
        f"\nsweep {sweep.name}: {len(plans)} trials, {len(outcome['finished'])} run now, "
        f"{len(outcome['skipped'])} skipped, {len(outcome['failed'])} failed"
    )
    for name in outcome["failed"]:
        error = ""
        failed = root / name / "FAILED"
        if failed.exists():
            error = next(
                (ln[7:] for ln in failed.read_text().splitlines() if ln.startswith("error: ")), ""
            )
        print(f"  FAILED {name}: {error}  ({failed})")
    return 1 if outcome["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
