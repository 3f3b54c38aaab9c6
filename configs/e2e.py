r"""E2E (Novikova et al., 2017) with Li & Liang's settings: prefix-tuning or a baseline.

    prefix-jax train --config configs/e2e.py --workdir runs/e2e_prefix

`get_config("method=M,local")`: `method` is prefix (default), prompt, lora or full, each with
its own optimizer settings (`prefix_jax.config.defaults.use_method`); `local` is a few
minutes on a laptop CPU. Low-data run on the E2E devset held out by MR (447 MRs train, 100
validation), small:

    prefix-jax train --config configs/e2e.py:method=lora,local --workdir runs/e2e_local \
        --config.data.path=../shared/data/e2e/devset.csv --config.data.eval_sources=100

Li & Liang (E2E): lr 8e-5, batch 10, 5 epochs, p=10, MLP reparameterization (hidden 512),
beam 5. Prompt tuning: `prompt.length` vectors (default 10, sampled vocabulary embeddings).
LoRA: rank 4, alpha 32, dropout 0.1 on q and v (Hu et al.'s GPT-2 E2E setting); other
weights with e.g. `--config.lora.targets="('q','k','v','o')"`. Full fine-tuning trains every
weight (FT-top2: `--config.finetune.top_layers=2`) and exports nothing smaller than its
checkpoint. Override anything with `--config.x=y`.
"""

from prefix_jax.config.defaults import apply_local, get_base_config, use_method
from prefix_jax.config.parse import parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, method="prefix", local=False)
    c = get_base_config()
    c.data.task = "e2e"
    c.data.path = "e2e_nlg"
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    if args.local:
        c = apply_local(c)
    return use_method(c, args.method, local=args.local)
