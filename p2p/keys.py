"""A node's key directory: a persistent Ed25519 libp2p identity and a secp256k1 validator key.

Layout of the directory (created 0700, files 0600, hex text with a trailing newline):
- `libp2p_ed25519.key`: 32-byte Ed25519 seed; the node's libp2p peer id derives from it.
- `validator_secp256k1.key`: 32-byte secp256k1 secret; its address is the validator address.

`init_keys` creates both once and refuses to overwrite; `load_keys` reads them and refuses
files other users can read.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

from primitives.eip712 import SigningKey, to_checksum_hex

LIBP2P_KEY_FILE = "libp2p_ed25519.key"
VALIDATOR_KEY_FILE = "validator_secp256k1.key"
KEY_BYTES = 32


class KeyFileError(Exception):
    """A key directory or key file is missing, malformed, exposed, or would be overwritten."""


@dataclass(frozen=True, slots=True)
class NodeKeys:
    """The two keys of a node: the libp2p identity seed and the validator signing key."""

    libp2p_seed: bytes
    validator: SigningKey

    def __post_init__(self) -> None:
        if len(self.libp2p_seed) != KEY_BYTES:
            raise KeyFileError("the Ed25519 seed must be 32 bytes")

    @property
    def key_pair(self) -> KeyPair:
        """The libp2p Ed25519 key pair."""
        return create_new_key_pair(self.libp2p_seed)

    @property
    def peer_id(self) -> ID:
        """The libp2p peer id of this node."""
        return ID.from_pubkey(self.key_pair.public_key)

    @property
    def validator_address(self) -> bytes:
        """The 20-byte validator (Ethereum) address."""
        return self.validator.address

    def describe(self) -> dict[str, str]:
        """Public identifiers only, for `devsen keys show` and logs."""
        return {
            "peer_id": self.peer_id.to_base58(),
            "validator_address": to_checksum_hex(self.validator_address),
        }


def _write_secret(path: Path, secret: bytes) -> None:
    """Create `path` 0600 with the hex of `secret`; fail if it exists."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError as exc:
        raise KeyFileError(f"{path} exists; refusing to overwrite a key") from exc
    with os.fdopen(fd, "w") as handle:
        handle.write(secret.hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _read_secret(path: Path) -> bytes:
    """Read a 32-byte hex secret from a file only its owner can read."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise KeyFileError(f"{path} is missing; run `devsen keys init`") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path} is readable by others (mode {oct(mode & 0o777)}); chmod 600")
    text = path.read_text().strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError as exc:
        raise KeyFileError(f"{path} is not hex") from exc
    if len(secret) != KEY_BYTES:
        raise KeyFileError(f"{path} must hold {KEY_BYTES} bytes, not {len(secret)}")
    return secret


def init_keys(directory: str | os.PathLike[str]) -> NodeKeys:
    """Create a key directory with fresh keys; returns the existing keys if both exist.

    Idempotent: a complete directory is loaded, never overwritten. A directory holding only
    one of the two files is refused (it would silently pair keys that were never paired).
    """
    root = Path(directory)
    libp2p_path, validator_path = root / LIBP2P_KEY_FILE, root / VALIDATOR_KEY_FILE
    present = [p.exists() for p in (libp2p_path, validator_path)]
    if all(present):
        return load_keys(root)
    if any(present):
        raise KeyFileError(f"{root} holds only one of the two key files; refusing to complete it")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    seed = secrets.token_bytes(KEY_BYTES)
    validator = _fresh_signing_key()
    keys = NodeKeys(libp2p_seed=seed, validator=validator)
    _write_secret(libp2p_path, seed)
    _write_secret(validator_path, validator.secret)
    return keys


def _fresh_signing_key() -> SigningKey:
    while True:
        try:
            return SigningKey(secrets.token_bytes(KEY_BYTES))
        except ValueError:  # astronomically rare: secret >= curve order
            continue


def load_identity(directory: str | os.PathLike[str]) -> NodeKeys:
    """A full (non-validator) node's keys: its persistent libp2p identity (created if missing)
    and a throwaway secp256k1 key for this process only, which signs nothing but its own
    sync requests: no validator key file is read or needed."""
    root = Path(directory)
    libp2p_path = root / LIBP2P_KEY_FILE
    if not libp2p_path.exists():
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_secret(libp2p_path, secrets.token_bytes(KEY_BYTES))
    return NodeKeys(libp2p_seed=_read_secret(libp2p_path), validator=_fresh_signing_key())


def load_keys(directory: str | os.PathLike[str]) -> NodeKeys:
    """Load the keys of an initialised key directory."""
    root = Path(directory)
    seed = _read_secret(root / LIBP2P_KEY_FILE)
    secret = _read_secret(root / VALIDATOR_KEY_FILE)
    return NodeKeys(libp2p_seed=seed, validator=SigningKey(secret))
