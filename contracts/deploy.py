"""`python -m contracts.deploy --rpc URL --validators A,B,C --out deployment.json [--faucet]`:
deploy every DEVSEN contract (the same command as `devsen chain deploy`)."""

from __future__ import annotations

import sys

from anchoring.chain.deploy import deploy_main

if __name__ == "__main__":
    raise SystemExit(deploy_main(sys.argv[1:]))
