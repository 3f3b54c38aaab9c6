"""The docs cannot go stale unnoticed: the layout page names exactly the package's modules,
the README stays short, and every relative link points to a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "prefix_jax"
LAYOUT = REPO / "docs" / "layout.md"
README_LIMIT = 16 * 1024  # bytes

# `prefix_jax/a/b.py` (a module) or `prefix_jax/a/` (a package), in backticks.
MODULE_REF = re.compile(r"`(prefix_jax/(?:[\w]+/)*(?:[\w]+\.py|[\w]+/))`")
# [text](target) outside code: the target up to a space, ")" or "#".
LINK = re.compile(r"\[[^\]]*\]\(([^)\s#]*)(?:#[^)\s]*)?\)")


def package_modules() -> set[str]:
    """Every module file and every package under prefix_jax/ (the root package itself aside),
    as `prefix_jax/a/b.py` and `prefix_jax/a/`."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        relative = path.relative_to(REPO).as_posix()
        if path.name == "__init__.py":
            if path.parent != PACKAGE:
                names.add(relative.removesuffix("__init__.py"))
        else:
            names.add(relative)
    return names


def documented_modules() -> set[str]:
    return set(MODULE_REF.findall(LAYOUT.read_text(encoding="utf-8")))


def test_layout_page_names_every_module_and_no_other():
    existing, documented = package_modules(), documented_modules()
    missing = sorted(existing - documented)
    extra = sorted(documented - existing)
    message = []
    if missing:
        message.append("modules missing from docs/layout.md (add a line each):")
        message += [f"  {name}" for name in missing]
    if extra:
        message.append("modules named in docs/layout.md that do not exist (remove or rename):")
        message += [f"  {name}" for name in extra]
    assert not message, "\n".join(message)


def test_readme_is_short():
    size = (REPO / "README.md").stat().st_size
    assert size <= README_LIMIT, (
        f"README.md is {size} bytes, over {README_LIMIT}: move detail to docs/*.md"
    )


def markdown_pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def without_code(text: str) -> str:
    """The text with fenced code blocks and inline code removed (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def test_relative_links_point_to_existing_files():
    broken = []
    for page in markdown_pages():
        for target in LINK.findall(without_code(page.read_text(encoding="utf-8"))):
            if not target or re.match(r"[a-z][a-z0-9+.-]*:", target):  # anchor or URL
                continue
            if not (page.parent / target).exists():
                broken.append(f"  {page.relative_to(REPO)}: {target}")
    assert not broken, "relative links to missing files:\n" + "\n".join(broken)
