"""Defaults shared by every experiment config; the task files in `configs/` override what
differs.

Each task config is `configs/<task>.py` with `get_config("method=lora,local")`: `method`
switches to a baseline with that method's optimizer settings (`use_method`), `local` shrinks
the run so it finishes in minutes on a laptop CPU (`apply_local`). These live in the
library, not in `configs/`, because a config file is loaded by path and cannot import a
sibling module.
"""

from __future__ import annotations

import ml_collections

from prefix_jax.methods import registry
from prefix_jax.scale.sharding import DEFAULT_RULES


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = "smollm2"  # HF directory, .gguf file or known name
    c.param_dtype = "float32"
    c.dtype = "float32"  # compute dtype; "bfloat16" for mixed precision
    c.remat = ""  # "", "full", "dots", "dots_no_batch", "nothing"
    # Attention kernel: "auto" (splash on TPU; elsewhere flash for long rows, else xla),
    # "xla" (dense reference), "flash" (blockwise, any platform), "splash" (TPU), "cudnn".
    c.attention = "auto"
    c.method = "prefix"
    c.seed = 0

    # Device mesh (one size may be -1 = the rest) and logical-axis -> mesh-axis rules.
    # FSDP over the model width: (("data", 1), ("fsdp", -1), ("tensor", 1)).
    c.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
    c.sharding_rules = DEFAULT_RULES

    # Each method's own block (`config.prefix`, `config.lora`, ...), with the defaults its
    # `Method` in prefix_jax.methods.registry gives; a method reads only its own block.
    for method in registry.METHODS.values():
        c[method.config_block] = ml_collections.ConfigDict(method.default_config())

    c.data = ml_collections.ConfigDict()
    c.data.task = "e2e"
    c.data.path = "e2e_nlg"  # hub name by default; a local file path works too
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    # >0: hold out this many distinct sources of the training file as the validation split
    # (no source in both), for files that have only one split such as the E2E devset.
    c.data.eval_sources = 0
    # The held-out sources depend on this seed only, not on `seed`: one held-out set for
    # every trial seed and training-set size.
    c.data.split_seed = 0
    # >0: hold out this many further training sources and evaluate (loss, decoding) on them
    # instead, to choose hyperparameters without looking at the held-out sources above.
    c.data.tune_sources = 0
    # Data-efficiency studies, subsampled by source with `seed` (set at most one):
    c.data.train_fraction = 1.0  # keep this share of the training sources
    c.data.train_examples = 0  # keep exactly this many examples, whole sources first; 0 = all
    c.data.max_eval_groups = 0  # 0 = all
    c.data.skip_bad = False
    c.data.separator = "\nTarget:\n"
    c.data.max_source_tokens = 256
    c.data.max_target_tokens = 128
    c.data.buckets = ml_collections.config_dict.placeholder(tuple)

    # Li & Liang E2E: lr 8e-5, batch 10, 5 epochs, linear decay, no warmup.
    c.batch_size = 10
    c.epochs = 5
    c.max_steps = 0  # >0 caps the number of steps (overrides epochs)
    c.optim = ml_collections.ConfigDict(
        {"learning_rate": 8e-5, "warmup_steps": 0, "weight_decay": 0.0, "grad_clip": 1.0}
    )

    c.log_every = 10
    c.eval_every = 200  # eval loss on the validation split; 0 = only at the end
    c.checkpoint_every = 100
    c.keep_checkpoints = 2

    # Li & Liang decode table-to-text with beam 5.
    c.decode = ml_collections.ConfigDict(
        {
            "beam_size": 5,
            "max_new_tokens": 64,
            "min_new_tokens": 0,
            "length_penalty": 1.0,
            "ban_newline": True,
            "batch_size": 16,
        }
    )
    c.meteor_jar = ml_collections.config_dict.placeholder(str)
    return c


def apply_local(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A few minutes on a laptop CPU: few steps, short decoding, a small eval set."""
    c.max_steps = 60
    c.batch_size = 8
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 5
    c.log_every = 5
    c.eval_every = 0
    c.checkpoint_every = 20
    c.data.max_eval_groups = 32
    c.decode.beam_size = 2
    c.decode.max_new_tokens = 40
    return c


def use_method(
    c: ml_collections.ConfigDict, method: str, local: bool = False
) -> ml_collections.ConfigDict:
    """Switch a task config to `method`, with that method's optimizer settings (its
    `Method.optimizer_defaults`; `local`: those of the `:local` runs)."""
    c.method = method
    c.optim.update(registry.get(method).optimizer_defaults(local))
    return c
