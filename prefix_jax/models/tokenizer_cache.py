"""A GGUF file's tokenizer, converted once and then read from a cache.

transformers builds a GGUF's tokenizer by parsing every vocabulary and merge entry of the
file's metadata and converting them to a fast tokenizer: about 15 s for SmolLM2's 49k
tokens on a 2-core machine, paid by every process that loads the model (each test worker,
the CLI, the server). The converted tokenizer is saved with `save_pretrained` under
`$PREFIX_JAX_CACHE` (default `$XDG_CACHE_HOME/prefix_jax`, i.e. `~/.cache/prefix_jax`),
keyed by the file's path, size and modification time and the transformers version that
converted it, and later loads read its `tokenizer.json` in well under a second.
Concurrent processes convert once: the first holds a lock while the others wait.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """Where prefix_jax keeps what it derives from checkpoints (`$PREFIX_JAX_CACHE`)."""
    if "PREFIX_JAX_CACHE" in os.environ:
        return Path(os.environ["PREFIX_JAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "prefix_jax"


def gguf_tokenizer(path: Path) -> Any:
    """The tokenizer in GGUF file `path`'s metadata (converted once per file version)."""
    import transformers
    from filelock import FileLock

    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    folder = cache_root() / "tokenizers" / hashlib.sha256(key.encode()).hexdigest()[:24]
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not folder.is_dir():
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                path.parent, gguf_file=path.name, local_files_only=True
            )
            staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".partial-"))
            try:
                tokenizer.save_pretrained(staging)
                (staging / "source.txt").write_text(key + "\n")
                staging.rename(folder)  # complete or absent, never half written
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            return tokenizer
    return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
