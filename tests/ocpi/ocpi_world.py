"""A small world for the OCPI unit tests: ledger-shaped records, a fake ledger and chain
(fakes inside this layer's unit tests only; tests/e2e/test_e2e_ocpi.py runs the real thing)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from anchoring.chain.client import DeviceRecord as ChainDevice
from devsen.api_routes import ReadSources
from devsen.ledger import Ledger
from devsen.ledger.state import ClosedTransaction, ConnectorStatus, DeviceRecord, Session
from devsen.ocpi.mapping import Party
from devsen.ocpi.routes import OcpiApi
from devsen.ocpi.store import CredentialsStore

T0_MS = 1_796_000_000_000  # 2026-11-30
PARTY = Party()
CHARGER = "CP-BERLIN-1"
LONG_CHARGER = "X" * 50  # longer than an OCPI id: gets the hash form
TAG_HASH = bytes.fromhex("ab" * 32)
ESCROW = bytes.fromhex("5e" * 32)


def chain_device(charger_id: str, location: str = "52.520008,13.404954;connectors=CCS2+Type2;name=Depot 4;"
                 "address=Alexanderplatz 1;city=Berlin;postal_code=10178", **kw: Any) -> ChainDevice:
    values: dict[str, Any] = dict(device_id=b"\x01" * 32, charge_box_id=charger_id, manager="0x" + "11" * 20,
                                  location=location, connector_count=2, price_per_kwh=300_000, per_minute_fee=10_000,
                                  auth_salt=b"", auth_hash=b"", charger_public_key=b"", active=True,
                                  max_power_w=22_000)
    values.update(kw)
    return ChainDevice(**values)


def device_record(charger_id: str = CHARGER, statuses: tuple[tuple[str, str, int], ...] = (
        ("1", "Available", T0_MS + 1_000), ("2", "Charging", T0_MS + 2_000))) -> DeviceRecord:
    return DeviceRecord(charger_id, 1, boot_status="Accepted", last_boot_ms=T0_MS,
                        connectors=tuple(ConnectorStatus(c, s, "NoError", ms) for c, s, ms in statuses))


def open_session(charger_id: str = CHARGER, tx_ref: str = "7", bound: bool = True) -> Session:
    return Session(charger_id, tx_ref, "1.6", 2, 10, T0_MS + 2_000, id_tag_hash=TAG_HASH,
                   escrow_session_id=b"\x6f" * 32 if bound else b"", deposit=10**7, price_per_kwh=300_000,
                   charge_start_ms=T0_MS + 2_500, meter_start_wh=1_000, meter_last_wh=4_500,
                   last_block_ms=T0_MS + 9_000)


def escrow_view(session_id: bytes, state: str = "settled", opened_s: int = T0_MS // 1000,
                settled_s: int | None = T0_MS // 1000 + 1_800) -> dict[str, Any]:
    """What devsen/api_routes.py chain_session_reader answers for a session."""
    return {"state": state, "escrow_session_id": "0x" + session_id.hex(), "device_id": "0x" + "01" * 32,
            "connector_id": 1, "id_tag_hash": "0x" + TAG_HASH.hex(), "deposit": "10000000", "energy_wh": 12_000,
            "amount": "3600000", "opened_at_s": opened_s, "price_per_kwh": "300000", "per_minute_fee": "0",
            "settlement_tx": "0x" + "77" * 32 if settled_s else None, "settled_at_s": settled_s}


@dataclass
class FakeLedger:
    """The read surface of devsen.ledger.Ledger that the OCPI routes use."""

    height: int = 42
    block_ms: int = T0_MS + 60_000
    records: list[DeviceRecord] = field(default_factory=list)
    sessions: list[Session] = field(default_factory=list)
    closed: list[tuple[str, str, ClosedTransaction]] = field(default_factory=list)

    def counters(self) -> dict[str, int]:
        return {"height": self.height, "block_ms": self.block_ms}

    def devices(self) -> tuple[DeviceRecord, ...]:
        return tuple(self.records)

    def device(self, charger_id: str) -> DeviceRecord | None:
        return next((r for r in self.records if r.charger_id == charger_id), None)

    def open_sessions(self) -> tuple[Session, ...]:
        return tuple(self.sessions)

    def closed_transactions(self) -> tuple[tuple[str, str, ClosedTransaction], ...]:
        return tuple(self.closed)


@dataclass
class FakeChain:
    devices: dict[str, ChainDevice] = field(default_factory=dict)
    sessions: dict[bytes, dict[str, Any]] = field(default_factory=dict)
    reads: int = 0

    def device(self, charger_id: str, block: int) -> ChainDevice | None:
        self.reads += 1
        return self.devices.get(charger_id)

    def session(self, session_id: bytes, block: int) -> dict[str, Any] | None:
        self.reads += 1
        return self.sessions.get(session_id)


def world(tmp: Path) -> tuple[FakeLedger, FakeChain, OcpiApi]:
    """A ledger with one charger in Berlin (plus one without coordinates), an open session and a
    settled one; an OcpiApi over them with a fresh credentials store."""
    ledger = FakeLedger(records=[device_record(), device_record("NOWHERE-1")],
                        sessions=[open_session()],
                        closed=[(CHARGER, "6", ClosedTransaction(5, "settled", 12_000, 3_600_000, ESCROW)),
                                (CHARGER, "5", ClosedTransaction(4, "rejected"))])
    chain = FakeChain(devices={CHARGER: chain_device(CHARGER), "NOWHERE-1": chain_device("NOWHERE-1", "devnet")},
                      sessions={ESCROW: escrow_view(ESCROW)})
    sources = ReadSources(ledger=cast(Ledger, ledger), eth_block=lambda: 1234, block=lambda h: None,
                          last_batch=lambda: None, batch=lambda b: None, validators=lambda: (0, ()),
                          chain_device=chain.device, chain_validators=lambda b: (), chain_session=chain.session)
    return ledger, chain, OcpiApi(sources, CredentialsStore(tmp / "ocpi.sqlite"), PARTY)
