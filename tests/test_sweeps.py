"""Sweeps, launcher and report: grid expansion, skip/resume/failure isolation with a fake
trial program, the print and tpu-pod backends, and the report on synthetic results."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import shlex
import statistics
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from prefix_jax.cli import launch as launch_cli
from prefix_jax.cli import report as report_cli
from prefix_jax.metrics.bleu import bleu_of_sums
from prefix_jax.study import archive, bootstrap, launch, provenance
from prefix_jax.study.report import write_report
from prefix_jax.study.report.markdown import params_cell
from prefix_jax.study.report.plots import loss_panels, plot_train_loss
from prefix_jax.study.report.runs import read_loss_curve
from prefix_jax.study.sweep import (
    SWEEPS_DIR,
    Sweep,
    available,
    chain,
    format_value,
    grid_module,
    load_sweep,
    product,
    sweep,
    trial_name,
    zip_,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Stands in for `python -m prefix_jax.cli train|evaluate ...`: it is run as
# `python fake_prog.py -m prefix_jax.cli COMMAND ARGS...`, logs each call, fails for the trial whose
# overrides contain $FAKE_FAIL, and writes the files the real programs write.
FAKE_PROG = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path

    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))

    args = sys.argv[1:]
    assert args[:2] == ["-m", "prefix_jax.cli"], args
    command = args[2]
    if command == "train":
        flags = dict(a[2:].split("=", 1) for a in args[3:])
        workdir = Path(flags.pop("workdir"))
        overrides = {k[len("config."):]: v for k, v in flags.items() if k.startswith("config.")}
    else:
        workdir = Path(args[args.index("--workdir") + 1])
        overrides = json.loads((workdir / "config.json").read_text())
    call = {"command": command, "trial": workdir.name}
    fail = os.environ.get("FAKE_FAIL", "")
    if command == "train":
        call["resumed"] = (workdir / "checkpoint").exists()
        if fail and fail in ",".join(f"{k}={v}" for k, v in overrides.items()):
            with open(os.environ["FAKE_LOG"], "a") as f:
                f.write(json.dumps({**call, "failed": True}) + "\\n")
            print("step 1/3", flush=True)
            raise ValueError(f"boom for {fail}")
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(json.dumps(overrides))
        (workdir / "checkpoint").write_text("3")
        with open(workdir / "metrics.jsonl", "a") as f:
            for step in (1, 2, 3):
                f.write(json.dumps({"step": step, "loss": 3.0 / step}) + "\\n")
        summary = {"steps": 3, "wall_s": 1.5, "params_trainable": 10, "params_total": 1000,
                   "eval_loss": 1.0, "final_train_loss": 1.0}
        (workdir / "train_summary.json").write_text(json.dumps(summary))
    else:
        out = workdir / "eval_validation"
        out.mkdir(parents=True, exist_ok=True)
        bleu = float(overrides["prefix.length"]) / 100
        results = {"metrics": {"BLEU": bleu, "METEOR": None}, "decode_s": 0.5}
        (out / "results.json").write_text(json.dumps(results))
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps(call) + "\\n")
    """
)

SWEEP_FILE = textwrap.dedent(
    """
    from prefix_jax.study.sweep import Sweep, sweep

    def get_sweep():
        return Sweep(
            name="tiny",
            config="configs/e2e.py:local",
            grid=sweep("prefix.length", [1, 5, 10, 20]),
            seeds=(0,),
            base_overrides={"data.path": "/data/e2e devset.csv"},
        )
    """
)


# ---------------------------------------------------------------------------- grids


def test_grid_helpers_sizes_order_and_errors():
    lengths = sweep("prefix.length", [1, 5, 10])
    reparams = sweep("prefix.reparam", ["none", "mlp"])
    grid = product(lengths, reparams)
    assert len(grid) == 6
    assert grid[:2] == [
        {"prefix.length": 1, "prefix.reparam": "none"},
        {"prefix.length": 1, "prefix.reparam": "mlp"},
    ]
    zipped = zip_(sweep("optim.learning_rate", [1e-4, 5e-5]), sweep("epochs", [5, 10]))
    assert zipped == [
        {"optim.learning_rate": 1e-4, "epochs": 5},
        {"optim.learning_rate": 5e-5, "epochs": 10},
    ]
    assert len(chain(lengths, product(sweep("method", ["lora"]), reparams))) == 5
    with pytest.raises(ValueError, match="share keys"):
        product(lengths, lengths)
    with pytest.raises(ValueError, match="different lengths"):
        zip_(lengths, reparams)
    with pytest.raises(ValueError, match="bad config key"):
        sweep("prefix length", [1])
    with pytest.raises(TypeError):
        sweep("prefix.length", [[1]])
    with pytest.raises(ValueError, match="seeds"):
        Sweep("s", "c.py", grid=sweep("seed", [0, 1]), seeds=(0,))


def test_trial_names_are_stable_safe_and_unique():
    assert trial_name({"prefix.length": 5, "prefix.reparam": "mlp", "seed": 0}) == (
        "prefix.length=5,prefix.reparam=mlp,seed=0"
    )
    assert (
        trial_name({"optim.learning_rate": 8e-05, "x": True}) == "optim.learning_rate=8e-05,x=true"
    )
    a = trial_name({"prefix.init": "text:elephant"})
    b = trial_name({"prefix.init": "text_elephant"})
    assert a != b and b == "prefix.init=text_elephant"
    assert a == trial_name({"prefix.init": "text:elephant"})  # stable
    for name in (a, trial_name({"data.path": "/a b/c.csv"}), trial_name({"k": "x" * 500})):
        assert "/" not in name and " " not in name and ":" not in name and len(name) <= 120
    assert format_value(0.1) == "0.1" and format_value(False) == "false"


def test_sweep_trials_cross_seeds_outermost():
    s = Sweep("s", "c.py", grid=sweep("prefix.length", [1, 5]), seeds=(0, 1))
    trials = s.trials()
    assert [t.name for t in trials] == [
        "prefix.length=1,seed=0",
        "prefix.length=5,seed=0",
        "prefix.length=1,seed=1",
        "prefix.length=5,seed=1",
    ]
    assert trials[3].overrides == {"prefix.length": 5, "seed": 1, "prefix.seed": 1}
    assert [t.name for t in s.trials(seeds=[7])] == [
        "prefix.length=1,seed=7",
        "prefix.length=5,seed=7",
    ]


