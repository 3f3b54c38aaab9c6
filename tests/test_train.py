"""Tests for prefix_jax.train.loop and `prefix-jax train`: outputs, exact resumption (exception
and SIGKILL), the NaN guard, and config errors.

Everything runs on a tiny random Llama (vocab 257 = bytes + eos) with a byte-level tokenizer
and a 26-line jsonl task: 4 held-out sources leave 22 training examples, so an epoch is 6
batches of 4 (the last one padded) and a 12-step run crosses one epoch boundary.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import MAX_STEPS, OVERRIDES, make_config

from prefix_jax.config.upgrade import load_run_config
from prefix_jax.methods import registry
from prefix_jax.methods.prefix import artifact as export
from prefix_jax.train import assemble as experiment
from prefix_jax.train import step as train_step
from prefix_jax.train.checkpoint import Checkpointer
from prefix_jax.train.loop import NonFiniteLossError, train
from prefix_jax.train.step import OptimConfig, Trainer, make_optimizer

REPO = Path(__file__).parents[1]
STEPS_PER_EPOCH = 6  # ceil(22 / 4)


# --------------------------------------------------------------------------- fixtures


def cli_args(tiny: dict[str, Path], workdir: Path, **overrides) -> list[str]:
    settings = {**OVERRIDES, "model": tiny["model"], "data.path": tiny["data"], **overrides}
    flags = [f"--config.{key}={_flag_value(value)}" for key, value in settings.items()]
    config_file = "configs/e2e.py:local"  # relative to the repository root (cwd)
    command = [sys.executable, "-m", "prefix_jax.cli", "train", "--config", config_file]
    return command + ["--workdir", str(workdir), *flags]


def _flag_value(value) -> str:
    if isinstance(value, tuple):
        return "(" + ",".join(map(str, value)) + ")"
    return str(value)


def fresh_trainer(config: ml_collections.ConfigDict):
    """(Trainer with the initial state, base model) built as `train` builds them."""
    model, tokenizer = experiment.load_model(config)
    lm, trainable, _ = registry.get(config.method).create(model, config, tokenizer)
    optim = OptimConfig(total_steps=config.max_steps, **config.optim.to_dict())
    return Trainer(lm, make_optimizer(optim, trainable), trainable), model


def exported_table(workdir: Path) -> np.ndarray:
    return export.load(workdir / "export").table


def restore_latest(config: ml_collections.ConfigDict, workdir: Path):
    """(step, restored state, position, trainer, model) of the workdir's latest checkpoint."""
    trainer, model = fresh_trainer(config)
    checkpoints = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    try:
        step = checkpoints.latest_step()
        restored = checkpoints.restore_latest(trainer.state)
    finally:
        checkpoints.close()
    assert restored is not None, f"no checkpoint in {workdir}"
    state, position = restored
    return step, state, position, trainer, model


def checkpoint_steps(workdir: Path) -> list[int]:
    """Finished checkpoint steps on disk (orbax renames a step's directory when complete)."""
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if re.fullmatch(r"\d+", p.name))


def all_finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """An uninterrupted in-process run: (workdir, config, summary, exported table)."""
    workdir = tmp_path_factory.mktemp("reference")
    config = make_config(tiny)
    summary = train(config, workdir)
    return workdir, config, summary, exported_table(workdir)


class Crash(Exception):
    """Stands in for a crash of the training process."""


def count_steps(monkeypatch, crash_before: int | None = None) -> list[int]:
    """Patch `Trainer.step` to count its calls and raise Crash on call `crash_before`."""
    calls = [0]
    original = Trainer.step

    def step(self, batch, key):
        calls[0] += 1
        if calls[0] == crash_before:
            raise Crash(f"crash before step call {calls[0]}")
        return original(self, batch, key)

    monkeypatch.setattr(Trainer, "step", step)
    return calls


# --------------------------------------------------------------------------- uninterrupted run


