"""Merkle trees and proofs, anchor batches, the Ethereum chain client, settlement, audit."""
