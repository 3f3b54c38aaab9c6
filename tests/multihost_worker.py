"""One process of a multi-host training run on CPU (used by test_multihost.py).

python tests/multihost_worker.py CONFIG_JSON WORKDIR PORT NUM_PROCESSES PROCESS_ID
"""

import json
import logging
import sys

import jax

jax.config.update("jax_num_cpu_devices", 4)

import ml_collections  # noqa: E402

from prefix_jax.scale import sharding  # noqa: E402
from prefix_jax.train.loop import train  # noqa: E402

if __name__ == "__main__":
    config_file, workdir, port, num_processes, process_id = sys.argv[1:]
    logging.basicConfig(level=logging.INFO, force=True)
    sharding.initialize_distributed(f"127.0.0.1:{port}", int(num_processes), int(process_id))
    config = ml_collections.ConfigDict(json.loads(open(config_file).read()))
    summary = train(config, workdir)
    print(json.dumps({"process": jax.process_index(), "devices": jax.device_count(), **summary}))