@pytest.mark.parametrize(
    "name,size,first_flags",
    [
        (
            "prefix_length",
            (5 + 2 + 2) * 3,
            [
                "--config=configs/e2e.py:method=prefix",
                "--config.prefix.length=1",
                "--config.max_steps=200",
            ],
        ),
        (
            "lr_select",
            5 * 3 + 4 + 1 + 1,  # three rates a method, four more direct, one more LoRA, full
            ["--config.prefix.reparam=mlp", "--config.data.tune_sources=50"],
        ),
        (
            "low_data",
            3 * 5 * 3,
            ["--config.data.train_examples=50", "--config.prefix.init=text:table-to-text:"],
        ),
        ("method", 5 * 3, ["--config=configs/e2e.py:method=prefix", "--config.method=prefix"]),
        ("learning_rate", 6 * 2 * 2, ["--config.optim.learning_rate=1e-05"]),
        ("data_size", 10 * 3, ["--config.data.train_fraction=0.1"]),
        ("init", 4 * 3, ["--config.prefix.init=random", "--config.data.train_fraction=0.1"]),
        (
            "small_cpu",
            4 * 2 + 2,
            ["--config=configs/e2e.py:method=prefix,local", "--config.prefix.length=1"],
        ),
    ],
)
def test_shipped_sweeps_expand(name, size, first_flags):
    s = load_sweep(f"experiments/sweeps/{name}.py")
    assert s.name == name
    plans = launch.plan_trials(s, "runs/x", python=["python"])
    assert len(plans) == size
    assert len({p.trial.name for p in plans}) == size
    train = plans[0].steps[0].argv
    assert train[:4] == ["python", "-m", "prefix_jax.cli", "train"]
    assert f"--workdir={Path('runs/x') / plans[0].trial.name}" in train
    for flag in first_flags:
        assert flag in train
    assert "--config.seed=0" in train and "--config.prefix.seed=0" in train
    evaluate = plans[0].steps[1].argv
    assert evaluate[1:] == ["-m", "prefix_jax.cli", "evaluate", "--workdir", str(plans[0].dir)] + [
        "--split",
        "validation",
    ]


def test_sweep_path_and_bare_name_load_the_same(tmp_path, monkeypatch):
    assert set(available()) >= {"prefix_length", "method", "small_cpu", "data_size", "init"}
    by_path = load_sweep("experiments/sweeps/prefix_length.py")
    assert load_sweep("prefix_length") == by_path
    assert load_sweep("small_cpu").config == "configs/e2e.py:method={method},local"
    # Grids and the helpers they import relatively load by path from any directory.
    sweeps_dir = SWEEPS_DIR.resolve()
    monkeypatch.chdir(tmp_path)
    assert load_sweep("prefix_length", sweeps_dir) == by_path
    assert load_sweep(str(sweeps_dir / "low_data.py")).name == "low_data"
    with pytest.raises(FileNotFoundError, match="no folder experiments/sweeps"):
        load_sweep("prefix_length")
    shipped = ", ".join(available(sweeps_dir))
    with pytest.raises(FileNotFoundError, match=f"no sweep 'nope' in .*; shipped: {shipped}"):
        load_sweep("nope", sweeps_dir)
    with pytest.raises(SystemExit):
        launch_cli.main(["nope", "--workdir", "w", "--sweeps-dir", str(sweeps_dir)])


def test_a_sweeps_folder_elsewhere_shares_its_helpers(tmp_path, monkeypatch, capsys):
    """Any folder of grid files works like experiments/sweeps: its helpers import relatively
    and are one module for all its grids; a folder elsewhere with the same names is apart."""
    for name, lengths in (("mine", "[1, 2]"), ("other", "[3]")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "_shared.py").write_text(f"LENGTHS = {lengths}\n")
        (folder / "grid.py").write_text(
            "from prefix_jax.study.sweep import Sweep, sweep\n"
            "from . import _shared\n\n"
            "def get_sweep():\n"
            "    return Sweep('grid', 'c.py', sweep('prefix.length', _shared.LENGTHS))\n"
        )
    monkeypatch.chdir(tmp_path)
    mine = grid_module(tmp_path / "mine" / "_shared.py")
    assert [t.name for t in load_sweep("grid", "mine").trials()] == [
        "prefix.length=1,seed=0",
        "prefix.length=2,seed=0",
    ]
    monkeypatch.setattr(mine, "LENGTHS", [7])
    assert [t.name for t in load_sweep("mine/grid.py").trials()] == ["prefix.length=7,seed=0"]
    assert [t.name for t in load_sweep("grid", "other").trials()] == ["prefix.length=3,seed=0"]
    assert launch_cli.main(["grid", "--sweeps-dir", "other", "--workdir", "w", "--dry-run"]) == 0
    assert "--config.prefix.length=3" in capsys.readouterr().out


def test_config_template_gives_each_method_its_own_config():
    plans = launch.plan_trials(load_sweep("method"), "runs/m", python=["python"], seeds=[0])
    configs = [next(a for a in p.steps[0].argv if a.startswith("--config=")) for p in plans]
    methods = ("prefix", "prompt", "lora", "full", "ln_tuning")
    assert configs == [f"--config=configs/e2e.py:method={m}" for m in methods]
    assert all("--config.lora.seed=0" in p.steps[0].argv for p in plans)
    small = launch.plan_trials(load_sweep("small_cpu"), "runs/s", python=["python"])
    assert [p.record["config"] for p in small[-2:]] == [
        "configs/e2e.py:method=prompt,local",
        "configs/e2e.py:method=lora,local",
    ]
    bad = Sweep(name="bad", config="configs/e2e.py:method={method}", grid=[{"prefix.length": 1}])
    with pytest.raises(ValueError, match=r"\{method\}, which the trial does not set"):
        launch.plan_trials(bad, "runs/b", python=["python"])


def test_overrides_parse_into_the_real_configs():
    """Every shipped sweep's flags are accepted by `prefix-jax train`'s config parsing and
    set the right values."""
    from prefix_jax.config.parse import apply_overrides, load_config, split_overrides

    for name in available():
        s = load_sweep(name)
        plans = launch.plan_trials(s, "runs/x", python=["python"])
        for plan in (plans[0], plans[-1]):
            rest, overrides = split_overrides(plan.steps[0].argv[4:])
            config_file = next(a for a in rest if a.startswith("--config="))
            config = apply_overrides(load_config(config_file.removeprefix("--config=")), overrides)
            for key, value in {**s.base_overrides, **plan.trial.overrides}.items():
                got = config
                for part in key.split("."):
                    got = got[part]
                assert got == value and type(got) is type(value), (name, key)


def test_set_overrides_seeds_and_only():
    s = load_sweep("small_cpu")
    sets = launch_cli.parse_sets(["data.path=/d/devset.csv", "config.max_steps=5"])
    plans = launch.plan_trials(
        s, "w", python=["py"], global_overrides=sets, seeds=[3, 4], only=r"length=5,"
    )
    assert [p.trial.name for p in plans] == [
        "method=prefix,prefix.length=5,prefix.reparam=none,seed=3",
        "method=prefix,prefix.length=5,prefix.reparam=mlp,seed=3",
        "method=prefix,prefix.length=5,prefix.reparam=none,seed=4",
        "method=prefix,prefix.length=5,prefix.reparam=mlp,seed=4",
    ]
    argv = plans[0].steps[0].argv
    assert "--config.data.path=/d/devset.csv" in argv and "--config.max_steps=5" in argv
    assert not any(a.startswith("--config.data.path=/work") for a in argv)  # --set wins
    assert plans[0].record["global_overrides"] == {"data.path": "/d/devset.csv", "max_steps": "5"}
    with pytest.raises(ValueError, match="sweep's own axis"):
        launch.plan_trials(s, "w", python=["py"], global_overrides={"prefix.length": "3"})
    with pytest.raises(ValueError, match="KEY=VALUE"):
        launch_cli.parse_sets(["oops"])


