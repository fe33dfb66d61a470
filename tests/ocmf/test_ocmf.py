"""OCMF parsing and verification, cross-checked against the independent `pyocmf` package and
against published example documents (the OCMF specification's example file; a signed
example with its meter key from a public OCMF verifier's documentation)."""

from __future__ import annotations

import json
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ocpp_adapter import ocmf

# A published signed example (ECDSA-secp256r1-SHA256) with the meter's public key (DER SPKI hex).
PUBLISHED_KEY = (
    "3059301306072A8648CE3D020106082A8648CE3D03010703420004EF1766AFD940A49FBA863779837F394EB053BF87DB529DE"
    "69FDDE8B32485D7AD715CD8F291656B1DEAA29337A65E4B1B7F9F2808E4E53019B867D4C9294948C9"
)
PUBLISHED_DOC = (
    'OCMF|{"FV":"1.0","GI":"TEST","GS":"1234567","GV":"1.0.0","PG":"T1","MV":"MV","MM":"MM","MS":"1234567",'
    '"MF":"1.0","IS":true,"IL":"VERIFIED","IF":["RFID_PLAIN","OCPP_RS_TLS"],"IT":"ISO14443","ID":"2AB46E883AD3BB",'
    '"CI":"CSONE","CT":"CBIDC","RD":[{"TM":"2025-06-14T08:49:47,642+0100 S","TX":"B","RV":0.56698,"RI":"1-b",'
    '"RU":"kWh","EI":1523,"ST":"G"},{"TM":"2025-06-14T11:49:47,642+0100 S","TX":"E","RV":8.36706,"RI":"1-b",'
    '"RU":"kWh","EI":1523,"ST":"G"}]}|{"SA":"ECDSA-secp256r1-SHA256","SD":"3045022100DB41C0B8AC1580F274574DC8A5C9'
    'AD856C1A4B0D5BF2252D119F55202E363968022053BD9DBE36DF6EF1F712C76A0E12F80E8B7E614683375C046371871E128B9BA3"}'
)
# The OCMF specification's "Example File" (its SD is a placeholder, not a signature).
SPEC_EXAMPLE = """OCMF|{
    "FV": "1.4", "GI": "ABL SBC-301", "GS": "808829900001", "GV": "1.4p3", "PG": "T12345",
    "MV": "Phoenix Contact", "MM": "EEM-350-D-MCB", "MS": "BQ27400330016", "MF": "1.0",
    "IS": true, "IL": "VERIFIED", "IF": ["RFID_PLAIN", "OCPP_RS_TLS"], "IT": "ISO14443", "ID": "1F2D3A4F5506C7",
    "TT": "Tarif 1", "LC": {"LN": "cable_name", "LI": 1, "LR": 2, "LU": "mOhm"},
    "RD": [
        {"TM": "2018-07-24T13:22:04,000+0200 S", "TX": "B", "RV": 2935.600, "RI": "01-0B:01.08.00*FF",
         "RU": "kWh", "RT": "DC", "EF": "", "ST": "G"},
        {"TM": "2018-07-24T13:26:04,000+0200 S", "TX": "E", "RV": 2965.100, "CL": 0.5,
         "RI": "01-0B:01.08.00*FF", "RU": "kWh", "RT": "DC", "EF": "", "ST": "G"},
        {"TM": "2018-07-24T13:22:04,000+0200 S", "TX": "B", "RV": 2905.600, "RI": "01-0B:B1.08.00*FF",
         "RU": "kWh", "RT": "DC", "EF": "", "ST": "G"}
    ]
}|{
    "SD": "1234567890ABCDEF1234567890ABCDEF1234567890ABCDEF1234567890ABCDEF1234567890ABCDEF1234567890ABCDEF"
}"""
# Readings that omit TM/TX inherit them from the previous reading (a published LEM DCBM document).
LEM_DOC = (
    'OCMF|{"FV":"1.0","GI":"LEM DCBM","GS":"1211751603","GV":"v1","PG":"T144","MV":"LEM","MS":"1211751603",'
    '"MF":"MU-0.1.4.0_SU-0.0.8.0","IS":true,"IL":"HEARSAY","IF":["RFID_RELATED","OCPP_AUTH_TLS","ISO15118_NONE",'
    '"PLMN_NONE"],"IT":"ISO14443","ID":"5EEFE0C7F64B050E9FB95C","CT":"EVSEID","CI":"458877","RD":[{"TM":'
    '"2021-10-06T13:13:56,000+0200 R","TX":"B","RV":57.584,"RI":"1-0:1.8.0","RU":"kWh","RT":"DC","EF":"","ST":"G",'
    '"UC":{"UN":"No_Comp","UI":2,"UR":0}},{"RV":4.405,"RI":"1-0:2.8.0","RU":"kWh","ST":"G"},{"TM":'
    '"2021-10-06T13:15:13,000+0200 R","TX":"E","RV":58.685,"RI":"1-0:1.8.0","RU":"kWh","ST":"G"},{"RV":4.405,'
    '"RI":"1-0:2.8.0","RU":"kWh","ST":"G"}]}|{"SA":"ECDSA-secp256r1-SHA256","SD":"3045022100E1C80E7115294A3A4D10'
    'CFF8B94E959F941415E19A0913A0538312E585E1A37702200A2BE1B235C152CFC7555064A96533F192A8A1D4E0484C68FD46574947A3D9BA"}'
)
CURVES = {
    "ECDSA-secp256r1-SHA256": ec.SECP256R1(),
    "ECDSA-secp384r1-SHA256": ec.SECP384R1(),
    "ECDSA-brainpoolP256r1-SHA256": ec.BrainpoolP256R1(),  # the spec's synonym of brainpool256r1
    "ECDSA-brainpool384r1-SHA256": ec.BrainpoolP384R1(),
}


