"""`python -m prefix_jax.cli <command> ...`, the same program as the `prefix-jax` script."""

import sys

from prefix_jax.cli.main import main

sys.exit(main())
