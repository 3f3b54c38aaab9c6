"""The jitted train step: gradients and optimizer state for the trainable partition only.

The model is split once into (graphdef, trainable params, frozen state). The step
differentiates a loss of the trainable params alone, so frozen weights get no gradient
buffers and no optimizer state; the train state is donated to the step.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from prefix_jax.methods import partition
from prefix_jax.scale import sharding

Array = jax.Array


class TrainState(struct.PyTreeNode):
    step: Array
    params: nnx.State  # the trainable partition
    opt_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 5e-5
    warmup_steps: int = 0
    total_steps: int = 1000
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # global norm; 0 disables
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8


def learning_rate_schedule(config: OptimConfig) -> optax.Schedule:
    """Linear warmup from 0, then linear decay to 0 at `total_steps`."""
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, config.learning_rate, max(config.warmup_steps, 1)),
            optax.linear_schedule(
                config.learning_rate, 0.0, max(config.total_steps - config.warmup_steps, 1)
            ),
        ],
        [config.warmup_steps],
    )


def make_optimizer(
    config: OptimConfig, trainable: nnx.filterlib.Filter
) -> optax.GradientTransformation:
    """AdamW with linear warmup then linear decay to 0, clipping, and decay on matrices only.

    Wrapped in `multi_transform` with labels from the variable types: applied to a tree that
    holds frozen leaves too, those get `set_to_zero` and no state.
    """
    schedule = learning_rate_schedule(config)
    chain = [optax.clip_by_global_norm(config.grad_clip)] if config.grad_clip > 0 else []
    chain.append(
        optax.adamw(
            schedule,
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            mask=partition.decay_mask,
        )
    )
    predicate = nnx.filterlib.to_predicate(trainable)

    def labels(params):
        return nnx.map_state(
            lambda path, v: partition.TRAINABLE if predicate(path, v) else partition.FROZEN, params
        )

    return partition.multi_transform(optax.chain(*chain), labels)


def lm_loss(logits: Array, tokens: Array, loss_mask: Array) -> tuple[Array, Array]:
    """Mean next-token cross-entropy over positions whose target has loss_mask=1."""
    return _mean_nll(logits[:, :-1], tokens[:, 1:], loss_mask[:, 1:].astype(jnp.float32))


def _mean_nll(logits: Array, targets: Array, weights: Array) -> tuple[Array, Array]:
    """Weighted mean cross-entropy of `logits` against `targets`, and the weight total."""
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    count = weights.sum()
    return (nll * weights).sum() / jnp.maximum(count, 1.0), count


class Trainer:
    """Holds the split model and the compiled step; `state` is a TrainState.

    With a `mesh`, the frozen weights, the train state and batches get explicit shardings
    from the logical-axis `rules`; the state is created sharded (by a jitted init with
    `out_shardings`) and donated to every step.

    A model made of shapes only (`nnx.eval_shape`, `pretrained.abstract_model`) gives an
    abstract trainer: `state` and `frozen` are `jax.ShapeDtypeStruct`s with their
    shardings, nothing is allocated, and `lower_step` compiles ahead of time (e.g. for a
    TPU topology, see `prefix_jax.scale.aot`).
    """

    def __init__(
        self,
        model: nnx.Module,
        tx: optax.GradientTransformation,
        trainable: nnx.filterlib.Filter,
        loss_fn: Callable | None = None,
        mesh: Mesh | None = None,
        rules=sharding.DEFAULT_RULES,
    ):
        self.graphdef, params, self.frozen = nnx.split(model, trainable, ...)
        self.tx = tx
        self.mesh = mesh
        self._loss_fn = loss_fn or _default_loss

        init = functools.partial(initial_state, tx)
        abstract = is_abstract(params) or is_abstract(self.frozen)
        if mesh is None:
            self.state = jax.eval_shape(init, params) if abstract else init(params)
            self._step = jax.jit(self._train_step, donate_argnums=(0,))
            self._eval = jax.jit(self._eval_step)
            return
        self.state_sharding = sharding.state_shardings(jax.eval_shape(init, params), rules, mesh)
        frozen_sharding = sharding.state_shardings(self.frozen, rules, mesh)
        if abstract:
            self.frozen = with_shardings(jax.eval_shape(lambda: self.frozen), frozen_sharding)
            self.state = with_shardings(jax.eval_shape(init, params), self.state_sharding)
        else:
            self.frozen = jax.device_put(self.frozen, frozen_sharding)
            params = jax.device_put(params, self.state_sharding.params)
            self.state = jax.jit(init, out_shardings=self.state_sharding)(params)
        replicated = NamedSharding(mesh, PartitionSpec())
        batch = sharding.batch_sharding(mesh)
        self._step = jax.jit(
            self._train_step,
            in_shardings=(self.state_sharding, frozen_sharding, batch, replicated),
            out_shardings=(self.state_sharding, replicated),
            donate_argnums=(0,),
        )
        self._eval = jax.jit(
            self._eval_step,
            in_shardings=(self.state_sharding.params, frozen_sharding, batch),
            out_shardings=replicated,
        )

    def model(self, state: TrainState | None = None) -> nnx.Module:
        """The model with the given (default: current) trainable params merged in."""
        params = (state or self.state).params
        return nnx.merge(self.graphdef, params, self.frozen)

    def _loss(self, params, frozen, batch, dropout_key):
        model = nnx.merge(self.graphdef, params, frozen)
        return self._loss_fn(model, batch, dropout_key)

    def _train_step(self, state: TrainState, frozen, batch, key):
        dropout_key = jax.random.fold_in(key, state.step)
        (loss, count), grads = jax.value_and_grad(self._loss, has_aux=True)(
            state.params, frozen, batch, dropout_key
        )
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "tokens": count, "grad_norm": optax.global_norm(grads)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    def _eval_step(self, params, frozen, batch):
        return self._loss(params, frozen, batch, None)

    def step(self, batch: dict, key: Array) -> dict:
        """One optimizer step on `batch`; returns device-side metrics (no host sync)."""
        self.state, metrics = self._step(self.state, self.frozen, batch, key)
        return metrics

    def eval_loss(self, batch: dict) -> tuple[Array, Array]:
        return self._eval(self.state.params, self.frozen, batch)

    def lower_step(self, batch: dict) -> jax.stages.Lowered:
        """The train step lowered for `batch` (arrays or `jax.ShapeDtypeStruct`s), unrun."""
        key = jax.eval_shape(lambda: jax.random.key(0))
        return self._step.lower(self.state, self.frozen, batch, key)


def is_abstract(tree) -> bool:
    """Whether a pytree holds shapes only (`jax.ShapeDtypeStruct` leaves)."""
    leaves = jax.tree.leaves(tree)
    return bool(leaves) and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)


def with_shardings(shapes, shardings):
    """`jax.ShapeDtypeStruct`s of `shapes` carrying their sharding from `shardings` (a tree
    of the same structure, or a prefix of it as `state_shardings` returns)."""
    shardings = jax.tree.broadcast(shardings, shapes)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings
    )


def initial_state(tx: optax.GradientTransformation, params: nnx.State) -> TrainState:
    """Step 0: the trainable parameters and their fresh optimizer state."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def lm_loss_at(
    unembed: Callable[[Array], Array], hidden: Array, batch: dict
) -> tuple[Array, Array]:
    """`lm_loss` from logits at `batch["score_positions"]` only.

    score_positions [B, W]: positions t whose logits predict a scored token t+1, -1 for
    padding. Only W (host-chosen, bucketed) of the T positions per row are unembedded: the
    unembedding and softmax over the vocabulary are the largest single cost of a small
    model's step, and a data-to-text sequence is about half unscored source.
    """
    positions = batch["score_positions"]
    at = jnp.maximum(positions, 0)
    targets_at = jnp.minimum(at + 1, batch["tokens"].shape[1] - 1)
    logits = unembed(jnp.take_along_axis(hidden, at[..., None], axis=1))
    targets = jnp.take_along_axis(batch["tokens"], targets_at, axis=1)
    scored = jnp.take_along_axis(batch["loss_mask"], targets_at, axis=1).astype(bool)
    return _mean_nll(logits, targets, (scored & (positions >= 0)).astype(jnp.float32))


def _default_loss(model, batch, dropout_key):
    hidden, _ = model.hidden_states(
        batch["tokens"], batch["attention_mask"], dropout_key=dropout_key
    )
    if "score_positions" in batch:
        return lm_loss_at(model.unembed, hidden, batch)
    return lm_loss(model.unembed(hidden), batch["tokens"], batch["loss_mask"])


def seq2seq_loss(model, batch, dropout_key):
    """Teacher-forced cross-entropy of an encoder-decoder over its `labels`."""
    logits = model(
        batch["source"],
        batch["source_mask"],
        batch["target"],
        batch["target_mask"],
        dropout_key=dropout_key,
    )
    return _mean_nll(logits, batch["labels"], batch["target_mask"].astype(jnp.float32))