def _der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _doc(key: ec.EllipticCurvePrivateKey, algorithm: str, wh: int = 12_345, pg: int = 7) -> str:
    body = ocmf.payload_json(meter_serial="M-1", pagination=pg, id_data="04A1B2C3",
                             readings=[(1_767_225_600_000, "B", 1000), (1_767_229_200_000, "E", wh)])
    return ocmf.sign(body, key, algorithm)


def test_published_example_verifies_and_reads_exactly() -> None:
    doc = ocmf.parse_and_verify(PUBLISHED_DOC, bytes.fromhex(PUBLISHED_KEY))
    assert (doc.meter_serial, doc.pagination_kind, doc.pagination, doc.id_data) == ("1234567", "T", 1, "2AB46E883AD3BB")
    assert [(r.tx, r.wh()) for r in doc.readings] == [("B", 566), ("E", 8367)]
    assert doc.readings[0].time_ms == 1_749_887_387_642  # 08:49:47.642+01:00 = 07:49:47.642Z
    tampered = PUBLISHED_DOC.replace('"RV":8.36706', '"RV":9.36706')
    with pytest.raises(ocmf.OcmfError, match="does not verify"):
        ocmf.parse_and_verify(tampered, bytes.fromhex(PUBLISHED_KEY))


def test_spec_example_and_inheritance_parse() -> None:
    spec = ocmf.parse(SPEC_EXAMPLE)
    assert [r.wh() for r in spec.readings] == [2_935_600, 2_965_100, None]  # B1.08 is not the 1.8 register
    lem = ocmf.parse(LEM_DOC)
    assert [(r.tx, r.index, r.wh()) for r in lem.readings] == [
        ("B", "1-0:1.8.0", 57_584), ("B", "1-0:2.8.0", None), ("E", "1-0:1.8.0", 58_685), ("E", "1-0:2.8.0", None)]
    assert lem.readings[1].time_ms == lem.readings[0].time_ms


@pytest.mark.parametrize("algorithm", sorted(CURVES))
def test_cross_check_with_pyocmf(algorithm: str) -> None:
    pyocmf = pytest.importorskip("pyocmf")
    key = ec.generate_private_key(CURVES[algorithm])
    other = ec.generate_private_key(CURVES[algorithm])
    text = _doc(key, algorithm)
    der_hex = _der(key).hex()
    ours = ocmf.parse_and_verify(text, _der(key))
    if "384r1" in algorithm and "brainpool" in algorithm:  # pyocmf 0.6 cannot load brainpoolP384r1 keys
        with pytest.raises(ocmf.OcmfError):
            ocmf.parse_and_verify(text.replace('"RV":12345', '"RV":12346'), _der(key))
        return
    theirs = pyocmf.OCMF.from_string(text)
    assert theirs.verify_signature(der_hex) is True
    assert [float(r.RV) for r in theirs.payload.RD] == [float(r.value) for r in ours.readings]
    assert theirs.payload.MS == ours.meter_serial and theirs.payload.PG == "T7"
    for bad_text, bad_key in ((text.replace('"RV":12345', '"RV":12346'), key), (text, other)):
        with pytest.raises(ocmf.OcmfError):
            ocmf.parse_and_verify(bad_text, _der(bad_key))
        assert pyocmf.OCMF.from_string(bad_text).verify_signature(_der(bad_key).hex()) is False


