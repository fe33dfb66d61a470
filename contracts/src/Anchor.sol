// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {DevsenDomain} from "./DevsenDomain.sol";
import {IValidatorSet} from "./Interfaces.sol";

error BatchAlreadyAnchored(uint64 batchId);
error BatchIdOutOfOrder(uint64 batchId, uint64 expected);
error HeightsNotContiguous(uint64 firstHeight, uint64 expected);
error HeightRangeInvalid(uint64 firstHeight, uint64 lastHeight);
error RootEventCountMismatch(bytes32 root, uint64 eventCount);
error UnknownBatch(uint64 batchId);

/// @title Anchor
/// @notice Merkle roots of the events the validators agreed on, batch by batch. Batch ids
/// run 0, 1, 2, ... and their block-height ranges are contiguous; a batch is stored only
/// with a quorum of the current validators' signatures over
/// `AnchorBatch(uint64 batchId,bytes32 root,uint64 firstHeight,uint64 lastHeight,uint64 eventCount)`
/// under this contract's EIP-712 domain. `verifyInclusion` implements anchoring/MERKLE.md.
contract Anchor is DevsenDomain {
    uint256 public constant MAX_PROOF_LENGTH = 64;
    bytes32 public constant ANCHOR_BATCH_TYPEHASH = keccak256(
        "AnchorBatch(uint64 batchId,bytes32 root,uint64 firstHeight,uint64 lastHeight,uint64 eventCount)"
    );

    struct Batch {
        bytes32 root;
        uint64 firstHeight;
        uint64 lastHeight;
        uint64 eventCount;
    }

    IValidatorSet public immutable validatorSet;
    uint64 public nextBatchId;
    uint64 public nextFirstHeight;
    mapping(uint256 => Batch) private _batches;

    event BatchAnchored(
        uint64 indexed batchId,
        bytes32 root,
        uint64 firstHeight,
        uint64 lastHeight,
        uint64 eventCount,
        address submitter
    );

    /// @param initialHeight the first block height of batch 0.
    constructor(IValidatorSet validatorSet_, uint64 initialHeight) {
        validatorSet = validatorSet_;
        nextFirstHeight = initialHeight;
    }

    /// @notice Store batch `batchId` (must be nextBatchId) with a quorum of signatures,
    /// ordered by signer strictly ascending. A batch without events has the zero root.
    function submitBatch(
        uint64 batchId,
        bytes32 root,
        uint64 firstHeight,
        uint64 lastHeight,
        uint64 eventCount,
        bytes[] calldata signatures
    ) external {
        uint64 expectedId = nextBatchId;
        if (batchId < expectedId) revert BatchAlreadyAnchored(batchId);
        if (batchId > expectedId) revert BatchIdOutOfOrder(batchId, expectedId);
        if (firstHeight != nextFirstHeight) revert HeightsNotContiguous(firstHeight, nextFirstHeight);
        if (lastHeight < firstHeight) revert HeightRangeInvalid(firstHeight, lastHeight);
        if ((root == bytes32(0)) != (eventCount == 0)) revert RootEventCountMismatch(root, eventCount);
        bytes32 structHash = keccak256(
            abi.encode(ANCHOR_BATCH_TYPEHASH, batchId, root, firstHeight, lastHeight, eventCount)
        );
        validatorSet.verifyQuorum(_typedDigest(structHash), signatures);
        _batches[batchId] = Batch(root, firstHeight, lastHeight, eventCount);
        nextBatchId = batchId + 1;
        nextFirstHeight = lastHeight + 1;
        emit BatchAnchored(batchId, root, firstHeight, lastHeight, eventCount, msg.sender);
    }

    function batch(uint64 batchId)
        external
        view
        returns (bytes32 root, uint64 firstHeight, uint64 lastHeight, uint64 eventCount)
    {
        if (batchId >= nextBatchId) revert UnknownBatch(batchId);
        Batch storage b = _batches[batchId];
        return (b.root, b.firstHeight, b.lastHeight, b.eventCount);
    }

    /// @notice True iff `eventId` is in anchored batch `batchId`, per anchoring/MERKLE.md:
    /// leaf = keccak(0x00 || eventId), node = keccak(0x01 || left || right), bit k of
    /// `directions` set when proof[k] is the left sibling. False (never a revert) otherwise.
    function verifyInclusion(
        uint256 batchId,
        bytes32 eventId,
        bytes32[] calldata proof,
        uint256 directions
    ) external view returns (bool) {
        if (batchId >= nextBatchId) return false;
        bytes32 root = _batches[batchId].root;
        if (root == bytes32(0) || proof.length > MAX_PROOF_LENGTH) return false;
        if (directions >> proof.length != 0) return false;
        bytes32 h = keccak256(abi.encodePacked(bytes1(0x00), eventId));
        for (uint256 k; k < proof.length; ++k) {
            h = (directions >> k) & 1 == 1
                ? keccak256(abi.encodePacked(bytes1(0x01), proof[k], h))
                : keccak256(abi.encodePacked(bytes1(0x01), h, proof[k]));
        }
        return h == root;
    }
}
