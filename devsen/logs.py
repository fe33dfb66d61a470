"""One logging setup for the whole node, py-libp2p's logger included.

Text lines for people by default; `--log-format json` gives one JSON object per line
(time, level, logger, message, and any `extra=` fields) for log collectors.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# py-libp2p sets its logger to WARNING with propagate=False and no handler at import time;
# we attach our handler to it explicitly so its warnings (dropped messages!) are seen.
THIRD_PARTY_LOGGERS = ("libp2p", "trio-websocket", "web3", "ocpp")


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Install one handler on the root logger and on the third-party loggers; return it."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format {fmt!r} is not 'text' or 'json'")
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLineFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_devsen", False):
            root.removeHandler(old)
    handler._devsen = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in list(logging.root.manager.loggerDict):
        # Sub-loggers some libraries pin to INFO (libp2p's auto_connector) inherit instead.
        if name.split(".")[0] in THIRD_PARTY_LOGGERS and "." in name:
            logging.getLogger(name).setLevel(logging.NOTSET)
    for name in THIRD_PARTY_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            if getattr(old, "_devsen", False):
                logger.removeHandler(old)
        logger.propagate = False  # libp2p does this on import anyway; one path, no duplicates
        logger.addHandler(handler)
        # Third-party chatter stays at WARNING unless we debug.
        logger.setLevel(logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING)
    return handler
