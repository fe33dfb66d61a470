"""A lone surrogate escape in a frame is a framing error with a CALLERROR, not a dropped
connection (found in review): the strict parser refuses strings UTF-8 cannot encode."""

import pytest

from ocpp_adapter.events import ChargerEvent, EventEncodingError
from ocpp_adapter.protocol import loads_strict


@pytest.mark.parametrize("frame", [
    '[2,"a1","BootNotification",{"chargePointVendor":"\\ud800","chargePointModel":"m"}]',
    '[2,"x","Foo\\ud800",{}]',
    '[2,"x","Heartbeat",{"\\udfff":1}]',
])
def test_lone_surrogates_are_unreadable(frame: str) -> None:
    with pytest.raises(Exception) as info:
        loads_strict(frame)
    assert "Unicode" in str(info.value)


def test_event_encoding_refuses_surrogates_with_its_own_error() -> None:
    event = ChargerEvent("CP", "1.6", "DataTransfer", "m1", {"vendorId": "\ud800"}, "", 1)
    with pytest.raises(EventEncodingError):
        event.to_bytes()
