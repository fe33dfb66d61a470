"""The centralized baseline: a CSMS built the usual way, to compare DEVSEN against.

One asyncio process: the `ocpp` package's ChargePoint (1.6 and 2.0.1, its JSON schema checks on)
over `websockets`, HTTP Basic auth checked against the same salted scrypt hashes DEVSEN keeps on
chain (primitives.credentials; verified once per charger and cached, in 2 worker threads, as the
node does; the fsyncs have their own thread, so a login storm never delays a durable write). Every CALL is written durably before it is answered: appended as one JSON line to
an append-only log and fsync'd. fsyncs are grouped (group commit: every record that arrived
while the last fsync ran goes in the next one), which is what a production store (a database
WAL) does; one fsync per message would cap the baseline at the disk's fsync rate instead.

    .venv/bin/python bench/baseline_csms.py --port 9100 --credentials creds.json --log /tmp/csms.log

`--credentials`: JSON {chargeBoxId: [salt hex, scrypt hash hex]}. Prints "listening PORT" once
it serves; SIGTERM stops it (after the last fsync).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import datetime
import itertools
import json
import logging
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call_result as result201
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from primitives.credentials import verify_charger_password

MAX_BATCH = 10_000  # records per fsync
CONCURRENT_PASSWORD_CHECKS = 2  # scrypt hashes at once (the DEVSEN node's default, ocpp.concurrent_password_checks)
HEARTBEAT_S = 300
MAX_MESSAGE_BYTES = 65_536
log = logging.getLogger("baseline_csms")


class DurableLog:
    """An append-only file; `append` returns once the record is on disk (group-committed fsync)."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "ab")  # noqa: SIM115 (closed in close())
        self.pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self.wakeup = asyncio.Event()
        self.fsyncs = 0
        self.records = 0
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="fsync")  # never queued behind logins

    async def append(self, record: dict[str, Any]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((json.dumps(record, separators=(",", ":")).encode() + b"\n", future))
        self.wakeup.set()
        await future

    async def run(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.pending:
                batch, self.pending = self.pending[:MAX_BATCH], self.pending[MAX_BATCH:]
                data = b"".join(line for line, _ in batch)
                await asyncio.get_running_loop().run_in_executor(self.thread, self._write, data)
                self.fsyncs += 1
                self.records += len(batch)
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

    def _write(self, data: bytes) -> None:
        self.file.write(data)
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.thread.shutdown()
        self.file.close()


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


class Csms:
    """What the charge points share: the durable log, the accepted idTags, transaction ids."""

    def __init__(self, store: DurableLog, id_tags: set[str] | None) -> None:
        self.store = store
        self.id_tags = id_tags
        self.transaction_ids = itertools.count(1)

    def tag_status(self, tag: str) -> str:
        return "Accepted" if self.id_tags is None or tag in self.id_tags else "Invalid"


class Station16(ChargePoint16):  # type: ignore[misc]
    csms: Csms

    async def _keep(self, action: str, payload: dict[str, Any]) -> None:
        await self.csms.store.append({"cp": self.id, "v": "1.6", "action": action, "payload": payload})

    @on("BootNotification")  # type: ignore[untyped-decorator]
    async def boot(self, **payload: Any) -> Any:
        await self._keep("BootNotification", payload)
        return result16.BootNotification(current_time=now(), interval=HEARTBEAT_S, status="Accepted")

    @on("Heartbeat")  # type: ignore[untyped-decorator]
    async def heartbeat(self, **payload: Any) -> Any:
        await self._keep("Heartbeat", payload)
        return result16.Heartbeat(current_time=now())

    @on("StatusNotification")  # type: ignore[untyped-decorator]
    async def status(self, **payload: Any) -> Any:
        await self._keep("StatusNotification", payload)
        return result16.StatusNotification()

    @on("Authorize")  # type: ignore[untyped-decorator]
    async def authorize(self, id_tag: str, **payload: Any) -> Any:
        await self._keep("Authorize", {"id_tag": id_tag, **payload})
        return result16.Authorize(id_tag_info={"status": self.csms.tag_status(id_tag)})

    @on("StartTransaction")  # type: ignore[untyped-decorator]
    async def start_transaction(self, id_tag: str, **payload: Any) -> Any:
        transaction_id = next(self.csms.transaction_ids)
        await self._keep("StartTransaction", {"id_tag": id_tag, "transaction_id": transaction_id, **payload})
        return result16.StartTransaction(transaction_id=transaction_id,
                                         id_tag_info={"status": self.csms.tag_status(id_tag)})

    @on("MeterValues")  # type: ignore[untyped-decorator]
    async def meter_values(self, **payload: Any) -> Any:
        await self._keep("MeterValues", payload)
        return result16.MeterValues()

    @on("StopTransaction")  # type: ignore[untyped-decorator]
    async def stop_transaction(self, **payload: Any) -> Any:
        await self._keep("StopTransaction", payload)
        return result16.StopTransaction()


class Station201(ChargePoint201):  # type: ignore[misc]
    csms: Csms

    async def _keep(self, action: str, payload: dict[str, Any]) -> None:
        await self.csms.store.append({"cp": self.id, "v": "2.0.1", "action": action, "payload": payload})

    @on("BootNotification")  # type: ignore[untyped-decorator]
    async def boot(self, **payload: Any) -> Any:
        await self._keep("BootNotification", payload)
        return result201.BootNotification(current_time=now(), interval=HEARTBEAT_S, status="Accepted")

    @on("Heartbeat")  # type: ignore[untyped-decorator]
    async def heartbeat(self, **payload: Any) -> Any:
        await self._keep("Heartbeat", payload)
        return result201.Heartbeat(current_time=now())

    @on("StatusNotification")  # type: ignore[untyped-decorator]
    async def status(self, **payload: Any) -> Any:
        await self._keep("StatusNotification", payload)
        return result201.StatusNotification()

    @on("Authorize")  # type: ignore[untyped-decorator]
    async def authorize(self, id_token: dict[str, Any], **payload: Any) -> Any:
        await self._keep("Authorize", {"id_token": id_token, **payload})
        return result201.Authorize(id_token_info={"status": self.csms.tag_status(str(id_token.get("id_token")))})

    @on("TransactionEvent")  # type: ignore[untyped-decorator]
    async def transaction_event(self, **payload: Any) -> Any:
        await self._keep("TransactionEvent", payload)
        token = payload.get("id_token")
        if isinstance(token, dict):
            return result201.TransactionEvent(id_token_info={"status": self.csms.tag_status(str(token.get("id_token")))})
        return result201.TransactionEvent()


class Logins:
    """Basic auth against salted scrypt hashes, a verified password cached per charger."""

    def __init__(self, credentials: dict[str, tuple[bytes, bytes]]) -> None:
        self.credentials = credentials
        self.verified: dict[str, str] = {}
        self.checks = asyncio.Semaphore(CONCURRENT_PASSWORD_CHECKS)
        self.thread = ThreadPoolExecutor(CONCURRENT_PASSWORD_CHECKS, thread_name_prefix="scrypt")

    async def check(self, charge_box_id: str, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        record = self.credentials.get(charge_box_id)
        if user != charge_box_id or record is None:
            return False
        if self.verified.get(charge_box_id) == password:
            return True
        async with self.checks:
            ok = await asyncio.get_running_loop().run_in_executor(
                self.thread, verify_charger_password, password, record[0], record[1])
        if ok:
            self.verified[charge_box_id] = password
        return ok


async def serve_csms(port: int, credentials: dict[str, tuple[bytes, bytes]], log_path: Path,
                     id_tags: set[str] | None) -> None:
    store = DurableLog(log_path)
    csms = Csms(store, id_tags)
    logins = Logins(credentials)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)

    async def process_request(connection: ServerConnection, request: Request) -> Response | None:
        parts = request.path.strip("/").split("/")
        if len(parts) != 2 or parts[0] != "ocpp":
            return connection.respond(HTTPStatus.NOT_FOUND, "path must be /ocpp/{chargeBoxId}\n")
        if not await logins.check(parts[1], request.headers.get("Authorization")):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "bad credentials\n")
        return None

    async def handler(connection: ServerConnection) -> None:
        assert connection.request is not None
        charge_box_id = connection.request.path.strip("/").split("/")[1]
        station: Any = (Station201 if connection.subprotocol == "ocpp2.0.1" else Station16)(charge_box_id, connection)
        station.csms = csms
        try:
            await station.start()
        except Exception as exc:  # a closed connection ends the charge point
            log.debug("charger %s: %s", charge_box_id, exc)

    writer = asyncio.create_task(store.run())
    async with serve(handler, "127.0.0.1", port, subprotocols=["ocpp1.6", "ocpp2.0.1"],  # type: ignore[list-item]
                     process_request=process_request, max_size=MAX_MESSAGE_BYTES, ping_interval=None,
                     open_timeout=60) as server:
        print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)  # --port 0: the one picked
        await stop.wait()
        server.close()
    writer.cancel()
    print(json.dumps({"records": store.records, "fsyncs": store.fsyncs}), flush=True)
    store.close()


def load_credentials(path: Path) -> dict[str, tuple[bytes, bytes]]:
    table = json.loads(path.read_text())
    return {cid: (bytes.fromhex(salt), bytes.fromhex(digest)) for cid, (salt, digest) in table.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--credentials", type=Path, required=True, help="JSON {chargeBoxId: [salt hex, hash hex]}")
    parser.add_argument("--log", type=Path, required=True, help="the durable append log")
    parser.add_argument("--id-tags", default="", help="accepted idTags, comma-separated (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tags = {t for t in args.id_tags.split(",") if t} or None
    asyncio.run(serve_csms(args.port, load_credentials(args.credentials), args.log, tags))
    return 0


if __name__ == "__main__":
    sys.exit(main())
