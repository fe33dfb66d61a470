"""Vouching: every ChargerEvent is signed by the node that authenticated the charger: a
validator, or a full node registered on chain as an operator of the network.

The ingress validator signs, with its secp256k1 validator key, the EIP-712 digest of

    ChargerEventVouch(bytes32 bodyHash,uint128 connectionId,address ingressNode)

under the domain "DEVSEN Ingress", version "1", the network's chain id and the Anchor
contract (where the events' Merkle roots are anchored). `bodyHash` is keccak-256 of the
event's canonical bytes without the signature, so it covers the charger id (the identity
the connection authenticated as), the payload, the receive time, the ingress address and
the connection id. A forged or altered event thus either fails to verify or is signed by
(and so costs the identity of) the validator that forged it.

`vouch_problem` is the one pure check, used by mempool admission and block validation;
`VouchCache` remembers recovered signers (bounded) so each signature is recovered once.
It sits with the event format, below the node (which signs and admits) and the audit
(which verifies), so both share one check.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection

from ocpp_adapter.events import ChargerEvent
from primitives.eip712 import Domain, SignatureError, SigningKey, recover_address, typed_digest

VOUCH_TYPE = "ChargerEventVouch(bytes32 bodyHash,uint128 connectionId,address ingressNode)"
INGRESS_DOMAIN_NAME = "DEVSEN Ingress"
MAX_CACHED_VOUCHES = 65_536


def ingress_domain(anchor_domain: Domain) -> Domain:
    """The vouching domain of a network: its chain id and Anchor contract, name "DEVSEN Ingress"."""
    return Domain(anchor_domain.chain_id, anchor_domain.verifying_contract, name=INGRESS_DOMAIN_NAME)


def vouch_digest(event: ChargerEvent, domain: Domain) -> bytes:
    """The 32-byte typed digest the ingress validator signs for `event`."""
    return typed_digest(domain, VOUCH_TYPE,
                        (event.body_hash, int.from_bytes(event.connection_id, "big"), event.ingress_address))


def vouch(event: ChargerEvent, key: SigningKey, domain: Domain) -> ChargerEvent:
    """`event` named as received by `key`'s validator and signed by it."""
    named = event.with_vouch(key.address, b"")  # the signature is not part of the body hash
    return named.with_vouch(key.address, key.sign(vouch_digest(named, domain)))


def recovered_voucher(event: ChargerEvent, domain: Domain) -> bytes | str:
    """The 20-byte address that signed `event`'s vouch, or why there is none (a str)."""
    if not event.signature or not event.ingress_node:
        return "the event is not vouched for (no ingress validator signature)"
    try:
        return recover_address(vouch_digest(event, domain), event.signature)
    except SignatureError as exc:
        return f"the ingress signature is malformed: {exc}"


def vouch_problem(event: ChargerEvent, domain: Domain, validators: Collection[bytes],
                  signer: bytes | str | None = None, operators: Collection[bytes] = ()) -> str | None:
    """Why `event` is not vouched for by a current validator or a registered operator (a full
    node accepting chargers, ValidatorSet.operators()), or None if it is.

    `signer` is an already recovered voucher (from `recovered_voucher`), to skip recovery.
    """
    if signer is None:
        signer = recovered_voucher(event, domain)
    if isinstance(signer, str):
        return signer
    if signer != event.ingress_address:
        return f"the event names ingress {event.ingress_node} but is signed by 0x{signer.hex()}"
    if signer not in validators and signer not in operators:
        return f"the ingress {event.ingress_node} is not a current validator nor a registered operator"
    return None


class VouchCache:
    """`vouch_problem` with each event's signer recovered once (an LRU of event id -> signer).

    The event id covers the signature, so a cached signer is exactly what recovery would give;
    validator membership is checked on every call (the set changes at epochs).
    """

    def __init__(self, domain: Domain, limit: int = MAX_CACHED_VOUCHES) -> None:
        self.domain = domain
        self.limit = limit
        self._signers: OrderedDict[bytes, bytes | str] = OrderedDict()
        self._lock = threading.Lock()  # `signer` may run in worker threads

    def _keep(self, key: bytes, signer: bytes | str) -> None:
        with self._lock:
            self._signers[key] = signer
            if len(self._signers) > self.limit:
                self._signers.popitem(last=False)

    def signer(self, event: ChargerEvent) -> bytes | str:
        """`event`'s recovered voucher (`recovered_voucher`), recovered once; callable from a
        worker thread (recovery releases the GIL, so the node recovers off its event loop)."""
        key = event.event_id
        with self._lock:
            signer = self._signers.get(key)
            if signer is not None:
                self._signers.move_to_end(key)
                return signer
        signer = recovered_voucher(event, self.domain)
        self._keep(key, signer)
        return signer

    def remember_own(self, event: ChargerEvent, key: SigningKey) -> ChargerEvent:
        """`event` vouched for by this node's `key` (`vouch`), its signer remembered as `key`'s
        address: the node's own events are admitted without recovering what it just signed (the
        signature is deterministic and low-s, so recovery gives exactly that address)."""
        vouched = vouch(event, key, self.domain)
        self._keep(vouched.event_id, key.address)
        return vouched

    def problem(self, event: ChargerEvent, validators: Collection[bytes],
                operators: Collection[bytes] = ()) -> str | None:
        """Why `event` is not vouched for by one of `validators` or `operators`, or None."""
        return vouch_problem(event, self.domain, validators, self.signer(event), operators)