def read_scalars(events_dir: Path) -> dict[str, list[int]]:
    """{tag: [steps]} of the scalar summaries in TensorBoard event files (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[int]] = {}
    for path in events_dir.glob("events.out.tfevents.*"):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append(event.step)
    return scalars


def test_uninterrupted_run_writes_all_outputs(tiny, reference):
    workdir, config, summary, table = reference

    assert json.loads((workdir / "config.json").read_text()) == json.loads(
        config.to_json_best_effort()
    )

    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 0 and lines[0]["trainable_params"] > 0
    train_lines = [line for line in lines if "loss" in line]
    assert [line["step"] for line in train_lines] == list(range(2, MAX_STEPS + 1, 2))
    for line in train_lines:
        assert np.isfinite(line["loss"]) and line["tokens_per_s"] > 0 and line["tokens"] > 0
    # The logged rate is schedule(step), the rate of the next update (as HF logs it): the
    # peak after the 2 warmup steps, 0 at the end.
    assert train_lines[0]["learning_rate"] == pytest.approx(0.01)
    assert train_lines[-1]["learning_rate"] == 0.0
    assert lines[-1] == {"step": MAX_STEPS, "eval_loss": summary["eval_loss"]}

    scalars = read_scalars(workdir / "tb")
    assert scalars["loss"] == list(range(2, MAX_STEPS + 1, 2))
    assert {"tokens_per_s", "learning_rate", "grad_norm", "eval_loss"} <= set(scalars)

    # keep_checkpoints=2 of the saves at 3, 6, 9, 12.
    assert checkpoint_steps(workdir) == [9, 12]

    saved = json.loads((workdir / "train_summary.json").read_text())
    assert saved == summary
    assert summary["steps"] == MAX_STEPS
    assert summary["train_examples"] == 22 and summary["eval_examples"] == 4
    assert np.isfinite(summary["final_train_loss"]) and np.isfinite(summary["eval_loss"])
    assert summary["final_train_loss"] == train_lines[-1]["loss"]

    # The export loads against the model, equals the final checkpoint's collapsed prefix,
    # and differs from the initial prefix (training moved it).
    step, state, position, trainer, model = restore_latest(config, workdir)
    loaded = export.load(workdir / "export", model)
    assert loaded.table.shape == (3, 2 * 2 * 2 * 8)  # [p, layers * 2 * kv_heads * head_dim]
    assert loaded.training["steps"] == MAX_STEPS
    assert (step, int(state.step)) == (MAX_STEPS, MAX_STEPS)
    assert position == {"epoch": 1, "step_in_epoch": MAX_STEPS - STEPS_PER_EPOCH}
    final = export.collapse(trainer.model(state).prefix, model).table
    np.testing.assert_array_equal(loaded.table, final)
    initial = export.collapse(trainer.model().prefix, model).table
    assert np.abs(loaded.table - initial).max() > 1e-3
    # Prefix dropout is active in training (so resumption must replay its keys exactly).
    prefix = trainer.model(state).prefix
    a, b = prefix(jax.random.key(1)).keys, prefix(jax.random.key(2)).keys
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(prefix().keys, prefix().keys)
    # positions="from_zero" cannot round-trip through PEFT, so no PEFT export is written.
    assert not (workdir / "export_peft").exists()


# --------------------------------------------------------------------------- resumption


@pytest.mark.parametrize(
    ("crash_after", "resumed_from"),
    [(6, 6), (5, 3)],
    ids=["right_after_checkpoint_at_epoch_end", "between_checkpoints"],
)
def test_resume_after_crash_is_bitwise_exact(
    tiny, reference, tmp_path, monkeypatch, crash_after, resumed_from
):
    config = make_config(tiny)
    count_steps(monkeypatch, crash_before=crash_after + 1)
    with pytest.raises(Crash):
        train(config, tmp_path)
    assert checkpoint_steps(tmp_path)[-1] == resumed_from
    assert not (tmp_path / "export").exists()

    calls = count_steps(monkeypatch)
    summary = train(make_config(tiny), tmp_path)
    assert calls[0] == MAX_STEPS - resumed_from, "the rerun did not resume from the checkpoint"
    assert summary["steps"] == MAX_STEPS
    np.testing.assert_array_equal(exported_table(tmp_path), reference[3])
    assert summary["eval_loss"] == reference[2]["eval_loss"]


def test_rerun_of_finished_run_trains_no_more(tiny, reference, tmp_path, monkeypatch):
    """A finished workdir reruns to the same export without taking a step."""
    import shutil

    workdir = tmp_path / "copy"
    shutil.copytree(reference[0], workdir)
    calls = count_steps(monkeypatch)
    summary = train(make_config(tiny), workdir)
    assert calls[0] == 0
    assert summary["steps"] == MAX_STEPS
    np.testing.assert_array_equal(exported_table(workdir), reference[3])


@pytest.mark.slow  # 30 s; the exception-crash resume test above stays in the default run
def test_sigkill_at_random_moment_then_restart_is_bitwise_exact(tiny, reference, tmp_path):
    """The CLI, killed with SIGKILL mid-run, restarts to the uninterrupted result.

    It checkpoints every step (checkpoint_every and log_every do not change the training
    math), so a kill likely lands while an asynchronous save or deletion is in flight.
    """
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    kill_at = rng.randint(1, MAX_STEPS - 3)
    jitter = rng.uniform(0.0, 0.05)
    context = f"(random seed {seed}: kill after checkpoint {kill_at} + {jitter:.3f}s)"
    workdir = tmp_path / "run"
    command = cli_args(tiny, workdir, checkpoint_every=1, log_every=1)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # with the suite's compilation cache

    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 300
            while not checkpoint_steps(workdir) or checkpoint_steps(workdir)[-1] < kill_at:
                if process.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.005)
            time.sleep(jitter)
            finished = process.poll()
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait()
    tail = (tmp_path / "killed.log").read_text()[-3000:]
    assert finished is None, f"the run ended (rc {finished}) before it was killed {context}\n{tail}"
    assert process.returncode == -signal.SIGKILL
    assert not (workdir / "export").exists(), context

    # The latest checkpoint left by the kill restores completely and consistently.
    config = make_config(tiny, checkpoint_every=1, log_every=1)
    step, state, position, _, _ = restore_latest(config, workdir)
    assert step >= kill_at and int(state.step) == step, context
    assert position["epoch"] * STEPS_PER_EPOCH + position["step_in_epoch"] == step, context
    assert all_finite(state.params), context

    restarted = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert restarted.returncode == 0, f"{context}\n{restarted.stderr[-3000:]}"
    assert f"resumed from step {step}" in restarted.stderr, context
    summary = json.loads((workdir / "train_summary.json").read_text())
    assert summary["steps"] == MAX_STEPS
    np.testing.assert_array_equal(exported_table(workdir), reference[3], err_msg=context)


# --------------------------------------------------------------------------- NaN guard


def poison_step(monkeypatch, at_step: int, kind: str) -> None:
    """Make step `at_step` non-finite: `kind="loss"` gives a NaN loss (and NaN gradients);
    `kind="gradient"` keeps the loss finite but makes the gradients NaN, as an overflow in
    the backward pass would. Other steps compute exactly the normal loss."""
    calls = [0]
    code = {"loss": 1, "gradient": 2}[kind]
    original_step = Trainer.step

    def step(self, batch, key):
        calls[0] += 1
        poison = jnp.int32(code if calls[0] == at_step else 0)
        return original_step(self, {**batch, "poison": poison}, key)

    def loss(model, batch, dropout_key):
        loss, count = train_step.lm_loss(
            model(batch["tokens"], batch["attention_mask"], dropout_key=dropout_key)[0],
            batch["tokens"],
            batch["loss_mask"],
        )
        poison = batch.get("poison")
        if poison is None:  # evaluation batches
            return loss, count
        loss = loss * jnp.where(poison == 1, jnp.nan, 1.0)
        # d/dx sqrt(|x|) at x = 0 is not finite; the double `where` keeps other steps clean.
        table = model.prefix.table()
        zero = jnp.where(poison == 2, table - jax.lax.stop_gradient(table), 1.0)
        loss = loss + jnp.where(poison == 2, jnp.sqrt(jnp.abs(zero)).sum(), 0.0)
        return loss, count

    monkeypatch.setattr(Trainer, "step", step)
    monkeypatch.setattr(train_step, "_default_loss", loss)


@pytest.mark.parametrize(
    ("kind", "bad_step"),
    [("loss", 5), ("gradient", 6)],
    ids=["nan_loss_between_checkpoints", "nan_gradient_with_finite_loss_at_checkpoint"],
)
def test_nonfinite_step_raises_and_keeps_last_good_checkpoint(
    tiny, tmp_path, monkeypatch, kind, bad_step
):
    poison_step(monkeypatch, bad_step, kind)
    with pytest.raises(NonFiniteLossError) as error:
        train(make_config(tiny), tmp_path)
    message = str(error.value)
    assert f"at step {bad_step}" in message
    assert "last good checkpoint (step 3)" in message

    assert checkpoint_steps(tmp_path)[-1] == 3
    step, state, position, _, _ = restore_latest(make_config(tiny), tmp_path)
    assert step == 3 and int(state.step) == 3
    assert position == {"epoch": 0, "step_in_epoch": 3}
    assert all_finite(state.params) and all_finite(state.opt_state)
    assert not (tmp_path / "export").exists()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(line["step"] < bad_step for line in lines if "loss" in line)


def test_nonfinite_before_any_checkpoint_says_so(tiny, tmp_path, monkeypatch):
    poison_step(monkeypatch, 1, "loss")
    with pytest.raises(NonFiniteLossError, match="at step 1 .*no checkpoint had been saved"):
        train(make_config(tiny, log_every=1), tmp_path)
    assert checkpoint_steps(tmp_path) == []


# --------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"method": "adapter"},
            r"unknown method 'adapter'; known: prefix, prompt, lora, full, ln_tuning",
        ),
        ({"prefix__lenght": 5}, r"unknown config.prefix fields: \['lenght'\]"),
        ({"dtype": "fp16"}, r"unknown dtype 'fp16'; known: float32, bfloat16, float16"),
        ({"param_dtype": "float64"}, r"unknown dtype 'float64'"),
        ({"prefix__reparam": "lstm"}, r"prefix reparam must be one of"),
    ],
    ids=["method", "prefix_field", "dtype", "param_dtype", "prefix_value"],
)
def test_config_errors_are_clear(tiny, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train(make_config(tiny, **overrides), tmp_path)
    assert checkpoint_steps(tmp_path) == []


def test_loss_at_score_positions_equals_loss_over_all_logits():
    """Unembedding only the scored positions gives the full loss, its count and gradient."""
    rng = np.random.default_rng(0)
    b, t, d, vocab, width = 4, 16, 8, 50, 12
    tokens = jnp.asarray(rng.integers(0, vocab, (b, t)), jnp.int32)
    starts, ends = [3, 1, 6, 0], [9, 12, 10, 0]  # the last row is padding: nothing scored
    loss_mask = np.zeros((b, t), np.int32)
    positions = np.full((b, width), -1, np.int32)
    for row, (start, end) in enumerate(zip(starts, ends, strict=True)):
        loss_mask[row, start:end] = 1
        scored = np.arange(max(start, 1) - 1, end - 1)
        positions[row, : len(scored)] = scored
    batch = {
        "tokens": tokens,
        "loss_mask": jnp.asarray(loss_mask),
        "score_positions": jnp.asarray(positions),
    }
    w = jnp.asarray(rng.normal(size=(d, vocab)), jnp.float32)
    hidden = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)

    def unembed(h):
        return h @ w

    def full(h):
        return train_step.lm_loss(unembed(h), tokens, batch["loss_mask"])

    def at_positions(h):
        return train_step.lm_loss_at(unembed, h, batch)

    (full_loss, full_count), full_grad = jax.value_and_grad(full, has_aux=True)(hidden)
    (loss, count), grad = jax.value_and_grad(at_positions, has_aux=True)(hidden)
    assert float(count) == float(full_count) == loss_mask[:, 1:].sum()
    np.testing.assert_allclose(loss, full_loss, rtol=1e-6)
    np.testing.assert_allclose(grad, full_grad, rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(grad[3]).max()) == 0.0  # the padding row gets no gradient


# --------------------------------------------------------------------------- evaluate --data


def _no_pycocoevalcap(monkeypatch):
    """Hide any installed pycocoevalcap from the METEOR jar finder."""
    import importlib

    meteor_module = importlib.import_module("prefix_jax.metrics.meteor")
    monkeypatch.setattr(meteor_module, "find_spec", lambda name: None)


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def run_config(workdir: Path) -> ml_collections.ConfigDict:
    """The run's config as `evaluate`'s CLI reads it, with a short greedy decode."""
    config = load_run_config(workdir)
    config.decode.update(beam_size=1, max_new_tokens=4)
    return config


def test_evaluate_on_a_data_file(tiny, reference, tmp_path, monkeypatch, capsys):
    """`evaluate --data FILE [--task T]` scores FILE's sources into eval_<stem>/, records the
    file and task, and leaves the run's own eval_validation/ as it was."""
    from prefix_jax.cli.evaluate import main
    from prefix_jax.infer.evaluate import evaluate

    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir, ignore=shutil.ignore_patterns("checkpoints", "tb"))
    quick = ["--workdir", str(workdir), "--beam-size", "1", "--max-new-tokens", "4"]
    main(quick)
    own = _snapshot(workdir / "eval_validation")
    assert json.loads(own["results.json"])["split"] == "validation"

    # An official-test-set-like E2E csv, read with --task e2e (the run's task is jsonl).
    testset = tmp_path / "testset.csv"
    testset.write_text(
        "mr,ref\n"
        '"name[Aromi], food[Thai]",Aromi serves Thai food.\n'
        '"name[Zizzi], food[French]",Zizzi serves French food.\n'
        '"name[Aromi], food[Thai]",Thai food is served at Aromi.\n'
        '"name[Loch], food[French]",Loch serves French food.\n'
    )
    _no_pycocoevalcap(monkeypatch)
    capsys.readouterr()
    main([*quick, "--data", str(testset), "--task", "e2e"])
    captured = capsys.readouterr()
    out = workdir / "eval_testset"
    assert sorted(p.name for p in out.iterdir()) == [
        "predictions.jsonl",
        "predictions.txt",
        "results.json",
    ]
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["source"] for r in records] == [
        "name : Aromi | food : Thai",
        "name : Zizzi | food : French",
        "name : Loch | food : French",
    ]
    assert records[0]["references"] == ["Aromi serves Thai food.", "Thai food is served at Aromi."]
    predictions = (out / "predictions.txt").read_text().splitlines()
    assert predictions == [r["prediction"] for r in records]
    results = json.loads((out / "results.json").read_text())
    assert results["data"] == str(testset.resolve()) and results["task"] == "e2e"
    assert results["split"] is None and results["num_sources"] == 3
    assert set(results["metrics"]) == {"BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"}
    assert results["metrics"]["METEOR"] is None  # absent, never a number
    (note,) = results["notes"]
    assert note.startswith("METEOR absent (no METEOR 1.5 jar")
    assert "`pip install pycocoevalcap`" in note and "default-jre-headless" in note
    assert [line for line in captured.err.splitlines() if "METEOR" in line] == [note]
    assert "| prefix | " in captured.out and " absent |" in captured.out  # the table

    # The run's own task by default; a stem that looks like a split never lands in eval_<split>.
    lookalike = tmp_path / "validation.jsonl"
    lookalike.write_text(
        json.dumps({"source": "name : Mill | food : Thai", "target": "Mill serves Thai food."})
        + "\n"
    )
    results = evaluate(run_config(workdir), workdir, data=lookalike, adapter=None, tag="noprefix")
    assert results["task"] == "jsonl" and results["method"] == "none" and not results["notes"]
    assert results["metrics"].keys() == {"BLEU"}
    records = (workdir / "eval_file_validation_noprefix" / "predictions.jsonl").read_text()
    assert [json.loads(line)["source"] for line in records.splitlines()] == [
        "name : Mill | food : Thai"
    ]
    assert _snapshot(workdir / "eval_validation") == own
    assert sorted(p.name for p in workdir.glob("eval_*")) == [
        "eval_file_validation_noprefix",
        "eval_testset",
        "eval_validation",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "{tmp}/missing.csv"], r"evaluate: .*missing\.csv: no such data file"),
        (
            ["--data", "{tmp}/run.jsonl", "--task", "e2e"],
            r"run\.jsonl:1: missing column 'mr' or 'meaning_representation' \(read as 'e2e'",
        ),
        (
            ["--data", "{tmp}/run.jsonl", "--task", "webnlg"],
            r"run\.jsonl:2: malformed JSON: Extra data \(read as 'webnlg' data\)",
        ),
        (["--data", "{tmp}/bad.jsonl"], r"bad\.jsonl:2: malformed JSON line"),
    ],
    ids=["missing_file", "e2e_reader_on_jsonl", "webnlg_reader_on_jsonl", "bad_line"],
)
def test_evaluate_data_errors_name_the_problem(tiny, tmp_path, monkeypatch, args, message):
    """Bad --data input stops with one message before any model is loaded."""
    from prefix_jax.cli import evaluate as cli
    from prefix_jax.infer import evaluate

    (tmp_path / "config.json").write_text(make_config(tiny).to_json_best_effort())
    shutil.copy(tiny["data"], tmp_path / "run.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"source": "a", "target": "b"}\n{"source": \n')

    def no_model(config):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(evaluate.experiment, "load_model", no_model)
    argv = ["--workdir", str(tmp_path)] + [a.format(tmp=tmp_path) for a in args]
    with pytest.raises(SystemExit, match=message):
        cli.main(argv)


def test_evaluate_cli_rejects_bad_flags(tiny, tmp_path, capsys):
    from prefix_jax.cli.evaluate import main
    from prefix_jax.infer.evaluate import DataError, data_file_groups, output_dir

    base = ["--workdir", str(tmp_path)]
    for args, message in [
        (["--data", "x.csv", "--task", "csv"], "argument --task: invalid choice: 'csv'"),
        (["--task", "e2e"], "--task needs --data"),
        (["--data", "x.csv", "--split", "train"], "argument --split: not allowed with"),
    ]:
        with pytest.raises(SystemExit):
            main(base + args)
        assert message in capsys.readouterr().err
    with pytest.raises(DataError, match="unknown task 'csv'; known tasks: dart, e2e, jsonl"):
        data_file_groups(tiny["data"], "csv")
    assert output_dir(tmp_path, split="train", tag="x") == tmp_path / "eval_train_x"
    assert output_dir(tmp_path, data="a/test.json") == tmp_path / "eval_test"
    assert output_dir(tmp_path, data="train_x.csv") == tmp_path / "eval_file_train_x"
