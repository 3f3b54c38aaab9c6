"""Data: task loaders (records -> examples), token rules (`tokens`) and batches (examples ->
arrays): `causal` for decoder-only models, `pairs` for encoder-decoders, `batching` shared."""

from prefix_jax.data.batching import ShuffledBatches, default_buckets, pick_bucket
from prefix_jax.data.causal import BatchIterator, EncodedDataset, encode_examples, eval_batches
from prefix_jax.data.tasks import (
    TASKS,
    DataError,
    EvalGroup,
    Example,
    LoadResult,
    group_references,
    linearize_mr,
    linearize_triples,
    load_dart,
    load_e2e,
    load_jsonl,
    load_task,
    load_webnlg,
    load_xsum,
    parse_mr,
    split_by_source,
)
from prefix_jax.data.tokens import DEFAULT_SEPARATOR, EncodeConfig

__all__ = [
    "DEFAULT_SEPARATOR",
    "TASKS",
    "BatchIterator",
    "DataError",
    "EncodeConfig",
    "EncodedDataset",
    "EvalGroup",
    "Example",
    "LoadResult",
    "ShuffledBatches",
    "default_buckets",
    "encode_examples",
    "eval_batches",
    "group_references",
    "linearize_mr",
    "linearize_triples",
    "load_dart",
    "load_e2e",
    "load_jsonl",
    "load_task",
    "load_webnlg",
    "load_xsum",
    "parse_mr",
    "pick_bucket",
    "split_by_source",
]