def test_pyocmf_agrees_on_the_published_example() -> None:
    pyocmf = pytest.importorskip("pyocmf")
    assert pyocmf.OCMF.from_string(PUBLISHED_DOC).verify_signature(PUBLISHED_KEY) is True
    ocmf.verify(ocmf.parse(PUBLISHED_DOC), bytes.fromhex(PUBLISHED_KEY))


def test_key_on_another_curve_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    text = _doc(key, "ECDSA-secp256r1-SHA256")
    with pytest.raises(ocmf.OcmfError, match="key is on"):
        ocmf.parse_and_verify(text, _der(ec.generate_private_key(ec.SECP384R1())))
    with pytest.raises(ocmf.OcmfError, match="not DER"):
        ocmf.parse_and_verify(text, b"\x30\x03abc")


GOOD = PUBLISHED_DOC


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("OCMF|" + "x" * 9000, "characters"),
        ("OCMFX|{}|{}", "start with"),
        ("OCMF|{}", "payload"),
        (GOOD.replace('"PG":"T1"', '"PG":"Q1"'), "PG"),
        (GOOD.replace('"PG":"T1"', '"PG":"T99999999999"'), "PG"),
        (GOOD.replace('"RV":0.56698', '"RV":1e3'), "plain decimal"),
        (GOOD.replace('"RV":0.56698', '"RV":NaN'), "not a number"),
        (GOOD.replace('"RV":0.56698', '"RV":"0.5"'), "RV must be a number"),
        (GOOD.replace('"RV":0.56698', '"RV":1234567890123456789'), "plain decimal"),
        (GOOD.replace('"TX":"B"', '"TX":"Z"'), "TX"),
        (GOOD.replace("2025-06-14T08:49:47,642+0100 S", "2025-13-14T08:49:47,642+0100 S"), "calendar"),
        (GOOD.replace("2025-06-14T08:49:47,642+0100 S", "2025-06-14T08:49:47Z"), "TM"),
        (GOOD.replace('"IS":true', '"IS":1'), "IS"),
        (GOOD.replace('"FV":"1.0",', '"FV":"1.0","FV":"1.1",'), "duplicate"),
        (GOOD.replace('"MS":"1234567"', '"MS":[[[[[1]]]]]'), "deeper"),
        (GOOD.replace('"SA":"ECDSA-secp256r1-SHA256",', '"SE":"rot13",'), "SE"),
        (GOOD.replace('"SD":"30', '"SD":"3G'), "hex"),
        (GOOD.replace('"MS":"1234567"', '"MS":"' + "x" * 300 + '"'), "MS"),
    ],
)
def test_hostile_documents_are_refused_with_a_reason(text: str, problem: str) -> None:
    with pytest.raises(ocmf.OcmfError, match=problem):
        ocmf.parse(text)


def test_reading_count_is_bounded() -> None:
    body = json.loads(GOOD.split("|")[1])
    body["RD"] = body["RD"] * 17
    with pytest.raises(ocmf.OcmfError, match="at most 32"):
        ocmf.parse("OCMF|" + json.dumps(body) + "|" + GOOD.split("|")[2])


def test_unsupported_algorithm_is_named() -> None:
    doc = ocmf.parse(GOOD.replace("ECDSA-secp256r1-SHA256", "ECDSA-secp192k1-SHA256"))
    with pytest.raises(ocmf.OcmfError, match="not supported"):
        ocmf.verify(doc, bytes.fromhex(PUBLISHED_KEY))


def test_verify_cost_per_curve(capsys: pytest.CaptureFixture[str]) -> None:
    """Figure: microseconds per verified reading document, per curve (printed with -s)."""
    for algorithm, curve in sorted(CURVES.items()):
        key = ec.generate_private_key(curve)
        text, der = _doc(key, algorithm), _der(key)
        ocmf.parse_and_verify(text, der)
        n = 200
        began = time.perf_counter()
        for _ in range(n):
            ocmf.parse_and_verify(text, der)
        with capsys.disabled():
            print(f"\n{algorithm}: {(time.perf_counter() - began) / n * 1e6:.0f} us per document (parse + verify)")
