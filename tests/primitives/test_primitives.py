"""The one home of each wire-critical helper agrees with independent implementations."""

import hashlib

import pytest
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak as reference_keccak

from primitives.credentials import (
    SALT_BYTES,
    hash_charger_password,
    new_auth_credential,
    verify_charger_password,
)
from primitives.hashing import id_tag_hash, keccak256, validators_hash

ADDRESSES = sorted(keccak256(b"validator-%d" % i)[12:] for i in range(5))


@pytest.mark.parametrize("data", [b"", b"a", b"\x00" * 33, bytes(range(256)) * 5])
def test_keccak256_is_ethereum_keccak_not_sha3(data: bytes) -> None:
    assert keccak256(data) == reference_keccak(data)
    assert keccak256(data) != hashlib.sha3_256(data).digest()


def test_id_tag_hash_is_keccak_of_the_utf8_bytes() -> None:
    assert id_tag_hash("TAG-ÄÖ") == reference_keccak("TAG-ÄÖ".encode())


def test_validators_hash_is_keccak_of_abi_encoded_addresses_in_either_form() -> None:
    checksummed = ["0x" + a.hex().upper() for a in ADDRESSES]
    expected = reference_keccak(abi_encode(["address[]"], [["0x" + a.hex() for a in ADDRESSES]]))
    assert validators_hash(ADDRESSES) == validators_hash(checksummed) == expected
    assert validators_hash([]) == reference_keccak(abi_encode(["address[]"], [[]]))
    with pytest.raises(ValueError, match="20 bytes"):
        validators_hash([b"\x01" * 19])


def test_charger_password_hash_is_the_agreed_scrypt_and_checks_refuse_bad_input() -> None:
    salt, digest = new_auth_credential("s3cret")
    assert len(salt) == SALT_BYTES
    assert digest == hashlib.scrypt(b"s3cret", salt=salt, n=16384, r=8, p=1, dklen=32)
    assert digest == hash_charger_password("s3cret", salt)
    assert verify_charger_password("s3cret", salt, digest)
    assert not verify_charger_password("s3creT", salt, digest)
    assert not verify_charger_password("s3cret", salt, digest[:31])
    assert not verify_charger_password("x" * 257, salt, digest)  # longer than any password hashed
    with pytest.raises(ValueError, match="16 bytes"):
        hash_charger_password("s3cret", b"short")


def test_scrypt_buffers_go_back_to_the_os_after_logins_in_many_threads() -> None:
    """After `return_scrypt_buffers_to_the_os`, hashing passwords in 8 worker threads leaves no
    16 MiB buffer resident per thread (without it: +129 MiB measured). In a fresh process:
    the allocator setting is process-wide."""
    import subprocess
    import sys

    script = """
from concurrent.futures import ThreadPoolExecutor
from primitives.credentials import hash_charger_password, return_scrypt_buffers_to_the_os
def rss():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS'))
done = return_scrypt_buffers_to_the_os()
before = rss()
with ThreadPoolExecutor(8) as pool:
    list(pool.map(lambda i: hash_charger_password('pw', bytes(16)), range(24)))
print(done, (rss() - before) // 1024)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    done, grown_mib = out.stdout.split()
    if done != "True":
        pytest.skip("not glibc: no mallopt")
    assert int(grown_mib) < 24, f"{grown_mib} MiB stayed resident"
