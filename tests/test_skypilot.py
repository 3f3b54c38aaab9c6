"""The skypilot backend without a cloud: every task passes SkyPilot's own parser, bad options
stop before anything is written, `--status` reads job records built from SkyPilot's own
types, and the generated `run` script, executed by bash as two hosts of a cluster (the
`SKYPILOT_*` variables SkyPilot sets, loopback IPs, gloo), trains, is killed mid-run,
resumes to the same prefix bit for bit, evaluates on rank 0 and leaves what the report reads.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import OVERRIDES

from prefix_jax.cli import launch as launch_cli
from prefix_jax.cli import report as report_cli
from prefix_jax.methods.prefix import artifact as export
from prefix_jax.study import launch
from prefix_jax.study.launch.sky_jobs import (
    STATES,
    job_states,
    status_lines,
    still_going,
    submitted_jobs,
    sync_command,
)
from prefix_jax.study.launch.sky_task import TPU_RUNTIME, Resources
from prefix_jax.study.launch.skypilot import log_launch, log_submitted
from prefix_jax.study.provenance import git_commit
from prefix_jax.study.report.markdown import provenance_markdown
from prefix_jax.study.report.runs import read_launch_log
from prefix_jax.study.sweep import load_sweep

sky = pytest.importorskip("sky")
from sky.jobs.state import ManagedJobStatus  # noqa: E402
from sky.schemas.api.responses import ManagedJobRecord  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def parse(config: dict):
    """SkyPilot's parser (it consumes the dict it is given)."""
    return sky.Task.from_yaml_config(copy.deepcopy(config))


def generate(workdir: Path, out: Path, *flags: str) -> list[dict]:
    argv = ["prefix_length", "--workdir", str(workdir), "--backend", "skypilot", "-o", str(out)]
    assert launch_cli.main([*argv, *flags]) == 0
    return [yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))]


def test_every_task_of_a_sweep_passes_skypilots_parser(tmp_path, capsys):
    start = time.perf_counter()
    tpu = generate(
        tmp_path / "pl",
        tmp_path / "tpu",
        *("--accelerators", "tpu-v5litepod-16", "--spot", "--bucket", "gs://b-1/sweeps"),
    )
    seconds = time.perf_counter() - start
    assert len(tpu) == 27 and len({t["name"] for t in tpu}) == 27
    print(f"\n27 tasks generated and validated in {seconds:.1f} s", file=sys.__stderr__)
    gpu = generate(
        tmp_path / "pl",
        tmp_path / "gpu",
        *("--accelerators", "H100:8", "--num-nodes", "2", "--bucket", "s3://b-2"),
        *("--cloud", "aws", "--region", "us-east-1"),
    )
    for config in tpu + gpu:  # read back from disk: still SkyPilot tasks
        assert parse(config).name == config["name"]
    (resources,) = parse(tpu[0]).resources
    assert resources.accelerators == {"tpu-v5litepod-16": 1} and resources.use_spot
    assert resources.accelerator_args["runtime_version"] == "v2-alpha-tpuv5-lite"
    assert tpu[0]["resources"]["job_recovery"] == {"max_restarts_on_errors": 0}
    assert tpu[0]["file_mounts"]["/prefix-jax-runs"]["source"] == "gs://b-1/sweeps"
    assert tpu[0]["envs"]["SWEEP_DIR"] == "/prefix-jax-runs/pl"
    assert "--distributed" in tpu[0]["run"] and "--coordinator" not in tpu[0]["run"]
    gpu_task = parse(gpu[0])
    assert gpu_task.num_nodes == 2 and "--coordinator=$HEAD:$PORT" in gpu[0]["run"]
    assert "jax[cuda12]==0.10.2" in gpu[0]["setup"] and "[tpu]" in tpu[0]["setup"]
    # Every trial's commands: its own directory under $SWEEP_DIR, its own grid point.
    assert sum("--config.prefix.length=40" in t["run"] for t in tpu) == 3
    assert all(t["run"].count('"$SWEEP_DIR"') == 3 for t in tpu)  # TRIAL=, two --workdir
    assert "warning: data.path=" in capsys.readouterr().err  # a path the cluster lacks


