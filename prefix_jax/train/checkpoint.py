"""Orbax checkpoints of the train state and the data position, for exact resumption.

Orbax writes each step into a temporary directory and renames it when complete, so a run
killed at any moment leaves either the previous or the new checkpoint, never a torn one.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int = 2):
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, cleanup_tmp_directories=True
            ),
        )

    def save(self, step: int, state, position: dict) -> None:
        """Save asynchronously; `position` is the data position to resume from."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), position=ocp.args.JsonSave(position)
            ),
        )

    def restore_latest(self, like):
        """(state, position) of the latest checkpoint, shaped like `like`; None if none."""
        step = self.manager.latest_step()
        if step is None:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), position=ocp.args.JsonRestore()
            ),
        )
        return restored.state, restored.position

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
