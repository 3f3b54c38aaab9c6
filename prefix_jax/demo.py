"""The README's main job: load SmolLM2 from its local GGUF file and generate greedily."""

from __future__ import annotations

import sys

from prefix_jax import generate

PROMPTS = ["The capital of France is", "A good restaurant near the river should"]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = [a for p in PROMPTS for a in ("--prompt", p)]
    generate.main(["--model", "smollm2", *args, "--max-new-tokens", "30", *argv])


if __name__ == "__main__":
    main()
