// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title DevsenDomain
/// @notice The EIP-712 domain of consensus/SIGNING.md: name "DEVSEN", version "1", the chain id
/// and this contract as verifyingContract, so a signature made for one contract or one chain
/// is worthless on any other. The separator is recomputed if the chain id changes (a fork).
abstract contract DevsenDomain {
    bytes32 private constant DOMAIN_TYPEHASH = keccak256(
        "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
    );
    bytes32 private constant NAME_HASH = keccak256("DEVSEN");
    bytes32 private constant VERSION_HASH = keccak256("1");

    uint256 private immutable _cachedChainId;
    bytes32 private immutable _cachedSeparator;

    constructor() {
        _cachedChainId = block.chainid;
        _cachedSeparator = _buildSeparator();
    }

    /// @notice The EIP-712 domain separator of this contract on the current chain.
    function domainSeparator() public view returns (bytes32) {
        return block.chainid == _cachedChainId ? _cachedSeparator : _buildSeparator();
    }

    function _typedDigest(bytes32 structHash) internal view returns (bytes32) {
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
    }

    function _buildSeparator() private view returns (bytes32) {
        return keccak256(
            abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, address(this))
        );
    }
}
