"""The shipped sweep grids, as data: `prefix_jax.study.sweep` runs them."""
