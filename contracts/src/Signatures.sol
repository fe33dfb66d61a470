// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// Malformed or unrecoverable signatures, by position in the submitted list.
error SignatureLengthInvalid(uint256 index, uint256 length);
error SignatureSInvalid(uint256 index);
error SignatureVInvalid(uint256 index);
error SignatureUnrecoverable(uint256 index);

/// @title Signatures
/// @notice secp256k1 recovery of the 65-byte `r || s || v` signatures of consensus/SIGNING.md:
/// v in {27, 28}, s in the lower half of the curve order (EIP-2), so one signature has one form.
library Signatures {
    uint256 internal constant SIGNATURE_LENGTH = 65;
    uint256 internal constant HALF_ORDER =
        0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    /// @notice The signer of `signature` over `digest`; reverts with the signature's `index`.
    function recover(bytes32 digest, bytes calldata signature, uint256 index)
        internal
        pure
        returns (address signer)
    {
        if (signature.length != SIGNATURE_LENGTH) {
            revert SignatureLengthInvalid(index, signature.length);
        }
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if (uint256(s) == 0 || uint256(s) > HALF_ORDER) revert SignatureSInvalid(index);
        if (v != 27 && v != 28) revert SignatureVInvalid(index);
        signer = ecrecover(digest, v, r, s);
        if (signer == address(0)) revert SignatureUnrecoverable(index);
    }
}
