r"""Prefix-tuning of BART on XSum (Narayan et al., 2018), Li & Liang's summarization setting.

    prefix-jax train --config configs/xsum.py --workdir runs/xsum_prefix \
        --config.model=/path/to/bart-large --config.data.path=/path/to/xsum.jsonl
    prefix-jax evaluate --workdir runs/xsum_prefix

`model` is a local Hugging Face directory of `facebook/bart-large` (config.json,
model.safetensors and the tokenizer files, e.g. from `huggingface-cli download
facebook/bart-large --local-dir bart-large`); `data.path` the XSum JSON lines
(`document`, `summary`) or the hub dataset name `EdinburghNLP/xsum`.

Li & Liang (XSum, BART-large): three prefixes (encoder self-attention, decoder
self-attention, decoder cross-attention), p=100 with the MLP reparameterization, lr 5e-5,
batch 14, 30 epochs, beam 6. Sources are cut to 512 tokens and summaries to 60, BART's
XSum setting; decoding gives 10 to 60 new tokens. `prefix.parts` chooses which of the
three prefixes are trained, e.g. `--config.prefix.parts=decoder` for PEFT's setting.

`get_config("method=M,local")`: `method` (prefix by default; prompt, lora, full) as in
configs/e2e.py; `local` is a few minutes on a CPU: 60 steps of batch 8 at lr 1e-3, 32
documents decoded with beam 2, on whatever `model` and `data.path` name (e.g. a small BART).
"""

from prefix_jax.config.defaults import apply_local, get_base_config, use_method
from prefix_jax.config.parse import parse_arg


def get_config(arg: str | None = None):
    args = parse_arg(arg, method="prefix", local=False)
    c = get_base_config()
    c.model = "facebook/bart-large"
    c.data.task = "xsum"
    c.data.path = "EdinburghNLP/xsum"
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.max_source_tokens = 512
    c.data.max_target_tokens = 60
    c.prefix.length = 100
    c.prefix.parts = "encoder,decoder,cross"
    c.batch_size = 14
    c.epochs = 30
    c.optim.learning_rate = 5e-5
    c.eval_every = 2000
    c.checkpoint_every = 1000
    c.decode.beam_size = 6
    c.decode.max_new_tokens = 60
    c.decode.min_new_tokens = 10
    c.decode.batch_size = 8
    if args.local:
        c = apply_local(c)
        c.data.max_source_tokens = 256
        c.decode.min_new_tokens = 0
    return use_method(c, args.method, local=args.local)
