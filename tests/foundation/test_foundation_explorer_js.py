"""The explorer's in-browser checks (devsen/explorer/static/js) against the Python reference,
differentially, under node (the same ES modules the browser loads): canonical ChargerEvent
decoding accepts exactly what `ChargerEvent.from_bytes` accepts, the vouch signer and the
body hash match `ocpp_adapter/vouching.py`, and the Merkle walk matches the shared vectors."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import msgpack
import pytest

from anchoring.merkle import MerkleTree, root_from_proof
from ocpp_adapter.events import ChargerEvent, EventEncodingError
from ocpp_adapter.vouching import ingress_domain, recovered_voucher, vouch
from primitives.eip712 import Domain, SigningKey

JS = Path(__file__).resolve().parents[2] / "devsen" / "explorer" / "static" / "js"
ANCHOR = bytes.fromhex("5fc8d32690cc91d4c39d9d3abcbd16989f875707")
DOMAIN = ingress_domain(Domain(31337, ANCHOR))
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is installed by the toolchain setup")

SCRIPT = """
import { hex, keccak, unhex, concat } from '%(js)s/bytes.js';
import { parseEvent } from '%(js)s/verify.js';
import { recoverAddress, typedDigest, domainSeparator } from '%(js)s/eth.js';
import { addressWord, toBigInt, word } from '%(js)s/bytes.js';
const cases = JSON.parse(process.argv[1]);
const sep = domainSeparator('DEVSEN Ingress', '1', 31337, unhex('0x%(anchor)s'));
const out = { events: [], merkle: [] };
for (const c of cases.events) {
  try {
    const e = parseEvent(unhex(c));
    let signer = null;
    if (e.signature.length) {
      const digest = typedDigest(sep, 'ChargerEventVouch(bytes32 bodyHash,uint128 connectionId,address ingressNode)',
        [e.bodyHash, word(toBigInt(e.connectionId)), addressWord(e.ingress)]);
      try { signer = hex(recoverAddress(digest, e.signature)); } catch { signer = null; }
    }
    out.events.push({ ok: true, body: hex(e.bodyHash), signer });
  } catch (exc) { out.events.push({ ok: false, error: exc.message }); }
}
for (const m of cases.merkle) {
  let h = keccak(concat(new Uint8Array([0]), unhex(m.event_id)));
  m.proof.forEach((s, k) => {
    h = (BigInt(m.directions) >> BigInt(k)) & 1n ? keccak(concat(new Uint8Array([1]), unhex(s), h))
      : keccak(concat(new Uint8Array([1]), h, unhex(s)));
  });
  out.merkle.push(hex(h));
}
console.log(JSON.stringify(out));
"""


def _run(cases: dict[str, Any]) -> dict[str, Any]:
    assert NODE is not None
    script = SCRIPT % {"js": JS.as_posix(), "anchor": ANCHOR.hex()}
    done = subprocess.run([NODE, "--input-type=module", "-e", script, json.dumps(cases)], capture_output=True,
                          text=True, timeout=60, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _event_variants() -> list[bytes]:
    key = SigningKey(bytes.fromhex("11" * 32))
    base = ChargerEvent("CP-1", "1.6", "StartTransaction", "m-1",
                        {"connectorId": 1, "idTag": "TAG-1", "meterStart": 2_000, "timestamp": "2026-01-01T00:00:00Z",
                         "ratio": 0.5, "big": 2**40, "neg": -70_000, "nested": [{"b": 1, "a": [None, True]}],
                         "ünï": "çødé", "zz": ""},
                        "", 1_795_000_000_123, b"\x01" * 16)
    signed = vouch(base, key, DOMAIN).to_bytes()
    fields = msgpack.unpackb(signed, raw=False)
    variants = [signed, base.to_bytes()]
    variants.append(signed.replace(b"\xa4CP-1", b"\xd9\x04CP-1", 1))  # str8 for a short string
    variants.append(signed[:1] + b"\xcc\x02" + signed[2:])  # uint8 for the version 2
    variants.append(signed + b"\x00")  # trailing byte
    variants.append(b"\x9b" + signed[1:] + b"\xc0")  # 11 fields
    unsorted = dict(reversed(list(fields[5].items())))
    variants.append(msgpack.packb([*fields[:5], unsorted, *fields[6:]], use_bin_type=True))  # map keys unsorted
    plain = {**fields[5], "idTag": "PLAINTEXT"}
    variants.append(msgpack.packb([*fields[:5], dict(sorted(plain.items())), *fields[6:]], use_bin_type=True))
    as_float32 = msgpack.packb([*fields[:5], {**fields[5], "ratio": 0.5}, *fields[6:]], use_bin_type=True,
                               use_single_float=True)
    variants.append(as_float32)
    variants.append(msgpack.packb([*fields[:2], "1.5", *fields[3:]], use_bin_type=True))  # unknown OCPP version
    variants.append(msgpack.packb([*fields[:8], b"\x01" * 15, fields[9]], use_bin_type=True))  # short connection id
    variants.append(signed[:-1] + bytes([55 - signed[-1]]))  # v 27 <-> 28: another signer (or none)
    variants.append(signed[:-1] + b"\x05")  # v neither 27 nor 28: no signer
    variants.append(b"\x9a\x02" + b"\xff" * 8)  # garbage
    return variants


def test_js_accepts_exactly_the_canonical_events_and_recovers_the_same_voucher() -> None:
    variants = _event_variants()
    merkle_ids = [bytes([i]) * 32 for i in range(1, 8)]
    tree = MerkleTree(merkle_ids)
    proofs = [tree.proof(i) for i in range(len(merkle_ids))]
    result = _run({"events": ["0x" + v.hex() for v in variants],
                   "merkle": [{"event_id": "0x" + e.hex(), "proof": ["0x" + s.hex() for s in p.siblings],
                               "directions": p.directions} for e, p in zip(merkle_ids, proofs, strict=True)]})
    for data, js in zip(variants, result["events"], strict=True):
        try:
            event = ChargerEvent.from_bytes(data)
        except EventEncodingError as exc:
            assert not js["ok"], (data.hex(), str(exc))
            continue
        assert js["ok"], (data.hex(), js)
        assert js["body"] == "0x" + event.body_hash.hex()
        signer = recovered_voucher(event, DOMAIN) if event.signature else None
        assert js["signer"] == ("0x" + signer.hex() if isinstance(signer, bytes) else None), js
    assert sum(1 for j in result["events"] if j["ok"]) == 4  # signed, unsigned, and the two altered-v ones
    for event_id, proof, js_root in zip(merkle_ids, proofs, result["merkle"], strict=True):
        assert js_root == "0x" + root_from_proof(event_id, proof).hex() == "0x" + tree.root.hex()


OPERATOR_SCRIPT = """
import { hex, unhex } from '%(js)s/bytes.js';
import { parseEvent, vouchCheck } from '%(js)s/verify.js';
import { domainSeparator } from '%(js)s/eth.js';
const [events, validator, operator] = JSON.parse(process.argv[1]);
const chain = {
  ingressSeparator: domainSeparator('DEVSEN Ingress', '1', 31337, unhex('0x%(anchor)s')),
  validatorsInForce: async () => ({ epoch: 0, addresses: [validator] }),
  operatorsAt: async (ethBlock) => (ethBlock >= 4 ? [operator] : []),  // registered at Ethereum block 4
};
const out = [];
for (const [bytes, ethBlock] of events) {
  const c = await vouchCheck(parseEvent(unhex("0x" + bytes)), chain, 1, new Uint8Array(32), null, ethBlock);
  out.push(c.ok);
}
console.log(JSON.stringify(out));
"""


def test_js_vouch_check_accepts_an_operator_registered_at_the_blocks_ethereum_block() -> None:
    """The browser's vouch check, like `audit verify`: a validator's vouch, or a registered
    operator's at the Ethereum block the event's own block names; a stranger's never."""
    assert NODE is not None
    validator, operator, stranger = (SigningKey(bytes([b]) * 32) for b in (0x21, 0x22, 0x23))
    base = ChargerEvent("CP-1", "1.6", "Heartbeat", "m-op", {}, "", 1_795_000_000_123, b"\x01" * 16)
    by = {k: vouch(base, key, DOMAIN).to_bytes().hex() for k, key in
          (("validator", validator), ("operator", operator), ("stranger", stranger))}
    cases = [[by["validator"], 5], [by["operator"], 5], [by["operator"], 3], [by["stranger"], 5], [by["operator"], None]]
    script = OPERATOR_SCRIPT % {"js": JS.as_posix(), "anchor": ANCHOR.hex()}
    done = subprocess.run([NODE, "--input-type=module", "-e", script,
                           json.dumps([cases, "0x" + validator.address.hex(), "0x" + operator.address.hex()])],
                          capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(done.stdout) == [True, True, False, False, False]
