"""The bottom layer: wire-critical helpers with one home each, depending on nothing of ours.

- `hashing`: keccak-256 (the one hash backend), `id_tag_hash`, `validators_hash`
- `credentials`: the charger-password scrypt agreed with the DeviceFactory record
- `eip712`: EIP-712 typed digests, secp256k1 signing keys and signer recovery

Every package may import these; these import only the standard library and third-party code.
"""
