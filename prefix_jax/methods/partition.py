"""Trainable vs frozen partitions, optimizer labels and parameter counts.

A method marks its trainable variables with a Flax variable type (e.g. `PrefixParam`);
everything else is frozen. The optimizer is an `optax.multi_transform` over labels
derived from that type: frozen leaves get `set_to_zero` (no state). The train step only
differentiates the trainable partition, so frozen weights never get gradient buffers.
"""

from __future__ import annotations

import jax
import optax
from flax import nnx

TRAINABLE, FROZEN = "trainable", "frozen"


def labels(state: nnx.State, trainable: nnx.filterlib.Filter) -> nnx.State:
    """A tree like `state` with "trainable"/"frozen" per leaf, by variable type."""
    predicate = nnx.filterlib.to_predicate(trainable)

    def label(path, var):
        return TRAINABLE if predicate(path, var) else FROZEN

    return nnx.map_state(label, state)


def decay_mask(params) -> object:
    """Weight decay on matrices only, not on biases or norm scales (AdamW convention).

    A stacked weight's leading `layers` axis does not make it a matrix: per-layer norm
    scales [layers, d] are vectors (this matters once layers train: full or top-k FT).
    """

    def is_matrix(x) -> bool:
        if not isinstance(x, nnx.Variable):
            return getattr(x, "ndim", 0) >= 2
        value = x.get_value()
        axes = x.get_metadata("logical_axes", None) or ()
        return getattr(value, "ndim", 0) - ("layers" in axes) >= 2

    return jax.tree.map(is_matrix, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def multi_transform(
    trainable_tx: optax.GradientTransformation, label_tree_or_fn
) -> optax.GradientTransformation:
    """`trainable_tx` on trainable leaves, `set_to_zero` (and no state) on frozen ones."""
    return optax.multi_transform(
        {TRAINABLE: trainable_tx, FROZEN: optax.set_to_zero()}, label_tree_or_fn
    )


def count_params(model: nnx.Module, trainable: nnx.filterlib.Filter) -> dict[str, float]:
    """Trainable and total parameter counts, and the trainable fraction.

    A wrapper that trains copies of frozen weights (top-k fine-tuning) reports how many
    frozen parameters they replace as `num_shadowed_params`; those are not counted twice.
    """
    train_state, rest = nnx.state(model, trainable, nnx.Param)
    n_train = sum(x.size for x in jax.tree.leaves(train_state))
    n_total = n_train + sum(x.size for x in jax.tree.leaves(rest))
    n_total -= getattr(model, "num_shadowed_params", 0)
    return {"trainable": n_train, "total": n_total, "fraction": n_train / max(n_total, 1)}
