"""The sweep archive (`prefix-jax archive`): results without checkpoints, reportable unpacked."""

from __future__ import annotations

import json
import os
import tarfile

import pytest

from prefix_jax.cli import archive as archive_cli
from prefix_jax.study import archive
from prefix_jax.study.report import write_report
from prefix_jax.study.sweep import trial_name


def _sweep(root, seeds=(0, 1)) -> None:
    root.mkdir(parents=True)
    (root / "sweep.json").write_text(json.dumps({"sweep": root.name, "trials": []}))
    (root / "launch.jsonl").write_text(json.dumps({"event": "launch", "command": "x"}) + "\n")
    for length in (1, 5):
        for seed in seeds:
            overrides = {"prefix.length": length, "seed": seed}
            tdir = root / trial_name(overrides)
            (tdir / "eval_validation").mkdir(parents=True)
            (tdir / "checkpoints" / "200").mkdir(parents=True)
            (tdir / "checkpoints" / "200" / "state").write_bytes(os.urandom(4096))
            (tdir / "tb").mkdir()
            (tdir / "trial.json").write_text(json.dumps({"overrides": overrides}))
            summary = {"eval_loss": 1.0 + length / 10 + seed, "params_trainable": 10 * length}
            (tdir / "train_summary.json").write_text(json.dumps(summary))
            (tdir / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
            rows = [
                {"source": f"s{i}", "prediction": "a b c d", "references": ["a b c d e"]}
                for i in range(5)
            ]
            predictions = "".join(json.dumps(r) + "\n" for r in rows)
            (tdir / "eval_validation" / "predictions.jsonl").write_text(predictions)
            results = {"metrics": {"BLEU": 50.0 + length + seed}}
            (tdir / "eval_validation" / "results.json").write_text(json.dumps(results))


def test_the_archive_holds_what_the_report_reads_and_nothing_heavier(tmp_path):
    root = tmp_path / "runs" / "pl"
    _sweep(root)
    out = tmp_path / "results" / "trials.tar.gz"
    archive.archive(root, out)
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert "pl/sweep.json" in names and "pl/launch.jsonl" in names
    assert sum(n.endswith("eval_validation/predictions.jsonl") for n in names) == 4
    assert not [n for n in names if "checkpoints" in n or "/tb" in n]
    unpacked = tmp_path / "unpacked"
    with tarfile.open(out) as tar:
        tar.extractall(unpacked, filter="data")
    direct = write_report(root, tmp_path / "direct", bootstrap=50)
    again = write_report(unpacked / "pl", tmp_path / "again", bootstrap=50)
    for key in ("summary_csv", "trials_csv"):
        assert direct[key].read_text() == again[key].read_text()
    assert "BLEU 95% CI" in (tmp_path / "again" / "report.md").read_text()


def test_the_same_results_give_the_same_bytes(tmp_path):
    root = tmp_path / "pl"
    _sweep(root)
    archive.archive(root, tmp_path / "a.tar.gz")
    for path in root.rglob("*.json"):
        os.utime(path, (1e9, 1e9))
    archive.archive(root, tmp_path / "b.tar.gz")
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()


def test_a_directory_without_a_sweep_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no sweep"):
        archive.archive(tmp_path / "empty", tmp_path / "x.tar.gz")
    with pytest.raises(SystemExit):
        archive_cli.main([str(tmp_path / "empty"), str(tmp_path / "x.tar.gz")])
    assert "holds no sweep" in capsys.readouterr().err
    _sweep(tmp_path / "pl")
    assert archive_cli.main([str(tmp_path / "pl"), str(tmp_path / "x.tar.gz")]) == 0
    assert "22 files" in capsys.readouterr().out
