"""devsen/ocpi/store.py and the [ocpi] config: tokens are single-use and hashed, parties bounded,
the file private; a bad config key gets an error naming it."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from devsen.config import ConfigError, config_from_mapping
from devsen.ocpi import open_store
from devsen.ocpi.store import PARTY, REGISTRATION, CredentialsStore, StoreFull, token_hash

CREDS = {"token": "b" * 20, "url": "http://127.0.0.1:1/v", "roles": []}


def test_registration_token_is_single_use_and_stored_hashed(tmp_path: Path) -> None:
    store = CredentialsStore(tmp_path / "ocpi.sqlite")
    token = store.create_registration_token()
    grant = store.grant(token)
    assert grant is not None and grant.kind == REGISTRATION
    token_c = store.register(grant, "NL*MSP", CREDS)
    assert store.grant(token) is None
    party = store.grant(token_c)
    assert party is not None and (party.kind, party.party) == (PARTY, "NL*MSP")
    with pytest.raises(KeyError):
        store.register(grant, "NL*OTH", CREDS)  # a used token registers nobody
    data = (tmp_path / "ocpi.sqlite").read_bytes() + (tmp_path / "ocpi.sqlite-wal").read_bytes()
    assert token.encode() not in data and token_c.encode() not in data and token_hash(token_c).encode() in data
    assert stat.S_IMODE((tmp_path / "ocpi.sqlite").stat().st_mode) == 0o600


def test_parties_are_bounded_and_unique(tmp_path: Path) -> None:
    store = CredentialsStore(tmp_path / "ocpi.sqlite", max_parties=2)
    grants = []
    for _ in range(4):
        grant = store.grant(store.create_registration_token())
        assert grant is not None
        grants.append(grant)
    store.register(grants[0], "NL*AAA", CREDS)
    with pytest.raises(KeyError):
        store.register(grants[1], "NL*AAA", CREDS)  # no take-over of a registered party
    store.register(grants[1], "NL*BBB", CREDS)
    with pytest.raises(StoreFull):
        store.register(grants[2], "NL*CCC", CREDS)
    assert store.grant(store.create_registration_token()) is not None  # the failed ones rolled back
    assert [p["party"] for p in store.parties()] == ["NL*AAA", "NL*BBB"]


def test_config_token_is_accepted_once_even_across_restarts(tmp_path: Path) -> None:
    config = config_from_mapping({"ocpi": {"registration_token": "operator-token-0123456789"}}, {}).ocpi
    store = open_store(config, tmp_path)
    grant = store.grant("operator-token-0123456789")
    assert grant is not None
    store.register(grant, "NL*MSP", CREDS)
    store.close()
    assert open_store(config, tmp_path).grant("operator-token-0123456789") is None  # a restart does not revive it


@pytest.mark.parametrize("key,value", [("party_id", "toolong"), ("country_code", "Germany"), ("currency", "euro"),
                                       ("registration_token", "short"), ("registration_token", "has space in it!!!"),
                                       ("public_url", "ftp://x"), ("max_parties", 0), ("time_zone", "../etc/passwd")])
def test_bad_ocpi_config_names_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"'ocpi.{key}'"):
        config_from_mapping({"ocpi": {key: value}}, {})