# ------------------------------------------------------------------------- launcher


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A sweep file, the fake trial program and its call log; returns a launcher runner."""
    prog = tmp_path / "fake_prog.py"
    prog.write_text(FAKE_PROG)
    sweep_file = tmp_path / "tiny.py"
    sweep_file.write_text(SWEEP_FILE)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.delenv("FAKE_FAIL", raising=False)
    root = tmp_path / "runs"

    def run(*extra: str, workdir: Path = root) -> int:
        argv = [str(sweep_file), "--workdir", str(workdir)]
        argv += ["--python", shlex.join([sys.executable, str(prog)]), *extra]
        return launch_cli.main(argv)

    def calls() -> list[dict]:
        out = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        log.unlink(missing_ok=True)
        return out

    run.root, run.calls, run.sweep_file = root, calls, sweep_file
    return run


def _trial(length: int) -> str:
    return f"prefix.length={length},seed=0"


def test_launcher_skips_resumes_and_isolates_failures(fake, monkeypatch, capsys):
    root = fake.root
    finished = root / _trial(1) / "eval_validation"
    finished.mkdir(parents=True)
    (finished / "results.json").write_text('{"metrics": {"BLEU": 0.99}}')
    interrupted = root / _trial(10)
    interrupted.mkdir()
    (interrupted / "checkpoint").write_text("1")
    monkeypatch.setenv("FAKE_FAIL", "prefix.length=5")

    assert fake() == 1
    calls = fake.calls()
    ran = [(c["trial"], c["command"]) for c in calls]
    assert (_trial(1), "train") not in ran  # finished: skipped
    assert [c for c in calls if c["trial"] == _trial(10)][0]["resumed"] is True
    assert (_trial(10), "evaluate") in ran
    assert (_trial(5), "evaluate") not in ran  # failed in training
    assert [c for c in calls if c["trial"] == _trial(5)][0]["failed"] is True
    assert (_trial(20), "train") in ran and (
        _trial(20),
        "evaluate",
    ) in ran

    failed = (root / _trial(5) / "FAILED").read_text()
    assert "error: ValueError: boom for prefix.length=5" in failed
    assert "step: train" in failed and "exit status 1" in failed and "step 1/3" in failed
    out = capsys.readouterr().out
    assert "1 skipped, 1 failed" in out and f"FAILED {_trial(5)}: ValueError: boom" in out
    events = [json.loads(x) for x in (root / "launch.jsonl").read_text().splitlines()]
    assert {(e.get("trial"), e["event"]) for e in events} >= {
        (_trial(1), "skipped"),
        (_trial(5), "failed"),
        (_trial(10), "finished"),
        (_trial(20), "finished"),
    }
    record = json.loads((root / _trial(20) / "trial.json").read_text())
    assert record["overrides"] == {"prefix.length": 20, "seed": 0, "prefix.seed": 0}
    assert record["base_overrides"] == {"data.path": "/data/e2e devset.csv"}
    planned = json.loads((root / "sweep.json").read_text())["trials"]
    assert [t["name"] for t in planned] == [_trial(n) for n in (1, 5, 10, 20)]

    # --skip-failed leaves the failure alone; a plain rerun retries only it.
    assert fake("--skip-failed") == 0 and fake.calls() == []
    monkeypatch.delenv("FAKE_FAIL")
    assert fake() == 0
    assert [(c["trial"], c["command"]) for c in fake.calls()] == [
        (_trial(5), "train"),
        (_trial(5), "evaluate"),
    ]
    assert not (root / _trial(5) / "FAILED").exists()


def test_launcher_does_not_retrain_a_finished_training(fake):
    tdir = fake.root / _trial(5)
    tdir.mkdir(parents=True)
    (tdir / "train_summary.json").write_text("{}")
    (tdir / "config.json").write_text('{"prefix.length": 5}')
    assert fake("--only", "length=5,") == 0
    assert [(c["trial"], c["command"]) for c in fake.calls()] == [(_trial(5), "evaluate")]


def test_launcher_records_a_program_that_cannot_start(tmp_path, fake):
    code = launch_cli.main(
        [str(fake.sweep_file), "--workdir", str(fake.root), "--only", "length=1,"]
        + ["--python", str(tmp_path / "no-such-python")]
    )
    assert code == 1
    assert "could not start" in (fake.root / _trial(1) / "FAILED").read_text()


def test_launcher_times_out_a_hanging_command(fake, monkeypatch):
    monkeypatch.setenv("FAKE_SLEEP", "30")
    assert fake("--only", "length=1,", "--timeout", "0.5") == 1
    failed = (fake.root / _trial(1) / "FAILED").read_text()
    assert "reason: timed out after 0.5 s" in failed and "error: timed out" in failed


def test_dry_run_prints_commands_and_touches_nothing(fake, capsys):
    assert fake("--dry-run", "--set", "max_steps=2") == 0
    out = capsys.readouterr().out
    assert not fake.root.exists() and fake.calls() == []
    assert (
        out.count("-m prefix_jax.cli train") == 4 and out.count("-m prefix_jax.cli evaluate") == 4
    )
    assert "--config.prefix.length=5" in out and "--config.max_steps=2" in out
    assert "'--config.data.path=/data/e2e devset.csv'" in out  # shell-quoted
    assert f"# [2/4] {_trial(5)}: new" in out


def test_print_backend_lines_are_runnable_and_idempotent(fake, tmp_path, monkeypatch, capsys):
    out_file = tmp_path / "trials.sh"
    assert fake("--backend=print", "-o", str(out_file)) == 0
    lines = out_file.read_text().splitlines()
    assert len(lines) == 4 and all("-m prefix_jax.cli train" in line for line in lines)
    assert "--config.prefix.length=5" in lines[1]

    def bash(line: str) -> int:
        return subprocess.run(["bash", "-c", line], capture_output=True, check=False).returncode

    assert bash(lines[0]) == 0
    assert [c["command"] for c in fake.calls()] == [
        "train",
        "evaluate",
    ]
    assert json.loads((fake.root / _trial(1) / "trial.json").read_text())["trial"] == _trial(1)
    assert bash(lines[0]) == 0 and fake.calls() == []  # finished: nothing reruns
    monkeypatch.setenv("FAKE_FAIL", "prefix.length=5")
    assert bash(lines[1]) != 0
    assert "exit status 1" in (fake.root / _trial(5) / "FAILED").read_text()
    assert fake("--backend=print") == 0  # without -o: stdout
    assert capsys.readouterr().out.splitlines() == lines


def test_tpu_pod_backend_emits_gcloud_commands(fake, capsys):
    assert fake("--backend=tpu-pod", "--tpu", "pod-1", "--zone", "us-central2-b") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 8 and fake.calls() == []
    train, evaluate = shlex.split(lines[2]), shlex.split(lines[3])
    base = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod-1", "--zone", "us-central2-b"]
    assert train[:8] == base and evaluate[:8] == base
    assert "--worker=all" in train and "--worker=0" in evaluate
    remote = train[train.index("--command") + 1]
    assert remote.startswith("cd prefix_jax && ")
    assert "--config.prefix.length=5" in remote and "--config=configs/e2e.py:local" in remote
    assert remote.endswith(" --distributed; }")  # every worker joins jax.distributed
    assert shlex.split(remote.split(" || ")[1].rstrip("; }"))[:3] == [
        sys.executable,
        str(fake.sweep_file.parent / "fake_prog.py"),
        "-m",
    ]
    assert "prefix_jax.cli evaluate" in evaluate[evaluate.index("--command") + 1]
    with pytest.raises(SystemExit):
        fake("--backend=tpu-pod", "--tpu", "pod-1")


def test_a_backend_gets_the_planned_trials(tmp_path):
    """The seam for other schedulers: a backend receives every planned trial, planned with
    its own interpreter, and its exit status is the launcher's."""

    class Recording:
        python = ("remote-python",)
        runs_here = False

        def __init__(self):
            self.launches = []

        def launch(self, request: launch.Launch) -> int:
            self.launches.append(request)
            return 3

    backend = Recording()
    study = Sweep("s", "configs/x_{method}.py", grid=sweep("method", ["a", "b"]), seeds=(0, 1))
    request = launch.plan_launch(study, tmp_path / "w", backend, only="seed=1", command="c")
    assert backend.launch(request) == 3 and backend.launches == [request]
    assert [p.trial.name for p in request.plans] == ["method=a,seed=1", "method=b,seed=1"]
    assert request.plans[0].steps[0].argv[:4] == ["remote-python", "-m", "prefix_jax.cli", "train"]
    assert "--config=configs/x_a.py" in request.plans[0].steps[0].argv
    assert request.workdir == tmp_path / "w" and request.command == "c"
    assert not (tmp_path / "w").exists()  # planning writes nothing
    with pytest.raises(ValueError, match="no trial of sweep 's' matches --only 'x'"):
        launch.plan_launch(study, tmp_path / "w", backend, only="x")


