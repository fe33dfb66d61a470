"""Run the OCPP endpoint alone, with the in-memory ingest (`devsen ocpp-serve`)."""

from __future__ import annotations

import argparse
import logging

import trio

from ocpp_adapter.auth import InMemoryChargerRegistry
from ocpp_adapter.config import OcppServerConfig
from ocpp_adapter.memory_ingest import MemoryIngest
from ocpp_adapter.server import serve_ocpp
from primitives.credentials import return_scrypt_buffers_to_the_os


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="devsen ocpp-serve", description="OCPP-J 1.6/2.0.1 endpoint with in-memory replies")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000, help="0 picks a free port")
    p.add_argument("--version-list", default="ocpp2.0.1,ocpp1.6", help="subprotocols, comma-separated")
    p.add_argument("--chargers", metavar="FILE", help="TOML: chargeBoxId = \"password\"")
    p.add_argument("--security-profile", type=int, choices=(0, 1, 2), default=1)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--id-tags", default=None, help="accepted idTags, comma-separated (default: accept all)")
    p.add_argument("--heartbeat-interval", type=int, default=300)
    p.add_argument("--node-name", default="standalone")
    p.add_argument("--messages-per-second", type=float, default=20.0)
    p.add_argument("--max-connections", type=int, default=10_000)
    p.add_argument("--log-level", default="INFO")
    return p


async def run_standalone(argv: list[str]) -> int:
    """Parse `argv`, serve until cancelled (Ctrl-C). Returns a process exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return_scrypt_buffers_to_the_os()  # logins hash passwords in worker threads
    try:
        config = OcppServerConfig(
            host=args.host, port=args.port, node_name=args.node_name,
            subprotocols=tuple(s.strip() for s in args.version_list.split(",") if s.strip()),
            security_profile=args.security_profile, tls_cert=args.tls_cert, tls_key=args.tls_key,
            messages_per_second=args.messages_per_second, burst_messages=max(1, int(args.messages_per_second * 2)),
            max_connections=args.max_connections,
        )
        registry = InMemoryChargerRegistry.from_toml(args.chargers) if args.chargers else InMemoryChargerRegistry()
    except (ValueError, OSError) as exc:
        print(f"ocpp-serve: {exc}")
        return 2
    if config.security_profile > 0 and len(registry) == 0:
        print("ocpp-serve: no chargers can connect: give --chargers FILE or --security-profile 0")
        return 2
    id_tags = None if args.id_tags is None else [t.strip() for t in args.id_tags.split(",") if t.strip()]
    ingest = MemoryIngest(id_tags=id_tags, heartbeat_interval=args.heartbeat_interval)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_ocpp, config, ingest, registry)
        print(f"OCPP endpoint: {config.scheme}://{config.host}:{port}{config.path_prefix}{{chargeBoxId}}", flush=True)
    return 0


def main() -> None:
    """`python -m ocpp_adapter.standalone ...`"""
    import sys

    try:
        raise SystemExit(trio.run(run_standalone, sys.argv[1:]))
    except KeyboardInterrupt:
        raise SystemExit(0) from None


if __name__ == "__main__":
    main()
