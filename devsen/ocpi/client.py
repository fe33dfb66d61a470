"""A minimal OCPI client over plain HTTP/1.1 (tests and operator checks): sends the token as
`Authorization: Token <base64>` and returns the status, the response headers and the body."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import trio

from devsen.ocpi.routes import encode_token


@dataclass
class OcpiAnswer:
    status: int
    headers: dict[str, str]  # lower-case names
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw) if self.raw else None

    @property
    def code(self) -> int:
        return int(self.json["status_code"])

    @property
    def data(self) -> Any:
        return self.json.get("data")


async def ocpi_request(url: str, method: str = "GET", token: str | None = None, body: bytes = b"", *,
                       headers: dict[str, str] | None = None, authorization: str | None = None,
                       timeout: float = 30.0) -> OcpiAnswer:
    """One request to `url` (http://host:port/path?query); `authorization` overrides the header."""
    match = re.fullmatch(r"http://([^/:]+)(?::(\d+))?(/.*)?", url)
    if not match:
        raise ValueError(f"{url!r} is not an http:// URL")
    host, port, target = match.group(1), int(match.group(2) or 80), match.group(3) or "/"
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close",
             f"Content-Length: {len(body)}"]
    if authorization is not None or token is not None:
        lines.append(f"Authorization: {authorization if authorization is not None else encode_token(str(token))}")
    if body:
        lines.append("Content-Type: application/json")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            raw = b""
            while chunk := await stream.receive_some(65536):
                raw += chunk
    head, _, payload = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return OcpiAnswer(int(status_line.split()[1]), parsed, payload)
