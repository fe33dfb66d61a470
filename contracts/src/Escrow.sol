// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {DevsenDomain} from "./DevsenDomain.sol";
import {IDeviceFactory, IERC20Minimal, IUserRegistry, IValidatorSet} from "./Interfaces.sol";

error DeviceInactive(bytes32 deviceId);
error ConnectorInvalid(uint8 connectorId, uint8 connectorCount);
error IdTagNotValidForDriver(bytes32 idTagHash, address driver);
error DepositInvalid(uint256 deposit);
error UnknownSession(bytes32 sessionId);
error SessionNotOpen(bytes32 sessionId, uint8 status);
error AmountExceedsDeposit(uint256 amount, uint256 deposit);
error NotSessionDriver(bytes32 sessionId, address caller);
error RefundTooEarly(bytes32 sessionId, uint256 availableAt);
error TokenTransferFailed();
error RefundTimeoutInvalid(uint64 refundTimeout);

/// @title Escrow
/// @notice Pre-paid charging sessions. A driver locks a deposit in the ChargeToken for one
/// device connector (SessionRequested, which nodes turn into a remote start); a settlement
/// `Settlement(bytes32 sessionId,uint64 energyWh,uint256 amount)` signed under this
/// contract's EIP-712 domain by a quorum of the current validators pays `amount` to the
/// device's manager and refunds the rest; a session never settled is refunded to its driver
/// after `refundTimeout`. A session closes exactly once (settled or refunded).
contract Escrow is DevsenDomain {
    uint8 public constant STATUS_NONE = 0;
    uint8 public constant STATUS_OPEN = 1;
    uint8 public constant STATUS_SETTLED = 2;
    uint8 public constant STATUS_REFUNDED = 3;
    /// Smallest deposit (ChargeToken base units, 6 decimals): opening sessions costs locked
    /// capital as well as gas, so spamming sessions is not free.
    uint256 public constant MIN_DEPOSIT = 1_000;
    bytes32 public constant SETTLEMENT_TYPEHASH =
        keccak256("Settlement(bytes32 sessionId,uint64 energyWh,uint256 amount)");

    struct Session {
        address driver;
        uint64 energyWh;
        uint8 connectorId;
        uint8 status;
        bytes32 deviceId;
        bytes32 idTagHash;
        uint96 deposit; // deposit, settled amount and open time share one storage slot
        uint96 settledAmount;
        uint64 openedAt;
    }

    IERC20Minimal public immutable token;
    IValidatorSet public immutable validatorSet;
    IDeviceFactory public immutable devices;
    IUserRegistry public immutable users;
    uint64 public immutable refundTimeout;

    /// Sum of the deposits of open sessions; the token balance of this contract never falls below it.
    uint256 public openDeposits;
    mapping(address => uint256) public sessionNonce;
    mapping(bytes32 => Session) private _sessions;

    event SessionRequested(
        bytes32 indexed sessionId,
        address indexed driver,
        string chargeBoxId,
        uint8 connectorId,
        bytes32 idTagHash,
        uint256 deposit
    );
    event SessionSettled(
        bytes32 indexed sessionId, address indexed payee, uint64 energyWh, uint256 amount, uint256 refund
    );
    event SessionRefunded(bytes32 indexed sessionId, address indexed driver, uint256 deposit);

    constructor(
        IERC20Minimal token_,
        IValidatorSet validatorSet_,
        IDeviceFactory devices_,
        IUserRegistry users_,
        uint64 refundTimeout_
    ) {
        if (refundTimeout_ == 0) revert RefundTimeoutInvalid(refundTimeout_);
        token = token_;
        validatorSet = validatorSet_;
        devices = devices_;
        users = users_;
        refundTimeout = refundTimeout_;
    }

    /// @notice The id the caller's next session will get.
    function nextSessionId(address driver) public view returns (bytes32) {
        return keccak256(abi.encode(block.chainid, address(this), driver, sessionNonce[driver]));
    }

    /// @notice Open a session on `connectorId` (1-based) of device `chargeBoxId`, locking
    /// `deposit` tokens (approve this contract first). `idTagHash` must be the caller's.
    function openSession(
        string calldata chargeBoxId,
        uint8 connectorId,
        bytes32 idTagHash,
        uint256 deposit
    ) external returns (bytes32 sessionId) {
        (bytes32 deviceId,, uint8 connectorCount, bool active) = devices.deviceForSession(chargeBoxId);
        if (!active) revert DeviceInactive(deviceId);
        if (connectorId == 0 || connectorId > connectorCount) {
            revert ConnectorInvalid(connectorId, connectorCount);
        }
        if (!users.isIdTagValidFor(idTagHash, msg.sender)) {
            revert IdTagNotValidForDriver(idTagHash, msg.sender);
        }
        if (deposit < MIN_DEPOSIT || deposit > type(uint96).max) revert DepositInvalid(deposit);
        sessionId = nextSessionId(msg.sender);
        sessionNonce[msg.sender] += 1;
        _sessions[sessionId] = Session({
            driver: msg.sender,
            energyWh: 0,
            connectorId: connectorId,
            status: STATUS_OPEN,
            deviceId: deviceId,
            idTagHash: idTagHash,
            deposit: uint96(deposit),
            settledAmount: 0,
            openedAt: uint64(block.timestamp)
        });
        openDeposits += deposit;
        if (!token.transferFrom(msg.sender, address(this), deposit)) revert TokenTransferFailed();
        emit SessionRequested(sessionId, msg.sender, chargeBoxId, connectorId, idTagHash, deposit);
    }

    /// @notice Settle with a quorum of validator signatures (sorted by signer) over the
    /// Settlement struct; anyone may submit.
    function settle(bytes32 sessionId, uint64 energyWh, uint256 amount, bytes[] calldata signatures)
        external
    {
        Session storage s = _openSession(sessionId);
        uint256 deposit = s.deposit;
        if (amount > deposit) revert AmountExceedsDeposit(amount, deposit);
        bytes32 structHash = keccak256(abi.encode(SETTLEMENT_TYPEHASH, sessionId, energyWh, amount));
        validatorSet.verifyQuorum(_typedDigest(structHash), signatures);
        s.status = STATUS_SETTLED;
        s.energyWh = energyWh;
        s.settledAmount = uint96(amount);
        openDeposits -= deposit;
        address payee = devices.managerOf(s.deviceId);
        address driver = s.driver;
        uint256 refund = deposit - amount;
        if (amount != 0 && !token.transfer(payee, amount)) revert TokenTransferFailed();
        if (refund != 0 && !token.transfer(driver, refund)) revert TokenTransferFailed();
        emit SessionSettled(sessionId, payee, energyWh, amount, refund);
    }

    /// @notice The driver takes back the whole deposit of a session never settled, once
    /// `refundTimeout` seconds have passed since it was opened.
    function refund(bytes32 sessionId) external {
        Session storage s = _openSession(sessionId);
        if (msg.sender != s.driver) revert NotSessionDriver(sessionId, msg.sender);
        uint256 availableAt = uint256(s.openedAt) + refundTimeout;
        if (block.timestamp < availableAt) revert RefundTooEarly(sessionId, availableAt);
        uint256 deposit = s.deposit;
        s.status = STATUS_REFUNDED;
        openDeposits -= deposit;
        if (!token.transfer(msg.sender, deposit)) revert TokenTransferFailed();
        emit SessionRefunded(sessionId, msg.sender, deposit);
    }

    function session(bytes32 sessionId) external view returns (Session memory) {
        Session storage s = _sessions[sessionId];
        if (s.status == STATUS_NONE) revert UnknownSession(sessionId);
        return s;
    }

    function _openSession(bytes32 sessionId) private view returns (Session storage s) {
        s = _sessions[sessionId];
        if (s.status == STATUS_NONE) revert UnknownSession(sessionId);
        if (s.status != STATUS_OPEN) revert SessionNotOpen(sessionId, s.status);
    }
}
