"""Two processes x 4 CPU devices (jax.distributed on 127.0.0.1, gloo) against one process
with 8 devices: same losses and prefix, and checkpoints that restore across the two."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import make_config

from prefix_jax.methods.prefix import artifact as export
from prefix_jax.train.loop import train

REPO = Path(__file__).resolve().parents[1]
MESH = (("data", 4), ("fsdp", 2), ("tensor", 1))

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 simulated devices")


def config_for(tiny):  # noqa: F811
    config = make_config(tiny, mesh=MESH, batch_size=8, max_steps=6, checkpoint_every=3)
    config.log_every = 1
    config.keep_checkpoints = 3
    return config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(config, workdir: Path, tmp_path: Path) -> list[str]:
    config_file = tmp_path / "config.json"
    config_file.write_text(config.to_json_best_effort())
    port = str(free_port())
    worker = str(REPO / "tests" / "multihost_worker.py")
    procs = [
        subprocess.Popen(
            [sys.executable, worker, str(config_file), str(workdir), port, "2", str(i)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        outputs.append(err)
        summary = json.loads(out.strip().splitlines()[-1])
        assert (summary["devices"], summary["processes"]) == (8, 2)
    return outputs


def losses(workdir: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if "loss" in r}


def drop_after(workdir: Path, step: int) -> None:
    """Forget everything after checkpoint `step`, as if the run had died right after it."""
    for path in (workdir / "checkpoints").iterdir():
        if path.name.isdigit() and int(path.name) > step:
            shutil.rmtree(path)
    shutil.rmtree(workdir / "export")


def test_two_processes_match_one_and_checkpoints_cross_over(tiny, tmp_path, caplog):  # noqa: F811
    config = config_for(tiny)
    single, multi = tmp_path / "single", tmp_path / "multi"

    train(config, single)
    run_two_processes(config, multi, tmp_path)
    one, two = losses(single), losses(multi)
    assert sorted(one) == sorted(two) == list(range(1, 7))
    np.testing.assert_allclose([two[s] for s in one], list(one.values()), atol=1e-5)
    table_one = export.load(single / "export").table
    np.testing.assert_allclose(export.load(multi / "export").table, table_one, atol=1e-5)

    # A checkpoint written by two processes, resumed by one ...
    drop_after(multi, 3)
    with caplog.at_level(logging.INFO, logger="prefix_jax.train.loop"):
        train(config, multi)
    assert "resumed from step 3" in caplog.text
    np.testing.assert_allclose(export.load(multi / "export").table, table_one, atol=1e-5)

    # ... and one written by one process, resumed by two.
    drop_after(single, 3)
    logs = run_two_processes(config, single, tmp_path)
    assert all("resumed from step 3" in log for log in logs), logs[0][-3000:]
    np.testing.assert_allclose(export.load(single / "export").table, table_one, atol=1e-5)
