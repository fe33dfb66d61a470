"""OCPI 2.2.1 CPO (Sender) interface of a DEVSEN node: see devsen/ocpi/README.md.

`ocpi_router(sources, config, data_dir)` is what devsen/node.py includes in its Router.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter

from devsen.api_routes import ReadSources
from devsen.config import OcpiSection
from devsen.ocpi.mapping import Party
from devsen.ocpi.routes import OcpiApi, ocpi_routes
from devsen.ocpi.store import STORE_FILE, CredentialsStore


def party_of(config: OcpiSection) -> Party:
    return Party(config.country_code, config.party_id, config.currency, config.country, config.time_zone,
                 config.business_name)


def open_store(config: OcpiSection, data_dir: Path) -> CredentialsStore:
    """The node's credentials store; `ocpi.registration_token` (if set) is accepted once."""
    store = CredentialsStore(data_dir / STORE_FILE, config.max_parties)
    if config.registration_token:
        store.add_registration_token(config.registration_token)
    return store


def ocpi_router(sources: ReadSources, config: OcpiSection, data_dir: Path) -> APIRouter:
    return ocpi_routes(OcpiApi(sources, open_store(config, data_dir), party_of(config), config.public_url))
