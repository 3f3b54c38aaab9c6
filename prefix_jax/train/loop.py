r"""Train a method (prefix-tuning by default) from an ml_collections config (`train`; the
command line is `prefix-jax train`, `prefix_jax.cli.train`).

Training again in the same workdir resumes from its latest checkpoint, with the
train state and the data position restored, so the result equals an uninterrupted run.
The workdir receives `config.json`, `metrics.jsonl`, TensorBoard events (`tb/`),
`checkpoints/`, the method's exported artifact (`export/`, and `export_peft/` in PEFT's
format; none for full fine-tuning) and `train_summary.json`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tqdm import tqdm

from prefix_jax.data import ShuffledBatches
from prefix_jax.methods import count_params, registry
from prefix_jax.methods.api import Method
from prefix_jax.methods.common import gather
from prefix_jax.models import Transformer
from prefix_jax.models.seq2seq import EncoderDecoder
from prefix_jax.scale import sharding
from prefix_jax.train import assemble as experiment
from prefix_jax.train.checkpoint import Checkpointer
from prefix_jax.train.step import (
    OptimConfig,
    Trainer,
    learning_rate_schedule,
    make_optimizer,
    seq2seq_loss,
)

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradients became NaN or inf; the run stopped without saving the bad
    state (a non-finite gradient poisons the parameters even when the loss was finite)."""