def test_tpu_generations_name_their_software_version():
    for generation, version in TPU_RUNTIME.items():
        config = {"resources": Resources(f"tpu-{generation}-8").as_yaml(), "run": "true"}
        (resources,) = sky.Task.from_yaml_config(config).resources
        assert resources.accelerator_args["runtime_version"] == version


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--accelerators", "H1000:8"], "unknown accelerator 'H1000:8'"),
        (["--accelerators", "tpu-v9-8"], "unknown TPU type 'tpu-v9-8'"),
        (["--accelerators", "H100:0"], "unknown accelerator 'H100:0'"),
        (["--accelerators", "H100:8", "--spot"], "--spot needs --bucket"),
        (["--accelerators", "H100:8", "--bucket", "my-bucket"], "must be a bucket URL"),
        (["--accelerators", "H100:8", "--execute"], "--execute needs --bucket"),
        (["--accelerators", "tpu-v4-32", "--num-nodes", "2"], "--num-nodes is for GPU"),
        ([], "needs --accelerators"),
        (["--accelerators", "H100:8", "--zone", "z"], "--region and --zone need --cloud"),
    ],
)
def test_bad_options_fail_before_anything_is_written(tmp_path, capsys, flags, message):
    argv = ["prefix_length", "--workdir", str(tmp_path / "w"), "--backend", "skypilot"]
    with pytest.raises(SystemExit):
        launch_cli.main([*argv, "-o", str(tmp_path / "tasks"), *flags])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "tasks").exists() and not (tmp_path / "w").exists()


def record(job_id: int, status: ManagedJobStatus, name: str) -> ManagedJobRecord:
    """A record as `sky.jobs.queue_v2` returns it (its default fields)."""
    return ManagedJobRecord(
        job_id=job_id,
        task_id=0,
        job_name=name,
        task_name=name,
        resources="1x GCP(tpu-v5litepod-16)",
        submitted_at=1.7e9,
        end_at=None,
        job_duration=12.0,
        recovery_count=1 if status is ManagedJobStatus.RECOVERING else 0,
        status=status,
    )


def test_status_maps_skypilots_records_onto_trials(tmp_path):
    assert {s.value for s in ManagedJobStatus} == set(STATES)  # every status has a meaning
    study = load_sweep("prefix_length")
    plans = launch.plan_trials(study, tmp_path, python=["python"], seeds=[0])
    names = [p.trial.name for p in plans]
    finished = plans[0].dir / "eval_validation"
    finished.mkdir(parents=True)
    (finished / "results.json").write_text("{}")  # synced home
    log = tmp_path / "launch.jsonl"
    statuses = [
        ManagedJobStatus.STARTING,
        ManagedJobStatus.RUNNING,
        ManagedJobStatus.RECOVERING,
        ManagedJobStatus.SUCCEEDED,
        ManagedJobStatus.FAILED_NO_RESOURCE,
        ManagedJobStatus.CANCELLED,
    ]
    lines = [json.dumps({"event": "launch", "backend": "skypilot", "commit": "c" * 40})]
    for i, name in enumerate(names[: len(statuses) + 1]):
        lines.append(json.dumps({"trial": name, "event": "submitted", "job_id": 10 + i}))
    lines.append(json.dumps({"trial": names[2], "event": "submitted", "job_id": 30}))  # again
    log.write_text("\n".join(lines) + "\n")
    jobs = submitted_jobs(tmp_path)
    assert jobs[names[2]] == [12, 30]
    records = [record(11 + i, s, f"job-{i}") for i, s in enumerate(statuses)]
    records[1] = record(30, statuses[1], "job-1-again")  # job 12 has left the queue

    asked = []

    def query(ids):
        asked.append(ids)
        return records

    out = status_lines(plans, jobs, query)
    assert asked == [[10, 11, 13, 14, 15, 16, 30]]
    state = {line[36:]: line[:24].strip() for line in out}
    job = {line[36:]: line[25:35].strip() for line in out}
    assert state[names[0]] == "finished (results here)"
    assert state[names[1]] == "pending" and state[names[2]] == "running"
    assert [state[n] for n in names[3:7]] == ["recovering", "succeeded", "failed", "cancelled"]
    assert all(state[n] == "not submitted" for n in names[7:])
    assert job[names[2]] == "job 30" and job[names[7]] == "-"
    # Relaunching submits again only the failed, cancelled and unknown ones.
    again = still_going(job_states(jobs, query))
    assert sorted(again) == sorted(names[1:5]) and names[0] not in again


