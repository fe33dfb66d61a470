"""The explorer's static files (devsen/explorer): served with a strict CSP, nothing outside
static/, no inline code, and the vendored @noble crypto is exactly what package-lock.json pins."""

from __future__ import annotations

import posixpath
import re
from collections.abc import MutableMapping
from typing import Any

import pytest
import trio

from devsen.explorer import CONTENT_SECURITY_POLICY, STATIC, explorer_routes, static_files
from devsen.explorer.vendor import NODE_MODULES, committed_files, vendored_files
from devsen.http_api import Router


async def _get(router: Router, path: str) -> tuple[int, dict[str, str], bytes]:
    """One GET through the ASGI app, with the response headers."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"test")], "client": ("127.0.0.1", 0), "server": ("test", 80)}
    out: dict[str, Any] = {"body": b""}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    with trio.fail_after(10):
        await router.app()(scope, receive, send)
    return out["status"], out["headers"], out["body"]


def _router() -> Router:
    router = Router()
    router.include(explorer_routes())
    return router


async def test_pages_and_modules_are_served_with_a_strict_csp() -> None:
    router = _router()
    status, headers, body = await _get(router, "/explorer/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"js/app.js" in body
    assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert "unsafe-eval" not in CONTENT_SECURITY_POLICY and "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    assert headers["x-content-type-options"] == "nosniff"
    for module in ("js/app.js", "js/verify.js", "vendor/noble-hashes/sha3.js", "vendor/noble-curves/secp256k1.js",
                   "explorer.css"):
        status, headers, body = await _get(router, f"/explorer/{module}")
        assert status == 200 and body, module
        assert headers["content-type"].startswith("text/javascript" if module.endswith(".js") else "text/css")
    status, headers, _ = await _get(router, "/explorer")
    assert status == 308 and headers["location"] == "/explorer/"


@pytest.mark.parametrize("path", ["/explorer/nope.js", "/explorer/../devsen/explorer/__init__.py",
                                  "/explorer/%2e%2e/%2e%2e/pyproject.toml", "/explorer/js/../../vendor.py",
                                  "/explorer/" + "a" * 5000])
async def test_nothing_outside_static_is_served(path: str) -> None:
    status, headers, body = await _get(_router(), path)
    assert status == 404 and headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert b"import" not in body and len(body) < 400


async def test_explorer_routes_are_not_in_the_openapi_document() -> None:
    router = _router()
    _, _, body = await _get(router, "/openapi.json")
    assert b"/explorer" not in body and not any("/explorer" in path for _, path in router.declared)


def test_every_module_import_resolves_and_no_inline_or_eval_code() -> None:
    files = static_files()
    html = files["index.html"][0].decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline script"
    assert " style=" not in html and "<style" not in html and not re.search(r"\son\w+=", html)
    for name, (content, _) in files.items():
        if not name.endswith(".js"):
            continue
        text = content.decode()
        for specifier in re.findall(r"""^(?:import|export)\b[^'";]*?from\s*['"]([^'"]+)['"]""", text, re.MULTILINE):
            assert specifier.startswith("."), (name, specifier)  # browsers cannot resolve bare specifiers
            assert posixpath.normpath(posixpath.join(posixpath.dirname(name), specifier)) in files, (name, specifier)
        if name.startswith("js/"):
            assert not re.search(r"\beval\s*\(|new Function|innerHTML|outerHTML|document\.write|insertAdjacentHTML",
                                 text), name


@pytest.mark.skipif(not (NODE_MODULES / "@noble" / "curves" / "package.json").exists(), reason="npm ci not run")
def test_vendored_crypto_is_the_pinned_npm_packages() -> None:
    import json

    lock = json.loads((NODE_MODULES.parent / "package-lock.json").read_text())["packages"]
    assert committed_files() == vendored_files(), "run python -m devsen.explorer.vendor"
    for package, folder in (("@noble/hashes", "noble-hashes"), ("@noble/curves", "noble-curves")):
        version = (STATIC / "vendor" / folder / "VERSION").read_text().strip()
        assert lock[f"node_modules/{package}"]["version"] == version
