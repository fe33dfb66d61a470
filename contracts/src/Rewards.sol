// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {DevsenDomain} from "./DevsenDomain.sol";
import {IERC20Minimal, IValidatorSet} from "./Interfaces.sol";

error RewardPartAlreadyPaid(uint64 epoch, uint32 part);
error RewardPartOutOfRange(uint32 part, uint32 parts);
error RewardPartsMismatch(uint64 epoch, uint32 parts, uint32 expected);
error RewardLengthMismatch(uint256 owners, uint256 amounts);
error RewardTooManyPayouts(uint256 count, uint256 limit);
error RewardOwnersNotAscending(uint256 index);
error RewardZeroAmount(uint256 index);
error RewardAboveBudget(uint256 total, uint256 budget);
error RewardAbovePool(uint256 total, uint256 pool);
error RewardFundingFailed();
error RewardTransferFailed(address owner);
error RewardEpochLengthInvalid();

/// @title Rewards
/// @notice Uptime rewards for EVSE owners (devsen/ledger/LEDGER.md "Uptime and rewards").
/// Anyone funds the pool; once per reward epoch the validators' quorum-signed distribution is
/// paid. An epoch's payouts (owners ascending) are split into `parts` parts of at most
/// MAX_PAYOUTS each; each part is signed as
/// `RewardDistribution(uint64 epoch,uint32 part,uint32 parts,address[] owners,uint256[] amounts)`
/// (EIP-712 under this contract's domain; arrays hashed as EIP-712 arrays: keccak of their
/// 32-byte words) and paid at most once; all parts of an epoch carry the same `parts` (the first
/// paid part fixes it) and together never pay more than `epochBudget` nor than the pool holds.
contract Rewards is DevsenDomain {
    uint256 public constant MAX_PAYOUTS = 200; // ~53k gas each: 200 fit in one 15M-gas transaction
    uint32 public constant MAX_PARTS = 64; // 12,800 owners per epoch
    bytes32 public constant REWARD_TYPEHASH = keccak256(
        "RewardDistribution(uint64 epoch,uint32 part,uint32 parts,address[] owners,uint256[] amounts)"
    );

    IERC20Minimal public immutable token;
    IValidatorSet public immutable validatorSet;
    /// @notice The most one epoch distributes: the ledger's `reward_pool_per_epoch`.
    uint256 public immutable epochBudget;
    /// @notice The reward epoch in seconds of agreed block time: the ledger's `reward_epoch_ms` / 1000.
    uint64 public immutable epochSeconds;

    /// @notice True once every part of the epoch is paid.
    mapping(uint64 => bool) public epochPaid;
    mapping(uint64 => mapping(uint32 => bool)) public partPaid;
    /// @notice The epoch's part count, fixed by its first paid part (0: none paid yet).
    mapping(uint64 => uint32) public epochParts;
    mapping(uint64 => uint32) public partsPaid;
    /// @notice What the epoch's paid parts paid together (at most `epochBudget`).
    mapping(uint64 => uint256) public epochTotal;
    mapping(uint64 => mapping(address => uint256)) public paidTo;
    uint256 public totalPaid;

    event PoolFunded(address indexed funder, uint256 amount);
    event RewardPaid(uint64 indexed epoch, address indexed owner, uint256 amount);
    event PartDistributed(uint64 indexed epoch, uint32 part, uint32 parts, uint256 total, uint256 payouts, address submitter);
    event EpochDistributed(uint64 indexed epoch, uint256 total);

    constructor(IERC20Minimal token_, IValidatorSet validatorSet_, uint256 epochBudget_, uint64 epochSeconds_) {
        if (epochSeconds_ == 0) revert RewardEpochLengthInvalid();
        token = token_;
        validatorSet = validatorSet_;
        epochBudget = epochBudget_;
        epochSeconds = epochSeconds_;
    }

    /// @notice What the pool holds now.
    function pool() public view returns (uint256) {
        return token.balanceOf(address(this));
    }

    /// @notice Add `amount` to the pool (approve this contract on the ChargeToken first).
    function fund(uint256 amount) external {
        if (!token.transferFrom(msg.sender, address(this), amount)) revert RewardFundingFailed();
        emit PoolFunded(msg.sender, amount);
    }

    /// @notice The EIP-712 digest the validators sign for part `part` of `parts` of this distribution.
    function distributionDigest(
        uint64 epoch,
        uint32 part,
        uint32 parts,
        address[] calldata owners,
        uint256[] calldata amounts
    ) public view returns (bytes32) {
        bytes32 structHash = keccak256(
            abi.encode(
                REWARD_TYPEHASH,
                epoch,
                part,
                parts,
                keccak256(abi.encodePacked(owners)),
                keccak256(abi.encodePacked(amounts))
            )
        );
        return _typedDigest(structHash);
    }

    /// @notice Pay part `part` (0-based, < `parts`) of epoch `epoch`'s distribution: owners strictly
    /// ascending, every amount > 0, signatures of a quorum of the current validators ordered by signer.
    function distribute(
        uint64 epoch,
        uint32 part,
        uint32 parts,
        address[] calldata owners,
        uint256[] calldata amounts,
        bytes[] calldata signatures
    ) external {
        _checkPart(epoch, part, parts);
        uint256 total = _checkedTotal(owners, amounts);
        uint256 epochSum = epochTotal[epoch] + total;
        if (epochSum > epochBudget) revert RewardAboveBudget(epochSum, epochBudget);
        uint256 available = pool();
        if (total > available) revert RewardAbovePool(total, available);
        validatorSet.verifyQuorum(distributionDigest(epoch, part, parts, owners, amounts), signatures);
        _recordPart(epoch, part, parts, epochSum);
        totalPaid += total;
        for (uint256 i; i < owners.length; ++i) {
            paidTo[epoch][owners[i]] += amounts[i];
            if (!token.transfer(owners[i], amounts[i])) revert RewardTransferFailed(owners[i]);
            emit RewardPaid(epoch, owners[i], amounts[i]);
        }
        emit PartDistributed(epoch, part, parts, total, owners.length, msg.sender);
    }

    function _checkPart(uint64 epoch, uint32 part, uint32 parts) private view {
        if (parts == 0 || parts > MAX_PARTS || part >= parts) revert RewardPartOutOfRange(part, parts);
        if (partPaid[epoch][part]) revert RewardPartAlreadyPaid(epoch, part);
        uint32 expected = epochParts[epoch];
        if (expected != 0 && expected != parts) revert RewardPartsMismatch(epoch, parts, expected);
    }

    function _checkedTotal(address[] calldata owners, uint256[] calldata amounts) private pure returns (uint256 total) {
        if (owners.length != amounts.length) revert RewardLengthMismatch(owners.length, amounts.length);
        if (owners.length > MAX_PAYOUTS) revert RewardTooManyPayouts(owners.length, MAX_PAYOUTS);
        for (uint256 i; i < owners.length; ++i) {
            if (i > 0 && owners[i] <= owners[i - 1]) revert RewardOwnersNotAscending(i);
            if (amounts[i] == 0) revert RewardZeroAmount(i);
            total += amounts[i];
        }
    }

    function _recordPart(uint64 epoch, uint32 part, uint32 parts, uint256 epochSum) private {
        partPaid[epoch][part] = true;
        epochParts[epoch] = parts;
        epochTotal[epoch] = epochSum;
        uint32 done = partsPaid[epoch] + 1;
        partsPaid[epoch] = done;
        if (done == parts) {
            epochPaid[epoch] = true;
            emit EpochDistributed(epoch, epochSum);
        }
    }
}
