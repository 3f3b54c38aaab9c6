"""The HTTP server's two guards: the API key on `/v1/` routes, and the prefix root that
`/v1/load_prefix` may read under (symlinks and `..` resolved before the check)."""

from __future__ import annotations

import secrets
from pathlib import Path

from prefix_jax.serve.protocol import ApiError


class BearerKey:
    """Pure ASGI middleware: every `/v1/` route wants `Authorization: Bearer <key>`
    (checked before the body is read, so a stranger learns nothing from 400s); `/health`
    and `/metrics` stay open for probes and scrapers."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, given = header.partition(b" ")
            if scheme.lower() != b"bearer" or not secrets.compare_digest(given.strip(), self.key):
                message = "missing or wrong API key (Authorization: Bearer KEY)"
                error = ApiError(401, message, None, "invalid_api_key")
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def resolve_under(root: Path, path: str) -> Path:
    """`path` (absolute or relative to `root`) with symlinks and `..` resolved, if it and
    every entry directly in it stay under `root`; ApiError 403 otherwise."""
    candidate = Path(path)
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not resolved.is_relative_to(root):
        raise ApiError(403, f"{path!r} resolves outside the prefix root", "path")
    if not resolved.is_dir():
        raise ApiError(400, f"{path!r} is not a directory under the prefix root", "path")
    for entry in resolved.iterdir():  # a file symlinked out of the root would escape it too
        if not entry.resolve().is_relative_to(root):
            raise ApiError(403, f"{entry.name!r} in {path!r} links outside the prefix root")
    return resolved