def test_report_names_the_jobs_resources_and_commit(tmp_path):
    log = tmp_path / "launch.jsonl"
    resources = Resources("tpu-v5litepod-16", spot=True, bucket="gs://b-1/sweeps")
    log_launch(log, "prefix-jax launch pl --backend skypilot", resources)
    for job_id, trial in ((7, "a"), (8, "b")):
        log_submitted(log, trial, job_id, f"pl-{trial}", tmp_path / f"pl-{trial}.yaml")
    assert submitted_jobs(tmp_path) == {"a": [7], "b": [8]}
    launches, per_trial = read_launch_log(tmp_path)
    commit = (git_commit(launch.REPO_ROOT)["commit"] or "unknown")[:12]
    assert per_trial["a"]["commits"][0].startswith(commit)
    trials = [{"name": t, "status": "finished", "commits": per_trial[t]["commits"]} for t in "ab"]
    section = "\n".join(provenance_markdown(trials, launches, None))
    assert "- Launched (1 launch that ran trials) with:" in section
    assert (
        f"- SkyPilot managed jobs at `{commit}" in section
        and ": 2 on tpu-v5litepod-16 (spot, gs://b-1/sweeps), job ids 7, 8" in section
    )
    assert f"`{commit}" in section.split("- Code")[1]


def test_sync_command_leaves_checkpoints_in_the_bucket(tmp_path):
    gs = sync_command("gs://b/sweeps/", tmp_path / "pl")
    assert gs[:4] == ["gcloud", "storage", "rsync", "--recursive"]
    assert gs[-2:] == ["gs://b/sweeps/pl", str(tmp_path / "pl")]
    exclude = gs[gs.index("--exclude") + 1]
    import re

    assert re.fullmatch(exclude, "t=1/checkpoints/4/state") and not re.fullmatch(exclude, "t=1/x")
    s3 = sync_command("s3://b", tmp_path / "pl")
    assert s3[:5] == ["aws", "s3", "sync", "s3://b/pl", str(tmp_path / "pl")]


# --------------------------------------------------------- the run script, executed

