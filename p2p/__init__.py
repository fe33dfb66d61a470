"""libp2p transport of the node: host, gossipsub topics, signed envelopes, block sync."""
