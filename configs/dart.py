r"""DART v1.1.1 (Nan et al., 2021): prefix-tuning or a baseline.

    prefix-jax train --config configs/dart.py --workdir runs/dart_prefix \
        --config.data.path=PATH/TO/dart-v1.1.1-full-train.json

`get_config("method=M,local")` as in configs/e2e.py (methods prefix, prompt, lora, full).
Small run on the dev file, split by triple set:

    prefix-jax train --config configs/dart.py:local --workdir runs/dart_local \
        --config.data.path=../shared/data/dart/dart-v1.1.1-full-dev.json \
        --config.data.eval_sources=100

Li & Liang (DART): lr 5e-5, batch 5, 5 epochs, p=10 (their Appendix A); a baseline takes
its method's optimizer settings instead.
"""

from prefix_jax.config.defaults import apply_local, get_base_config, use_method
from prefix_jax.config.parse import parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, method="prefix", local=False)
    c = get_base_config()
    c.data.task = "dart"
    c.data.path = "dart"
    c.optim.learning_rate = 5e-5
    c.batch_size = 5
    if args.local:
        c = apply_local(c)
    return use_method(c, args.method, local=args.local)
