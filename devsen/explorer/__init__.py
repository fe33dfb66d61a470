"""The explorer: a web page every node serves at /explorer/ (static HTML, CSS and ES modules).

The page reads the node's public JSON API (devsen/api_routes.py, anchoring/AUDIT.md) and checks
what it shows in the browser: "verify this event" recomputes the event id, the vouch, the
leaf, the Merkle path, the block hash and the commit certificate, and reads the anchored root
and the validator sets from the chain RPC itself (JSON-RPC eth_call), as `devsen audit verify`
does (anchoring/audit.py), so the auditor trusts neither this node nor its JavaScript's data.

Files are read once into memory (at most MAX_FILES, MAX_TOTAL_BYTES) and looked up by exact
name, so no request can reach outside static/. Every answer carries a strict
Content-Security-Policy: scripts and styles only from this origin (no inline code, no eval);
`connect-src` also allows http(s) origins, because the browser must ask the chain RPC the
auditor names, which is not this node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from starlette.responses import RedirectResponse, Response

STATIC = Path(__file__).resolve().parent / "static"
PREFIX = "/explorer"
MAX_FILES = 128
MAX_TOTAL_BYTES = 4 * 1024 * 1024
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml", ".txt": "text/plain; charset=utf-8"}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' http: https:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def static_files(root: Path = STATIC) -> dict[str, tuple[bytes, str]]:
    """{relative path: (content, content type)} of the servable files under `root`."""
    files: dict[str, tuple[bytes, str]] = {}
    total = 0
    for path in sorted(root.rglob("*")):
        kind = CONTENT_TYPES.get(path.suffix, "text/plain; charset=utf-8" if path.name in ("LICENSE", "VERSION")
                                 else "")
        if not path.is_file() or not kind:
            continue
        content = path.read_bytes()
        total += len(content)
        if len(files) >= MAX_FILES or total > MAX_TOTAL_BYTES:
            raise ValueError(f"explorer static files exceed {MAX_FILES} files or {MAX_TOTAL_BYTES} bytes")
        files[path.relative_to(root).as_posix()] = (content, kind)
    return files


def explorer_routes(root: Path = STATIC) -> APIRouter:
    """GET /explorer/ (index.html) and /explorer/{file}; not in the OpenAPI document."""
    files = static_files(root)
    api = APIRouter(include_in_schema=False)

    async def redirect() -> Any:
        return RedirectResponse(PREFIX + "/", status_code=308)

    async def serve(path: str = "") -> Any:
        found = files.get(path or "index.html")
        if found is None:
            return Response(f"no explorer file {path[:200]!r}\n", status_code=404, media_type="text/plain",
                            headers=HEADERS)
        content, kind = found
        return Response(content, media_type=kind, headers=HEADERS)

    api.add_api_route(PREFIX, redirect, methods=["GET"])
    api.add_api_route(PREFIX + "/", serve, methods=["GET"])
    api.add_api_route(PREFIX + "/{path:path}", serve, methods=["GET"])
    return api
