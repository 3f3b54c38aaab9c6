"""Keep libtpu quiet on a machine without a TPU.

The test extras install `jax[tpu]` so that `prefix-jax aot` can compile for TPU slices on
any host. libtpu then starts in every CPU or GPU process (JAX tries the TPU backend first,
and the AOT check loads it for its compiler), cannot work out the TPU slice it is part of,
and prints errors about host bounds and worker hostnames with a source trace: a newcomer
reads that as a broken install. Before JAX starts a backend, a host with no TPU attached
tells libtpu what a single TPU VM would: one worker, itself. The TPU backend then fails
quietly ("no TPU found", logged by JAX at INFO) and the compiler for abstract topologies
works as before. A TPU host, or a user who set any of libtpu's topology variables, is
left alone.
"""

from __future__ import annotations

import glob
import os

# libtpu's own description of the slice; if the user set any, theirs stands.
TOPOLOGY_VARIABLES = (
    "TPU_WORKER_HOSTNAMES",
    "TPU_WORKER_ID",
    "TPU_HOST_BOUNDS",
    "TPU_CHIPS_PER_HOST_BOUNDS",
    "TPU_ACCELERATOR_TYPE",
)
SINGLE_HOST = {"TPU_WORKER_HOSTNAMES": "localhost", "TPU_HOST_BOUNDS": "1,1,1"}


def tpu_attached() -> bool:
    """Whether this machine has TPU chips: on the PCI bus (JAX's own check), or as the
    device files libtpu opens (for containers that hide the PCI bus)."""
    from jax._src import hardware_utils  # importing JAX starts no backend

    chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
    return chips > 0 or bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def quiet_libtpu_without_tpu() -> bool:
    """On a host without a TPU, describe a lone worker to libtpu (before JAX starts a
    backend). Returns whether it did."""
    if any(name in os.environ for name in TOPOLOGY_VARIABLES) or tpu_attached():
        return False
    os.environ.update(SINGLE_HOST)
    return True
