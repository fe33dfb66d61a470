"""Anchoring: every committed charger event under a quorum-signed Merkle root on Ethereum.

- `merkle`: the tree, proofs and verification of MERKLE.md (keccak-256, tagged leaves).
- `attestations`: a validator's signature over an AnchorBatch, a SettlementBatch or a reward
  distribution, as a consensus payload (tags 0xA1 / 0xA2 / 0xA5, strict msgpack).
- `batches`: deterministic batch closing from committed blocks, quorum collection.
- `submitter` / `onchain`: bringing quorums on chain (turns, retries, persistence, depth).
- `proofs`: the event index and the proof service of AUDIT.md; `audit`: `devsen audit`.
- `chain/`: the typed Ethereum client, deployment and anvil helpers.
"""
