"""The DEVSEN node: config, wiring, deterministic charging ledger, CLI, HTTP API, devnet."""

__version__ = "0.1.0"