class MetricsWriter:
    """metrics.jsonl (appended, survives restarts) and TensorBoard scalars."""

    def __init__(self, workdir: Path):
        from tensorboardX import SummaryWriter

        self.jsonl = open(workdir / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close()
        self.tb = SummaryWriter(str(workdir / "tb"))

    def write(self, step: int, metrics: dict) -> None:
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self.jsonl.flush()
        for key, value in metrics.items():
            if isinstance(value, int | float):
                self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        self.jsonl.close()
        self.tb.close()


def save_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
    path = workdir / "config.json"
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if path.exists() and json.loads(path.read_text()) != json.loads(text):
        log.warning("config differs from the one this workdir was started with (%s)", path)
        path.with_name("config.previous.json").write_text(path.read_text())
    path.write_text(text)


def evaluate_loss(trainer: Trainer, iterator: ShuffledBatches) -> float:
    """Token-weighted mean loss over one pass of `iterator` (teacher forcing)."""
    total, count = 0.0, 0.0
    for batch in iterator.batches(0):
        loss, n = trainer.eval_loss(to_device(batch, trainer.mesh))
        total += float(sharding.host_value(loss)) * float(sharding.host_value(n))
        count += float(sharding.host_value(n))
    return total / max(count, 1.0)


# Attention masks go to devices as booleans; everything else in a batch as int32.
BOOLEAN_KEYS = ("attention_mask", "source_mask", "target_mask")


def to_device(batch: dict[str, np.ndarray], mesh=None) -> dict[str, jax.Array]:
    """This process's rows -> the (global, sharded when a mesh is given) device batch."""
    device_batch = {
        key: value.astype(bool if key in BOOLEAN_KEYS else np.int32) for key, value in batch.items()
    }
    if mesh is None:
        return {k: jnp.asarray(v) for k, v in device_batch.items()}
    return sharding.global_batch(device_batch, mesh)


def real_tokens(batch: dict[str, np.ndarray]) -> float:
    """Tokens the step reads (padding excluded): sequences, or sources and targets."""
    masks = [k for k in BOOLEAN_KEYS if k in batch]
    return float(sum(batch[k].sum() for k in masks))


class _NullWriter:
    """Stands in for MetricsWriter on processes other than 0."""

    def write(self, step: int, metrics: dict) -> None:
        del step, metrics

    def close(self) -> None:
        pass


def train(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Run (or resume) training; returns the summary also written to train_summary.json."""
    workdir = Path(workdir)
    is_main = jax.process_index() == 0
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    mesh = experiment.make_mesh(config)
    model, tokenizer = experiment.load_model(config, mesh)
    train_examples, eval_examples = experiment.load_splits(config)
    batching = {
        "buckets": tuple(config.data.buckets) if config.data.buckets else None,
        "seed": config.seed,
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
    }
    batches = experiment.batch_iterator(
        experiment.encode_data(config, model, tokenizer, train_examples),
        config.batch_size,
        **batching,
    )
    eval_batches = experiment.batch_iterator(
        experiment.encode_data(config, model, tokenizer, eval_examples),
        config.batch_size,
        **batching,
    )
    total_steps = config.max_steps or config.epochs * batches.steps_per_epoch

    method = registry.get(config.method)
    lm, trainable, init_info = method.create(model, config, tokenizer)
    counts = count_params(lm, trainable)
    optim = OptimConfig(total_steps=total_steps, **config.optim.to_dict())
    rules = experiment.sharding_rules(config)
    loss_fn = seq2seq_loss if experiment.is_encoder_decoder(model) else None
    tx = make_optimizer(optim, trainable)
    trainer = Trainer(lm, tx, trainable, loss_fn=loss_fn, mesh=mesh, rules=rules)
    if is_main:
        save_config(config, workdir)
    schedule = learning_rate_schedule(optim)
    checkpoints = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    restored = checkpoints.restore_latest(trainer.state)
    position = {"epoch": 0, "step_in_epoch": 0}
    if restored is not None:
        trainer.state, position = restored
        log.info(
            "resumed from step %d at %s", int(sharding.host_value(trainer.state.step)), position
        )

    writer = MetricsWriter(workdir) if is_main else _NullWriter()
    key = jax.random.key(config.seed)
    step = int(sharding.host_value(trainer.state.step))
    if step == 0:
        writer.write(0, {"trainable_params": counts["trainable"], **init_info})
    first_nonfinite = jnp.zeros((), jnp.int32)  # first step with a NaN/inf; 0 = none
    last = {"loss": math.nan}
    tokens_seen, window_start = 0.0, time.perf_counter()
    bar = tqdm(
        total=total_steps,
        initial=step,
        desc="train",
        unit="step",
        dynamic_ncols=True,
        disable=not is_main,
    )
    try:
        epoch, start = position["epoch"], position["step_in_epoch"]
        while step < total_steps:
            for batch in batches.batches(epoch, start):
                metrics = trainer.step(to_device(batch, mesh), key)
                step += 1
                first_nonfinite = _track_nonfinite(first_nonfinite, metrics, step)
                start += 1
                tokens_seen += real_tokens(batch)  # host-side, no sync
                bar.update()
                at_end = step >= total_steps
                if step % config.log_every == 0 or at_end:
                    _check_finite(first_nonfinite, step, checkpoints)
                    elapsed = time.perf_counter() - window_start
                    last = {k: float(sharding.host_value(v)) for k, v in metrics.items()}
                    last["tokens_per_s"] = tokens_seen / max(elapsed, 1e-9)
                    last["learning_rate"] = float(schedule(step))
                    writer.write(step, last)
                    bar.set_postfix(loss=f"{last['loss']:.3f}", tok_s=f"{last['tokens_per_s']:.0f}")
                    tokens_seen, window_start = 0.0, time.perf_counter()
                if config.eval_every and step % config.eval_every == 0:
                    writer.write(step, {"eval_loss": evaluate_loss(trainer, eval_batches)})
                if step % config.checkpoint_every == 0 or at_end:
                    _check_finite(first_nonfinite, step, checkpoints)
                    checkpoints.save(step, trainer.state, {"epoch": epoch, "step_in_epoch": start})
                if at_end:
                    break
            else:
                epoch, start = epoch + 1, 0
        eval_loss = evaluate_loss(trainer, eval_batches)
        writer.write(step, {"eval_loss": eval_loss})
    finally:
        bar.close()
        checkpoints.close()
        writer.close()

    training = {"steps": step, "config": json.loads(config.to_json_best_effort())}
    exports = export_artifacts(method, trainer, model, training, workdir, write=is_main)
    summary = {
        "steps": step,
        "final_train_loss": last["loss"] if math.isfinite(last["loss"]) else None,
        "eval_loss": eval_loss,
        "wall_s": time.perf_counter() - started,
        "train_examples": len(train_examples),
        "eval_examples": len(eval_examples),
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "platform": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        **{f"params_{k}": v for k, v in counts.items()},
        "exports": exports,
    }
    if not exports:
        summary["export_note"] = (
            "fine-tuning has no small artifact: the trained weights are the checkpoint"
        )
    if is_main:
        (workdir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def export_artifacts(
    method: Method,
    trainer: Trainer,
    model: Transformer | EncoderDecoder,
    training: dict,
    workdir: Path,
    write: bool,
) -> list[str]:
    """Export the method's small artifact (ours and PEFT's format) to `workdir`/export*.

    A method without one (full / top-k fine-tuning: the checkpoint holds the trained
    weights) exports nothing. Every process gathers the trained parameters (a collective);
    only `write` ones write. Returns the directory names.
    """
    if not method.has_artifact:
        return []
    params = jax.tree.map(gather, trainer.state.params)
    lm = nnx.merge(trainer.graphdef, params, trainer.frozen)
    writers = method.export(lm, model, training)
    if write:
        for name, save in writers.items():
            save(workdir / name)
    return list(writers)


@jax.jit
def _track_nonfinite(first: jax.Array, metrics: dict, step) -> jax.Array:
    """`step` if it is the first whose loss or gradient norm is NaN/inf, else `first`.

    On device (no host sync per step); one dispatch per step.
    """
    finite = jnp.isfinite(metrics["loss"])
    if "grad_norm" in metrics:
        finite = finite & jnp.isfinite(metrics["grad_norm"])
    return jnp.where((first == 0) & ~finite, jnp.asarray(step, first.dtype), first)


def _check_finite(first_nonfinite: jax.Array, step: int, checkpoints: Checkpointer) -> None:
    bad = int(sharding.host_value(first_nonfinite))  # host sync: only at log and checkpoint steps
    if bad:
        latest = checkpoints.latest_step()
        if latest is None:
            kept = "no checkpoint had been saved yet; lower the learning rate or check the data"
        else:
            kept = (
                f"the last good checkpoint (step {latest}) is kept; lower the learning rate or "
                "check the data, then rerun to resume from it"
            )
        raise NonFiniteLossError(
            f"loss or gradient became NaN or inf at step {bad} (found at step {step}); "
            f"stopped without saving it: {kept}."
        )