MAX_STEPS, KILL_AT = 24, 4
TINY_SWEEP = """
from prefix_jax.study.sweep import Sweep, sweep

def get_sweep():
    return Sweep(
        name="tiny",
        config="configs/e2e.py:local",
        grid=sweep("prefix.length", [3]),
        seeds=(0,),
        base_overrides={overrides!r},
    )
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_hosts(script: Path, env: dict[str, str], sweep_dir: Path, logs: Path, attempt: str):
    """`bash run.sh` on two "hosts", with the variables SkyPilot gives a 2-node job."""
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        host = {
            **env,
            "SWEEP_DIR": str(sweep_dir),  # `sky jobs launch --env SWEEP_DIR=...`
            "SKYPILOT_NODE_RANK": str(rank),
            "SKYPILOT_NUM_NODES": "2",
            "SKYPILOT_NODE_IPS": "127.0.0.1\n127.0.0.1",
            "PREFIX_JAX_COORDINATOR_PORT": port,
        }
        log = open(logs / f"{sweep_dir.name}-{attempt}-rank{rank}.log", "w")
        procs.append(
            subprocess.Popen(
                ["bash", str(script)],
                cwd=REPO,  # SkyPilot runs `run` in the synced workdir: this checkout
                env=host,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as one
            )
        )
    return procs


def wait(procs, timeout: float = 300) -> list[int]:
    return [p.wait(timeout=timeout) for p in procs]


def test_run_script_trains_on_two_hosts_resumes_bitwise_and_reports(tiny, tmp_path):
    overrides = {k: v for k, v in OVERRIDES.items() if k not in ("mesh", "prefix.length")}
    overrides |= {k: f"({','.join(map(str, v))})" for k, v in overrides.items() if type(v) is tuple}
    overrides |= {"model": str(tiny["model"]), "data.path": str(tiny["data"])}
    overrides |= {"max_steps": MAX_STEPS, "checkpoint_every": KILL_AT, "log_every": KILL_AT}
    overrides |= {"decode.beam_size": 1, "decode.max_new_tokens": 8}
    sweep_file = tmp_path / "tiny.py"
    sweep_file.write_text(TINY_SWEEP.format(overrides=overrides))
    argv = [str(sweep_file), "--workdir", str(tmp_path / "tiny"), "--backend", "skypilot"]
    argv += ["--accelerators", "H100:8", "--num-nodes", "2", "--bucket", "gs://b-1"]
    assert launch_cli.main([*argv, "-o", str(tmp_path / "tasks")]) == 0
    (task_file,) = (tmp_path / "tasks").glob("*.yaml")
    config = yaml.safe_load(task_file.read_text())
    script = tmp_path / "run.sh"
    script.write_text(config["run"])  # as written
    cache = tmp_path / "jax_cache"
    env = {
        **os.environ,
        **config["envs"],
        "PREFIX_JAX_VENV": sys.prefix,  # what the task's setup installed
        "PYTHONPATH": str(REPO),
        "JAX_COMPILATION_CACHE_DIR": str(cache),  # the three runs compile the same programs
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    trial = "prefix.length=3,seed=0"
    whole, cut = tmp_path / "bucket" / "whole", tmp_path / "bucket" / "cut"
    logs = tmp_path / "logs"
    logs.mkdir()
    start = time.perf_counter()

    # Uninterrupted, and (at the same time) one that is killed right after its first
    # checkpoint, as a preemption kills every host.
    procs = start_hosts(script, env, whole, logs, "whole")
    victims = start_hosts(script, env, cut, logs, "cut")
    checkpoint = cut / trial / "checkpoints" / str(KILL_AT)
    while not checkpoint.is_dir():
        assert all(p.poll() is None for p in victims), "finished before the kill"
        time.sleep(0.01)
    for p in victims:
        os.killpg(p.pid, signal.SIGKILL)
    assert wait(victims) == [-signal.SIGKILL] * 2
    assert not (cut / trial / "train_summary.json").exists()  # killed mid-run
    assert wait(procs) == [0, 0]

    # Recovery: the same script again on both hosts.
    assert wait(start_hosts(script, env, cut, logs, "again")) == [0, 0]
    seconds = time.perf_counter() - start
    print(f"\ntwo-host runs with kill and resume: {seconds:.1f} s", file=sys.__stderr__)

    again = [(logs / f"cut-again-rank{r}.log").read_text() for r in (0, 1)]
    assert all("resumed from step" in log for log in again), again[0][-2000:]
    summaries = [json.loads((d / trial / "train_summary.json").read_text()) for d in (whole, cut)]
    assert [(s["processes"], s["devices"], s["steps"]) for s in summaries] == [(2, 2, 24)] * 2
    assert summaries[0]["final_train_loss"] == summaries[1]["final_train_loss"]
    prefixes = [export.load(d / trial / "export").table for d in (whole, cut)]
    assert prefixes[0].dtype == prefixes[1].dtype and prefixes[0].shape == prefixes[1].shape
    assert np.array_equal(prefixes[0], prefixes[1])  # bit for bit
    assert not np.array_equal(prefixes[0], 0)

    # Rank 0 evaluated (its results and its printed table); rank 1 did not.
    for d in (whole, cut):
        assert (d / trial / "eval_validation" / "results.json").exists()
        assert json.loads((d / trial / "trial.json").read_text())["trial"] == trial
    assert "BLEU" in (logs / "whole-whole-rank0.log").read_text()
    assert "BLEU" not in (logs / "whole-whole-rank1.log").read_text()
    assert "BLEU" not in again[1] and "BLEU" in again[0]

    # What `--sync` brings home is what the report reads.
    assert report_cli.main([str(cut), "--out", str(tmp_path / "report")]) == 0
    rows = (tmp_path / "report" / "trials.csv").read_text().splitlines()
    assert len(rows) == 2 and trial in rows[1] and "finished" in rows[1]


def test_status_needs_no_resources_and_lists_every_trial(tmp_path, capsys):
    argv = ["prefix_length", "--workdir", str(tmp_path), "--backend", "skypilot", "--status"]
    assert launch_cli.main([*argv, "--seeds", "0"]) == 0  # nothing submitted: SkyPilot not asked
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 9 and all(line.startswith("not submitted") for line in lines)
    with pytest.raises(SystemExit):
        launch_cli.main(["prefix_length", "--workdir", str(tmp_path), "--status"])
    assert "--status and --sync are for --backend=skypilot" in capsys.readouterr().err
