"""`devsen ocpi`: the operator's side of the OCPI credentials handshake.

  devsen ocpi token create --config node.toml [--json]   a new CREDENTIALS_TOKEN_A (single use)
  devsen ocpi token revoke --config node.toml             void every unused registration token
  devsen ocpi parties --config node.toml [--json]         registered roaming partners

Give a partner the token and the versions URL printed, out of band; it registers with
POST /ocpi/2.2.1/credentials. The store is `<node.data_dir>/ocpi.sqlite` (node-local).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from devsen.config import ConfigError, NodeConfig, load_config
from devsen.fmt import iso_time
from devsen.ocpi import open_store
from devsen.ocpi.routes import PREFIX, encode_token
from devsen.ocpi.store import StoreFull


def versions_url(config: NodeConfig) -> str:
    base = config.ocpi.public_url.rstrip("/") or f"http://{config.http.host}:{config.http.port}"
    return base + PREFIX + "/versions"


def ocpi_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="devsen ocpi", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    token = sub.add_parser("token", help="registration tokens (CREDENTIALS_TOKEN_A)")
    token.add_argument("action", choices=["create", "revoke"])
    parties = sub.add_parser("parties", help="registered roaming partners")
    for p in (token, parties):
        p.add_argument("--config", required=True, help="the node's TOML file")
        p.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(list(argv))
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"devsen ocpi: {exc}", file=sys.stderr)
        return 2
    store = open_store(config.ocpi, Path(config.node.data_dir))
    try:
        if args.command == "parties":
            rows = store.parties()
            if args.json:
                print(json.dumps(rows, indent=2))
            for row in [] if args.json else rows:
                roles = ", ".join(f"{r['role']} {r['country_code']}*{r['party_id']}" for r in row["roles"])
                print(f"{row['party']}  {roles}  versions {row['url']}  registered {iso_time(row['created_s'])}")
            if not rows and not args.json:
                print("no registered parties")
            return 0
        if args.action == "revoke":
            count = store.revoke_registration_tokens()
            print(json.dumps({"revoked": count}) if args.json else f"revoked {count} unused registration token(s)")
            return 0
        try:
            new = store.create_registration_token()
        except StoreFull as exc:
            print(f"devsen ocpi: {exc}", file=sys.stderr)
            return 1
        url = versions_url(config)
        if args.json:
            print(json.dumps({"token": new, "authorization": encode_token(new), "versions_url": url}))
        else:
            print(f"registration token (CREDENTIALS_TOKEN_A, single use): {new}\n"
                  f"Authorization header:                                {encode_token(new)}\n"
                  f"versions URL:                                        {url}\n"
                  "Give both to the partner out of band; it registers with POST .../credentials.")
        return 0
    finally:
        store.close()
