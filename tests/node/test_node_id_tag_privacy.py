"""A Byzantine validator leaking plaintext idTags cannot get them into a block (issue 10, item 8).

It signs (vouches for) an event whose payload carries the plaintext idTag, bypassing the
ChargerEvent constructor that hashes it: admission refuses the bytes and so does every
honest validator's block validation, whatever the signature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_node_app import ANCHOR, KEYS, block, make_app

from ocpp_adapter.events import ChargerEvent, EventEncodingError, hashed_id_tag
from ocpp_adapter.vouching import ingress_domain, vouch, vouch_digest

DOMAIN = ingress_domain(ANCHOR)
TAG = "04A2B3C4D5E6F7"


def leaked(payload: dict[Any, Any]) -> bytes:
    """Validator KEYS[0]'s well-signed encoding of an Authorize whose payload is `payload` as given."""
    event = ChargerEvent("CP-1", "1.6", "Authorize", "leak-1", {"idTag": TAG}, "", 1_700_000_000_000,
                         b"\x07" * 16).with_vouch(KEYS[0].address, b"")
    object.__setattr__(event, "payload", payload)  # what the constructor never lets through
    object.__setattr__(event, "signature", KEYS[0].sign(vouch_digest(event, DOMAIN)))
    return event.to_bytes()


@pytest.mark.parametrize("value", [TAG, hashed_id_tag(TAG)[:-1], hashed_id_tag(TAG).upper()])
def test_plaintext_or_malformed_id_tag_refused_at_admission_and_in_blocks(tmp_path: Path, value: Any) -> None:
    app, *_ = make_app(tmp_path)

    def valid(b: Any) -> bool:
        return app.process_proposal(b, app.fetch_facts(b.height, b.app_header, b.payloads))

    data = leaked({"idTag": value})
    if value == TAG:
        assert TAG.encode() in data  # the leak is real: the plaintext is in the signed bytes
    with pytest.raises(EventEncodingError, match="plaintext idTag"):
        ChargerEvent.from_bytes(data)
    refusal = app.check_tx(data)
    assert not refusal.ok and "plaintext idTag" in refusal.reason
    assert not valid(block(app, 1, (data,)))
    honest = vouch(ChargerEvent("CP-1", "1.6", "Authorize", "ok-1", {"idTag": TAG}, "", 1_700_000_000_000,
                                b"\x07" * 16), KEYS[1], DOMAIN).to_bytes()
    assert TAG.encode() not in honest and app.check_tx(honest).ok
    assert valid(block(app, 1, (honest,)))
    assert not valid(block(app, 1, (honest, data)))  # one leaked tag spoils the block
