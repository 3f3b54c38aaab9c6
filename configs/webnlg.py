r"""WebNLG 2017 (Gardent et al., 2017): prefix-tuning or a baseline.

    prefix-jax train --config configs/webnlg.py --workdir runs/webnlg_prefix \
        --config.data.path=PATH/TO/webnlg/train.json

`get_config("method=M,local")` as in configs/e2e.py (methods prefix, prompt, lora, full).
Small run on the dev file, split by triple set:

    prefix-jax train --config configs/webnlg.py:local --workdir runs/webnlg_local \
        --config.data.path=../shared/data/webnlg2017/dev.json --config.data.eval_sources=100

Li & Liang (WebNLG): lr 5e-5, batch 5, 5 epochs, p=10 (their Appendix A); a baseline takes
its method's optimizer settings instead. Training keeps only lexicalisations marked `good`;
evaluation groups keep all references of an entry.
"""

from prefix_jax.config.defaults import apply_local, get_base_config, use_method
from prefix_jax.config.parse import parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, method="prefix", local=False)
    c = get_base_config()
    c.data.task = "webnlg"
    c.data.path = "web_nlg"
    c.optim.learning_rate = 5e-5
    c.batch_size = 5
    if args.local:
        c = apply_local(c)
    return use_method(c, args.method, local=args.local)