# --------------------------------------------------------------------------- report


def _write_trial(root, length, reparam, seed, bleu=None, failed=None, loss=1.0):
    name = trial_name({"prefix.length": length, "prefix.reparam": reparam, "seed": seed})
    tdir = root / name
    tdir.mkdir(parents=True)
    overrides = {"prefix.length": length, "prefix.reparam": reparam, "seed": seed}
    overrides["prefix.seed"] = seed
    (tdir / "trial.json").write_text(
        json.dumps({"trial": name, "overrides": overrides, "seed_keys": ["seed", "prefix.seed"]})
    )
    (tdir / "config.json").write_text("{}")
    params = 100 * length * (2 if reparam == "mlp" else 1)
    summary = {"steps": 2, "wall_s": 10.0 + seed, "params_trainable": params}
    summary |= {"params_total": 10_000, "eval_loss": loss + seed}
    (tdir / "train_summary.json").write_text(json.dumps(summary))
    rows = [{"step": 0, "trainable_params": params}, {"step": 1, "loss": 3.0}]
    rows += [{"step": 2, "loss": 2.0 - 0.1 * seed}, {"step": 2, "eval_loss": 2.5}]
    (tdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if bleu is not None:
        (tdir / "eval_validation").mkdir()
        metrics = {"BLEU": bleu, "NIST": 10 * bleu, "METEOR": None}
        (tdir / "eval_validation" / "results.json").write_text(json.dumps({"metrics": metrics}))
    if failed:
        (tdir / "FAILED").write_text(f"step: evaluate\nerror: {failed}\n")
    return name


def test_report_tables_and_plots(tmp_path):
    root = tmp_path / "pl"
    bleus = {(5, "none"): [0.50, 0.60], (5, "mlp"): [0.70, 0.80], (10, "none"): [0.55, 0.65]}
    for (length, reparam), values in bleus.items():
        for seed, bleu in enumerate(values):
            _write_trial(root, length, reparam, seed, bleu)
    _write_trial(root, 10, "mlp", 0, 0.75)
    bad = _write_trial(root, 10, "mlp", 1, failed="RuntimeError: out of memory")
    interrupted = root / "prefix.length=20,prefix.reparam=none,seed=0"
    interrupted.mkdir()
    (interrupted / "trial.json").write_text(
        json.dumps({"overrides": {"prefix.length": 20, "prefix.reparam": "none", "seed": 0}})
    )
    planned = [  # the launcher's record, in sweep order: reparam none before mlp
        {"name": trial_name(o), "overrides": o}
        for length in (5, 10, 20)
        for reparam in ("none", "mlp")
        for seed in (0, 1)
        for o in [{"prefix.length": length, "prefix.reparam": reparam, "seed": seed}]
        if length != 20 or seed == 0
    ]
    (root / "sweep.json").write_text(json.dumps({"sweep": "pl", "trials": planned}))

    written = write_report(root)

    with open(root / "summary.csv") as f:
        summary = {(r["prefix.length"], r["prefix.reparam"]): r for r in csv.DictReader(f)}
    assert len(summary) == 6
    row = summary[("5", "none")]
    assert float(row["BLEU_mean"]) == pytest.approx(0.55)
    assert float(row["BLEU_std"]) == pytest.approx(statistics.stdev([0.5, 0.6]))
    assert float(row["NIST_mean"]) == pytest.approx(5.5)
    assert float(row["wall_s_mean"]) == pytest.approx(10.5)
    assert float(row["params_trainable_mean"]) == 500 and row["seeds"] == "0 1"
    assert row["METEOR_mean"] == "" and row["METEOR_std"] == ""
    assert float(summary[("5", "mlp")]["BLEU_mean"]) == pytest.approx(0.75)
    partial = summary[("10", "mlp")]  # one finished seed, one failed
    assert partial["trials"] == "2" and partial["finished"] == "1"
    assert float(partial["BLEU_mean"]) == pytest.approx(0.75) and partial["BLEU_std"] == ""
    assert float(partial["eval_loss_mean"]) == pytest.approx(1.5)  # training of both seeds
    assert summary[("20", "mlp")]["trials"] == "1" and summary[("20", "mlp")]["finished"] == "0"

    with open(root / "trials.csv") as f:
        trials = {r["trial"]: r for r in csv.DictReader(f)}
    assert len(trials) == 10
    assert (
        trials[bad]["status"] == "failed" and trials[bad]["error"] == "RuntimeError: out of memory"
    )
    assert trials[interrupted.name]["status"] == "incomplete"
    assert trials["prefix.length=20,prefix.reparam=mlp,seed=0"]["status"] == "missing"

    md = (root / "report.md").read_text()
    assert "| 5 | none | 2/2 | 0.55 ± 0.07071 | 5.5 ± 0.7071 | - |" in md
    assert "| 10 | mlp | 1/2 | 0.75 | 7.5 | - |" in md
    rows = [line.split(" | ")[:2] for line in md.splitlines() if line.startswith("| ")][1:]
    assert rows == [[f"| {n}", r] for n in (5, 10, 20) for r in ("none", "mlp")]
    assert "1,000 (10%)" in md  # trainable params of p=5, mlp
    assert params_cell(134_515_008, 134_515_008) == "134,515,008 (100%)"
    assert params_cell(5760, 134_515_008) == "5,760 (0.00428%)"
    assert f"- `{bad}`: failed: RuntimeError: out of memory" in md
    assert "incomplete" in md and "missing (planned, never started)" in md
    assert "10 trials: 7 finished, 1 failed, 1 incomplete, 1 missing." in md

    for name in ("metric_vs_prefix_length", "train_loss"):
        png = root / f"{name}.png"
        assert written[name] == png
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000
        assert f"![{name}]({name}.png)" in md
    assert read_loss_curve(root / bad / "metrics.jsonl") == [(1, 3.0), (2, 1.9)]


def test_loss_panels_split_by_size_when_colours_run_out(tmp_path):
    def group(n, method):
        curve = [(1, 2.0), (2, 1.0)]
        setting = {"data.train_examples": n, "method": method}
        return {"setting": setting, "trials": [{"loss_curve": curve}]}

    axes = ["data.train_examples", "method"]
    methods = ("prefix", "full", "prompt", "lora")
    few = [group(n, m) for n in (50, 500) for m in methods]  # 8 settings: one panel
    [(title, members)] = loss_panels(few, axes)
    assert title == "" and [c for _, c, _ in members] == list(range(8))
    assert members[5][2] == "data.train_examples=500, method=full"

    # 13 settings, the baseline listed first: one panel per size, then the baseline's.
    many = [group(None, "zero_shot")] + [group(n, m) for n in (500, 50, 200) for m in methods]
    panels = loss_panels(many, axes)
    assert [t for t, _ in panels] == [
        "data.train_examples=50",
        "data.train_examples=200",
        "data.train_examples=500",
        "no data.train_examples",
    ]
    # a colour per method in every panel, as the metric plot colours them; the baseline next
    expected = [(f"method={m}", c) for c, m in enumerate(methods)]
    for _, members in panels[:3]:
        assert [(label, c) for _, c, label in members] == expected
    assert panels[3][1] == [(0, 4, "method=zero_shot")]
    assert [i for i, _, _ in panels[0][1]] == [5, 6, 7, 8]  # the 50-example groups

    # 3 methods x 6 rates (a rate sweep): a panel per method beats one per rate, and the
    # colours follow the rates in numeric order whatever order the trials came in
    rates = (0.3, 1e-4, 3e-3, 1e-2, 1e-3, 3e-2)
    axes_lr = ["method", "optim.learning_rate"]
    sweep = [
        {"setting": {"method": m, "optim.learning_rate": r}, "trials": []}
        for m in methods[:3]
        for r in rates
    ]
    panels = loss_panels(sweep, axes_lr)
    assert [t for t, _ in panels] == ["method=prefix", "method=full", "method=prompt"]
    colours = {label: c for _, members in panels for _, c, label in members}
    assert sorted(colours, key=colours.get) == [
        f"optim.learning_rate={format_value(r)}" for r in sorted(rates)
    ]

    # 11 rates x 11 methods: neither split fits the colours, so one unlabelled panel
    grid = [
        {"setting": {"method": f"m{m}", "optim.learning_rate": 10.0**-r}, "trials": []}
        for m in range(11)
        for r in range(11)
    ]
    panels = loss_panels(grid, axes_lr)
    assert len(panels) == 1 and panels[0][0] == "" and len(panels[0][1]) == 121

    path = tmp_path / "loss.png"
    assert plot_train_loss(many, axes, path, "t")
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_report_without_numeric_axis_draws_bars_and_cli(tmp_path, capsys):
    root = tmp_path / "method"
    for method, bleu in (("prefix", 0.6), ("lora", 0.65)):
        tdir = root / f"method={method},seed=0"
        (tdir / "eval_validation").mkdir(parents=True)
        (tdir / "trial.json").write_text(json.dumps({"overrides": {"method": method, "seed": 0}}))
        results = {"metrics": {"BLEU": bleu}}
        (tdir / "eval_validation" / "results.json").write_text(json.dumps(results))
    out = tmp_path / "out"
    assert report_cli.main([str(root), "--out", str(out)]) == 0
    assert "| lora | 1/1 | 0.65 |" in capsys.readouterr().out
    assert (out / "metric_by_setting.png").read_bytes().startswith(PNG_MAGIC)
    assert not (out / "train_loss.png").exists()  # no metrics.jsonl: no curves
    with pytest.raises(SystemExit):
        report_cli.main([str(tmp_path / "nothing")])


def test_launcher_logs_command_commit_machine_and_step_times(fake):
    assert fake("--only", "length=5,") == 0
    events = [json.loads(x) for x in (fake.root / "launch.jsonl").read_text().splitlines()]
    launch_event = events[0]
    assert launch_event["event"] == "launch"
    assert launch_event["command"].startswith("prefix-jax launch ")
    assert "--only length=5," in launch_event["command"]
    expected = provenance.git_commit(launch.REPO_ROOT)
    assert launch_event["commit"] == expected["commit"]
    assert launch_event["dirty"] == expected["dirty"]
    assert launch_event["machine"]["cpus"] == os.cpu_count()
    assert launch_event["machine"]["packages"]["jax"] == importlib.metadata.version("jax")
    steps = [(e["step"], e["seconds"]) for e in events if e["event"] == "step"]
    assert [s for s, _ in steps] == ["train", "evaluate"]
    assert all(seconds >= 0 for _, seconds in steps)


def test_git_commit_outside_a_repository_is_unknown(tmp_path):
    assert provenance.git_commit(tmp_path) == {"commit": None, "dirty": None}


def test_report_says_which_commit_machine_and_time_made_each_trial(tmp_path):
    root = tmp_path / "pl"
    old = _write_trial(root, 1, "mlp", 0, 0.5)  # started before the launcher logged commits
    results = {"metrics": {"BLEU": 0.5}, "decode_s": 2.0}
    (root / old / "eval_validation" / "results.json").write_text(json.dumps(results))
    resumed = _write_trial(root, 5, "mlp", 0, 0.6)
    fresh = _write_trial(root, 10, "mlp", 0, 0.7)
    summary = json.loads((root / fresh / "train_summary.json").read_text())
    (root / fresh / "train_summary.json").write_text(
        json.dumps({**summary, "platform": "gpu", "device_kind": "NVIDIA H100 80GB HBM3"})
    )
    machine = {"cpus": 2, "cpu": "AMD EPYC", "packages": {"jax": "0.10.2"}}
    events = [
        {"trial": old, "event": "started"},
        {"trial": old, "event": "finished"},
        {
            "event": "launch",
            "command": "prefix-jax launch pl --workdir r",
            "commit": "a" * 40,
            "dirty": False,
            "machine": machine,
        },
        {"trial": resumed, "event": "started"},
        {
            "event": "launch",
            "command": "prefix-jax launch pl --workdir r",
            "commit": "b" * 40,
            "dirty": True,
            "machine": machine,
        },
        {"trial": resumed, "event": "started", "resumed": True},
        {"trial": resumed, "event": "step", "step": "train", "seconds": 100.0},
        {"trial": resumed, "event": "step", "step": "evaluate", "seconds": 20.0},
        {"trial": fresh, "event": "started"},
        {"trial": fresh, "event": "step", "step": "train", "seconds": 40.0},
        {"trial": fresh, "event": "step", "step": "evaluate", "seconds": 5.0},
        {  # a relaunch that finds every trial finished: it starts none
            "event": "launch",
            "command": "prefix-jax launch pl --workdir r",
            "commit": "c" * 40,
            "dirty": False,
            "machine": machine,
        },
        {"trial": fresh, "event": "skipped", "state": "finished"},
    ]
    lines = [json.dumps(e) for e in events]
    (root / "launch.jsonl").write_text("\n".join(lines) + '\n{"cut sh')

    write_report(root, command="prefix-jax report pl")

    with open(root / "trials.csv") as f:
        trials = {r["trial"]: r for r in csv.DictReader(f)}
    assert trials[old]["commit"] == "not recorded"
    assert trials[resumed]["commit"] == "aaaaaaaaaaaa bbbbbbbbbbbb+dirty"
    assert trials[fresh]["commit"] == "bbbbbbbbbbbb+dirty"
    assert float(trials[resumed]["compute_s"]) == 120.0
    wall_plus_decode = float(trials[old]["wall_s"]) + float(trials[old]["decode_s"])
    assert float(trials[old]["compute_s"]) == pytest.approx(wall_plus_decode)
    assert trials[fresh]["accelerator"] == "NVIDIA H100 80GB HBM3"

    md = (root / "report.md").read_text()
    section = md[md.index("## How this was made") :]
    assert (
        "- Launched (2 launches that ran trials, 1 more that started none) with:\n"
        "  - `prefix-jax launch pl --workdir r`" in section
    )
    assert "- Report: `prefix-jax report pl`" in section
    assert "not recorded 1, `aaaaaaaaaaaa` 1, `bbbbbbbbbbbb+dirty` 2" in section
    assert "- Machine: 2 x AMD EPYC, jax 0.10.2" in section
    assert "- Devices trained on: NVIDIA H100 80GB HBM3 (1 trial)" in section
    total = (120 + 45 + wall_plus_decode) / 3600
    assert f"- Compute: {total:.2f} h over 3 finished trials" in section


def test_launch_then_report_end_to_end(fake):
    assert fake() == 0
    written = write_report(fake.root)
    with open(written["summary_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["prefix.length"] for r in rows] == ["1", "5", "10", "20"]
    assert [float(r["BLEU_mean"]) for r in rows] == pytest.approx([0.01, 0.05, 0.10, 0.20])
    assert written["metric_vs_prefix_length"].read_bytes().startswith(PNG_MAGIC)


def test_a_sweep_goes_on_elsewhere_from_its_archive(fake, tmp_path):
    """The committed archive is enough to continue a sweep on a fresh machine: unpacked and
    relaunched, finished trials are skipped, only the rest run, and the log keeps the
    earlier launches for the report's provenance."""
    assert fake("--only", r"length=(1|5),") == 0
    assert len(fake.calls()) == 4
    archive.archive(fake.root, tmp_path / "trials.tar.gz")
    with tarfile.open(tmp_path / "trials.tar.gz") as tar:
        tar.extractall(tmp_path / "fresh", filter="data")
    unpacked = tmp_path / "fresh" / fake.root.name

    assert fake(workdir=unpacked) == 0
    assert [(c["trial"], c["command"]) for c in fake.calls()] == [
        (_trial(n), command) for n in (10, 20) for command in ("train", "evaluate")
    ]
    events = [json.loads(x) for x in (unpacked / "launch.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("launch") == 2
    with open(write_report(unpacked)["summary_csv"]) as f:
        assert [r["finished"] for r in csv.DictReader(f)] == ["1"] * 4


def test_baselines_without_the_x_key_are_horizontal_lines(tmp_path, monkeypatch):
    import matplotlib.axes

    root = tmp_path / "mixed"
    trials = [
        ({"method": "prefix", "prefix.length": 1, "seed": 0}, 0.4),
        ({"method": "prefix", "prefix.length": 5, "seed": 0}, 0.6),
        ({"method": "lora", "seed": 0}, 0.65),
    ]
    for overrides, bleu in trials:
        tdir = root / trial_name(overrides)
        (tdir / "eval_validation").mkdir(parents=True)
        (tdir / "trial.json").write_text(json.dumps({"overrides": overrides}))
        results = {"metrics": {"BLEU": bleu}}
        (tdir / "eval_validation" / "results.json").write_text(json.dumps(results))
    drawn = []
    axhline = matplotlib.axes.Axes.axhline

    def record(self, y=0, *args, **kw):
        drawn.append((y, kw.get("label")))
        return axhline(self, y, *args, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", record)
    written = write_report(root)
    assert written["metric_vs_prefix_length"].read_bytes().startswith(PNG_MAGIC)
    assert drawn == [(pytest.approx(0.65), "method=lora")]


# ------------------------------------------------- report: bootstrap interval, LR selection

WORDS = "the a cheap pub near river centre has food rated high low family friendly".split()


def _corpus(n: int, seed: int = 0, noise: float = 0.3) -> tuple[list, list, list]:
    """n sources with 3 references each and a hypothesis that is a noisy copy of one; the
    references depend on `seed` only, the hypotheses on (`seed`, `noise`)."""
    import random

    rng, noisy = random.Random(seed), random.Random(f"{seed}-{noise}")
    sources, hyps, refs = [], [], []
    for i in range(n):
        base = [rng.choice(WORDS) for _ in range(rng.randint(6, 14))]
        references = [" ".join(w if rng.random() > 0.2 else rng.choice(WORDS) for w in base)]
        references += [" ".join(base), " ".join(reversed(base))]
        hyp = [w if noisy.random() > noise * (1 + i % 3) / 2 else noisy.choice(WORDS) for w in base]
        sources.append(f"name : S{i}")
        hyps.append(" ".join(hyp))
        refs.append(references)
    return sources, hyps, refs


def _run(sources, hyps, refs):
    from prefix_jax.metrics.bleu import bleu_segment_stats

    return list(sources), np.asarray(bleu_segment_stats(hyps, refs), dtype=np.float64)


def test_bleu_of_sums_equals_the_metric_including_smoothing():
    from prefix_jax.metrics import bleu
    from prefix_jax.metrics.bleu import bleu_from_stats, bleu_segment_stats

    cases = [
        (["a b c d e"], [["a b c d e"]]),
        (["a x b y"], [["a b c d"]]),  # no 3- or 4-gram match: smoothed orders
        (["a"], [["a b"]]),  # no 2-grams at all: precision 1 for those orders
        ([""], [["a b"]]),  # empty output
        _corpus(20)[1:],
    ]
    for hyps, refs in cases:
        sums = np.asarray(bleu_segment_stats(hyps, refs)).sum(axis=0)
        assert bleu_of_sums(sums)[0] == pytest.approx(bleu(hyps, refs), abs=1e-9)
        assert bleu_from_stats(list(sums)) == pytest.approx(bleu(hyps, refs), abs=1e-9)


def test_bootstrap_equals_brute_force_on_a_tiny_corpus():
    from prefix_jax.metrics import bleu

    sources, hyps, refs = _corpus(7)
    point, low, high = bootstrap.bootstrap_bleu([_run(sources, hyps, refs)], samples=200, seed=3)
    counts = bootstrap.resample_counts(7, 200, np.random.default_rng(3))
    brute = []
    for row in counts:  # rebuild each resampled corpus and score it from the strings
        picked = [i for i in range(7) for _ in range(row[i])]
        brute.append(bleu([hyps[i] for i in picked], [refs[i] for i in picked]))
    assert point == pytest.approx(bleu(hyps, refs))
    assert (low, high) == pytest.approx(tuple(np.percentile(brute, [2.5, 97.5])))


def test_bootstrap_contains_the_point_narrows_with_sources_and_is_deterministic():
    import time

    sources, hyps, refs = _corpus(400)
    widths = []
    for n in (25, 100, 400):
        run = _run(sources[:n], hyps[:n], refs[:n])
        point, low, high = bootstrap.bootstrap_bleu([run])
        assert low < point < high
        widths.append(high - low)
        assert bootstrap.bootstrap_bleu([run]) == (point, low, high)
    assert widths[0] > widths[1] > widths[2] > 0
    assert widths[0] / widths[2] > 2.5  # ~ sqrt(16) = 4
    run = _run(sources[:300], hyps[:300], refs[:300])
    start = time.perf_counter()
    bootstrap.bootstrap_bleu([run, run, run])  # 3 seeds x 300 sources x 1000 resamples
    assert time.perf_counter() - start < 10  # well under a second when the CPU is free


def test_bootstrap_pools_seeds_paired_by_source():
    sources, hyps, refs = _corpus(60)
    a = _run(sources, hyps, refs)
    other = _corpus(60, seed=0, noise=0.6)[1]
    b = _run(sources, other, refs)
    shuffled = np.random.default_rng(0).permutation(60)
    b_shuffled = ([sources[i] for i in shuffled], b[1][shuffled])
    pooled = bootstrap.bootstrap_bleu([a, b])
    assert bootstrap.bootstrap_bleu([a, b_shuffled]) == pytest.approx(pooled)  # rows by source
    point_a, point_b = bootstrap.bootstrap_bleu([a])[0], bootstrap.bootstrap_bleu([b])[0]
    assert pooled[0] == pytest.approx((point_a + point_b) / 2)
    assert pooled[1] < pooled[0] < pooled[2]
    # Different source sets: resampled independently, still a valid interval.
    c = _run(sources[:30], hyps[:30], refs[:30])
    point, low, high = bootstrap.bootstrap_bleu([a, c])
    assert low < point < high


def _write_predictions(tdir: Path, sources, hyps, refs) -> float:
    from prefix_jax.metrics import bleu

    out = tdir / "eval_validation"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.jsonl", "w") as f:
        for s, h, r in zip(sources, hyps, refs, strict=True):
            f.write(json.dumps({"source": s, "prediction": h, "references": r}) + "\n")
    score = bleu(hyps, refs)
    (out / "results.json").write_text(json.dumps({"metrics": {"BLEU": score}}))
    return score


def test_report_shows_bootstrap_intervals_and_seed_points(tmp_path, monkeypatch):
    import matplotlib.axes

    root = tmp_path / "pl"
    sources, _, refs = _corpus(80)
    scores = {}
    for length, noise in ((1, 0.6), (5, 0.3)):
        for seed in (0, 1):
            name = _write_trial(root, length, "mlp", seed, loss=1.0)
            hyps = _corpus(80, seed=0, noise=noise + 0.05 * seed)[1]
            scores[length, seed] = _write_predictions(root / name, sources, hyps, refs)
    scattered = []
    scatter = matplotlib.axes.Axes.scatter

    def record(self, x, y, *args, **kw):
        scattered.append((list(x), list(y)))
        return scatter(self, x, y, *args, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", record)
    written = write_report(root)

    with open(root / "summary.csv") as f:
        summary = {r["prefix.length"]: r for r in csv.DictReader(f)}
    for length in (1, 5):
        row = summary[str(length)]
        mean = float(row["BLEU_mean"])
        assert mean == pytest.approx((scores[length, 0] + scores[length, 1]) / 2)
        assert float(row["BLEU_ci_low"]) < mean < float(row["BLEU_ci_high"])
    with open(root / "trials.csv") as f:
        trials = list(csv.DictReader(f))
    for t in trials:
        assert float(t["BLEU_ci_low"]) < float(t["BLEU"]) < float(t["BLEU_ci_high"])
    md = (root / "report.md").read_text()
    assert "| BLEU | BLEU 95% CI |" in md and "percentile bootstrap" in md
    low, high = float(summary["5"]["BLEU_ci_low"]), float(summary["5"]["BLEU_ci_high"])
    assert f"[{low:.4g}, {high:.4g}]" in md
    # Every seed is a point on the plot, at its x.
    points = sorted((x, y) for xs, ys in scattered for x, y in zip(xs, ys, strict=True))
    expected = sorted((n, scores[n, s]) for n in (1, 5) for s in (0, 1))
    assert [x for x, _ in points] == [x for x, _ in expected]
    assert [y for _, y in points] == pytest.approx([y for _, y in expected])
    assert written["metric_vs_prefix_length"].read_bytes().startswith(PNG_MAGIC)
    # No predictions: no interval columns; --bootstrap 0 turns them off.
    write_report(root, tmp_path / "off", bootstrap=0)
    assert "BLEU_ci_low" not in (tmp_path / "off" / "summary.csv").read_text()


def _write_lr_trial(root, method, lr, seed, loss, bleu):
    overrides = {"method": method, "optim.learning_rate": lr, "seed": seed}
    tdir = root / trial_name(overrides)
    (tdir / "eval_validation").mkdir(parents=True)
    (tdir / "trial.json").write_text(json.dumps({"overrides": overrides}))
    (tdir / "train_summary.json").write_text(json.dumps({"eval_loss": loss}))
    results = {"metrics": {"BLEU": bleu}}
    (tdir / "eval_validation" / "results.json").write_text(json.dumps(results))


def test_report_selects_the_learning_rate_per_method_by_validation_loss(tmp_path, capsys):
    root = tmp_path / "lr"
    losses = {
        ("prefix", 1e-4): (2.0, 2.2),
        ("prefix", 1e-3): (1.5, 1.7),  # best: lowest mean loss, not the best BLEU
        ("prefix", 1e-2): (1.7, 1.6),
        ("lora", 1e-4): (1.9, 1.9),
        ("lora", 1e-3): (1.8, 1.8),  # best, at the edge of the grid
    }
    for (method, lr), pair in losses.items():
        for seed, loss in enumerate(pair):
            _write_lr_trial(root, method, lr, seed, loss, bleu=60 + 100 * lr)
    written = write_report(root)
    with open(written["selection_csv"]) as f:
        rows = {r["setting"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"method=prefix", "method=lora"}
    assert float(rows["method=prefix"]["chosen"]) == 1e-3
    assert float(rows["method=prefix"]["eval_loss"]) == pytest.approx(1.6)
    assert rows["method=prefix"]["edge_of_grid"] == "false"
    assert float(rows["method=lora"]["chosen"]) == 1e-3 and rows["method=lora"]["edge_of_grid"]
    md = (root / "report.md").read_text()
    assert "## `optim.learning_rate` chosen by validation loss" in md
    assert '    "method=prefix": 0.001,' in md and "0.001 (edge of grid)" in md
    assert written["eval_loss_vs_optim_learning_rate"].read_bytes().startswith(PNG_MAGIC)
    assert "metric_vs_optim_learning_rate" in written  # lr varies within a method: an x axis
    assert report_cli.main([str(root), "--select", "", "--out", str(tmp_path / "o")]) == 0
    assert not (tmp_path / "o" / "selection.csv").exists()
    capsys.readouterr()


def test_a_learning_rate_fixed_per_method_is_not_an_x_axis(tmp_path):
    root = tmp_path / "pl"
    mlp = {"method": "prefix", "prefix.reparam": "mlp", "optim.learning_rate": 1e-3}
    for overrides in (  # prefix_length's shape: the rate is fixed by method and reparam
        {**mlp, "prefix.length": 1, "seed": 0},
        {**mlp, "prefix.length": 5, "seed": 0},
        {"method": "prefix", "prefix.reparam": "none", "optim.learning_rate": 0.1, "seed": 0},
        {"method": "prompt", "optim.learning_rate": 0.03, "seed": 0},
        {"method": "lora", "optim.learning_rate": 2e-4, "seed": 0},
    ):
        tdir = root / trial_name(overrides)
        (tdir / "eval_validation").mkdir(parents=True)
        (tdir / "trial.json").write_text(json.dumps({"overrides": overrides}))
        results = {"metrics": {"BLEU": 50.0}}
        (tdir / "eval_validation" / "results.json").write_text(json.dumps(results))
    written = write_report(root)
    assert "metric_vs_prefix_length" in written
    assert "metric_vs_optim_learning_rate" not in written and "selection_csv" not in written


# ------------------------------------------------------------------- study sweeps (issue 16)

STUDIES = ("lr_select", "low_data", "prefix_length")


def _rate_key(overrides: dict) -> str:
    """The `_learning_rates` key a trial's setting belongs to."""
    rates = grid_module(SWEEPS_DIR / "_learning_rates.py")

    method = overrides.get("method", "prefix")
    if method != "prefix":
        return f"method={method}"
    return rates.PREFIX_DIRECT if overrides.get("prefix.reparam") == "none" else rates.PREFIX_MLP


def test_study_sweeps_share_data_budget_and_held_out_set():
    study = grid_module(SWEEPS_DIR / "_study.py")
    CPU_BUDGET, DATA = study.CPU_BUDGET, study.DATA

    for name in STUDIES:
        s = load_sweep(name)
        assert s.name == name and s.config.startswith("configs/e2e.py")
        assert s.base_overrides.items() >= DATA.items()
        assert 150 <= s.base_overrides["max_steps"] <= 300
        assert 2 <= s.base_overrides["decode.beam_size"] <= 5
        assert {k: v for k, v in s.base_overrides.items() if k in CPU_BUDGET} == {
            **CPU_BUDGET,
            **({"decode.beam_size": 2} if name == "lr_select" else {}),
        }
        for trial in s.trials():  # one held-out set: nothing moves the split
            assert not {"data.split_seed", "data.eval_sources"} & trial.overrides.keys()
    assert load_sweep("lr_select").base_overrides["data.tune_sources"] == 50
    assert "data.tune_sources" not in load_sweep("low_data").base_overrides


def test_a_study_using_a_stand_in_rate_says_so(monkeypatch):
    rates = grid_module(SWEEPS_DIR / "_learning_rates.py")

    monkeypatch.setattr(rates, "NOT_CHOSEN", (rates.FULL, rates.PREFIX_DIRECT))
    assert "method=full not chosen by lr_select" in load_sweep("low_data").note
    note = load_sweep("prefix_length").note  # uses the direct prefix, not full fine-tuning
    assert rates.PREFIX_DIRECT in note and rates.FULL not in note
    monkeypatch.setattr(rates, "NOT_CHOSEN", ())
    assert load_sweep("low_data").note == load_sweep("prefix_length").note == ""


def test_study_sweeps_take_their_rates_from_one_module(monkeypatch):
    rates = grid_module(SWEEPS_DIR / "_learning_rates.py")

    for name in ("low_data", "prefix_length"):
        for trial in load_sweep(name).trials():
            rate = trial.overrides["optim.learning_rate"]
            assert rate == rates.LEARNING_RATES[_rate_key(trial.overrides)], trial.name
    monkeypatch.setitem(rates.LEARNING_RATES, rates.LORA, 7e-4)
    monkeypatch.setitem(rates.LEARNING_RATES, rates.PREFIX_DIRECT, 5e-3)
    low = [t.overrides for t in load_sweep("low_data").trials() if t.overrides["method"] == "lora"]
    assert len(low) == 9 and {o["optim.learning_rate"] for o in low} == {7e-4}
    direct = [t.overrides for t in load_sweep("prefix_length").trials()]
    assert {o["optim.learning_rate"] for o in direct if o.get("prefix.reparam") == "none"} == {5e-3}
    # The rate is a trial axis: --set cannot silently replace it.
    with pytest.raises(ValueError, match="sweep's own axis"):
        launch.plan_trials(
            load_sweep("low_data"),
            "w",
            python=["py"],
            global_overrides={"optim.learning_rate": "1"},
        )


def test_study_sweep_grids():
    TEXT_INIT = grid_module(SWEEPS_DIR / "_study.py").TEXT_INIT

    low = [t.overrides for t in load_sweep("low_data").trials()]
    assert sorted({o["data.train_examples"] for o in low}) == [50, 200, 500]
    settings = {(o["method"], o.get("prefix.init")) for o in low}
    assert settings == {
        ("prefix", TEXT_INIT),
        ("prefix", "random"),
        ("full", None),
        ("prompt", None),
        ("lora", None),
    }
    assert {o["seed"] for o in low} == {0, 1, 2} and all(o["lora.seed"] == o["seed"] for o in low)
    length = [t.overrides for t in load_sweep("prefix_length").trials(seeds=[0])]
    assert [o.get("prefix.length") for o in length] == [1, 5, 10, 20, 40, 10, 10, None, None]
    assert [o["method"] for o in length[-2:]] == ["prompt", "lora"]
    assert [(o["prefix.reparam"], o["prefix.init"]) for o in length[:-2]] == [
        *[("mlp", "random")] * 5,
        ("none", "vocab"),
        ("none", TEXT_INIT),
    ]
    lr = [t.overrides for t in load_sweep("lr_select").trials()]
    per_setting = {}
    for o in lr:
        per_setting.setdefault(_rate_key(o), []).append(o["optim.learning_rate"])
    assert all(len(v) >= 3 and len(set(v)) == len(v) for v in per_setting.values())


def test_scaling_a_study_with_set_flags():
    sets = launch_cli.parse_sets(
        ["max_steps=2000", "batch_size=10", "decode.beam_size=5", "data.path=e2e_nlg"]
    )
    plans = launch.plan_trials(
        load_sweep("prefix_length"), "w", python=["py"], global_overrides=sets
    )
    argv = plans[0].steps[0].argv
    assert "--config.max_steps=2000" in argv and "--config.max_steps=200" not in argv
    assert "--config.decode.beam_size=5" in argv and "--config.data.path=e2e_nlg" in argv


def test_lr_select_report_labels_are_the_learning_rate_keys(tmp_path):
    """What the report chooses from lr_select's trials can be pasted over LEARNING_RATES."""
    rates = grid_module(SWEEPS_DIR / "_learning_rates.py")

    root = tmp_path / "lr"
    plans = launch.plan_trials(load_sweep("lr_select"), root, python=["py"])
    for i, plan in enumerate(plans):
        plan.dir.mkdir(parents=True)
        (plan.dir / "trial.json").write_text(json.dumps(plan.record))
        loss = abs(plan.trial.overrides["optim.learning_rate"] - 1e-3) + i * 1e-6
        (plan.dir / "train_summary.json").write_text(json.dumps({"eval_loss": loss}))
    written = write_report(root)
    with open(written["selection_csv"]) as f:
        chosen = {r["setting"]: float(r["chosen"]) for r in csv.DictReader(f)}
    assert set(chosen) == set(rates.LEARNING_RATES)
    assert chosen[rates.PREFIX_MLP] == 1e-3 and chosen[rates.PROMPT] == 1e-2
