"""Sans-I/O BFT consensus (Tendermint), blocks, votes, certificates, WAL, block store, simulator.

Knows nothing of OCPP, libp2p or Ethereum: it orders opaque, hashed payloads.
"""
