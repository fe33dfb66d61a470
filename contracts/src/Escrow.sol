// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {DevsenDomain} from "./DevsenDomain.sol";
import {Signatures} from "./Signatures.sol";
import {IDeviceFactory, IERC20Minimal, IUserRegistry, IValidatorSet} from "./Interfaces.sol";

error DeviceInactive(bytes32 deviceId);
error ConnectorInvalid(uint8 connectorId, uint8 connectorCount);
error IdTagNotValidForDriver(bytes32 idTagHash, address driver);
error DepositInvalid(uint256 deposit);
error UnknownSession(bytes32 sessionId);
error SessionNotOpen(bytes32 sessionId, uint8 status);
error NotSessionDriver(bytes32 sessionId, address caller);
error RefundTooEarly(bytes32 sessionId, uint256 availableAt);
error TokenTransferFailed();
error RefundTimeoutInvalid(uint64 refundTimeout);
error NotSessionManager(bytes32 sessionId, address caller);
error NotVoucherSession(bytes32 sessionId);
error VoucherSignerNotDriver(bytes32 sessionId, address signer);
error BatchEmpty();
error BatchTooLarge(uint256 count, uint256 maxCount);
error ReservationDurationInvalid(uint64 expiresAt, uint256 maxExpiresAt);
error ReservationFeeZero(bytes32 deviceId);
error ConnectorReserved(bytes32 deviceId, uint8 connectorId, uint32 reservationId);
error UnknownReservation(uint32 reservationId);
error ReservationNotOpen(uint32 reservationId);
error NotReservationDriver(uint32 reservationId, address caller);
error ReservationExpired(uint32 reservationId, uint64 expiresAt);
error ReservationNotExpired(uint32 reservationId, uint64 expiresAt);

/// @title Escrow
/// @notice Pre-paid charging sessions. A driver locks a deposit in the ChargeToken for one
/// device connector (SessionRequested, which nodes turn into a remote start); a settlement
/// `Settlement(bytes32 sessionId,uint64 energyWh,uint256 amount)`, one entry of a batch signed
/// under this contract's EIP-712 domain by a quorum of the current validators (`settleBatch`),
/// pays `amount` to the device's manager and refunds the rest; a session never settled is
/// refunded to its driver after `refundTimeout`. A session closes exactly once (settled,
/// closed with a voucher, or refunded).
///
/// Terms the driver agreed to: the device's tariff (price per kWh, per-minute fee) is copied
/// into the session when it is opened; a later `setTariff` does not change open sessions, and
/// the ledger settles at the copied tariff.
///
/// Refunds cannot race a charge: `refund` is possible only from `refundAt(sessionId)` =
/// opening + `refundTimeout`; the ledger closes (and settles) any transaction bound to an
/// escrow session before that deadline minus its margin (devsen/ledger/LEDGER.md), so a
/// driver who refunds gets the deposit only for a session the network never settled.
///
/// Batches: `settleBatch` settles many sessions under one quorum over
/// `SettlementBatch(bytes32 settlementsHash)` where settlementsHash is keccak256 of the
/// concatenated `Settlement` struct hashes in list order (EIP-712's encoding of a
/// `Settlement[]`). An entry whose session is unknown, already closed or whose amount exceeds
/// the deposit is skipped with `SettlementSkipped`; the rest settle. Replaying a batch is a
/// no-op (every session closes once), so batches carry no id.
///
/// Vouchers: a session opened with `openVoucherSession` may also be closed by the device's
/// manager alone with the driver's latest `PaymentVoucher(bytes32 sessionId,uint256
/// cumulativeAmount)` signed under this contract's domain: min(cumulativeAmount, deposit) to
/// the manager, the rest to the driver. A later settlement for it is then skipped.
///
/// Reservations (issue 13): a driver holds one connector for its idTag until `expiresAt`
/// (at most MAX_RESERVATION_S ahead), paying the device's per-minute fee (its tariff's
/// `perMinuteFee`, no separate field) for every started minute of the reservation, locked
/// here. One open reservation per connector. A device whose per-minute fee is 0 takes no
/// reservations (a free hold would let anyone block every connector). Before expiry the driver
/// may cancel: the fee of the minutes started so far goes to the manager, the rest back. After
/// expiry anyone may close it (the whole fee to the manager: a no-show, or a reservation the
/// driver used); a new reservation on that connector closes an expired one first. Reservation
/// ids are 1, 2, 3, ...: the OCPP reservationId the network sends in ReserveNow.
/// A start applies the fee to the session: when the reservation's driver opens a session on the
/// reserved connector with the reserved idTag before the reservation expires, its fee moves into
/// that session (`ReservationApplied`): the session's deposit grows by the fee (the driver pays
/// only the rest of the deposit) and the fee is the least the session pays
/// (`sessionReservationFee`): a settlement, a voucher close or a refund pays the manager at least
/// the fee, so the fee counts toward the charge and is never paid twice, and a driver who opens a
/// session and never charges still pays it like a no-show. The reservation stays open, its fee
/// now 0, holding the connector for the driver until it expires (cancel or close then pay nothing).
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
    bytes32 public constant SETTLEMENT_BATCH_TYPEHASH = keccak256("SettlementBatch(bytes32 settlementsHash)");
    bytes32 public constant PAYMENT_VOUCHER_TYPEHASH =
        keccak256("PaymentVoucher(bytes32 sessionId,uint256 cumulativeAmount)");
    /// Most entries in one settleBatch (bounds the calldata and the gas of one transaction).
    uint256 public constant MAX_BATCH = 256;
    uint8 public constant SKIP_UNKNOWN = 1;
    uint8 public constant SKIP_CLOSED = 2;
    uint8 public constant SKIP_AMOUNT = 3;
    /// Longest reservation, seconds.
    uint64 public constant MAX_RESERVATION_S = 2 hours;
    /// Highest reservation id: OCPP reservationIds are 32-bit signed integers.
    uint32 public constant MAX_RESERVATION_ID = 2_147_483_647;

    /// One entry of a settlement batch: the fields of the Settlement struct.
    struct SettlementEntry {
        bytes32 sessionId;
        uint64 energyWh;
        uint256 amount;
    }

    struct Session {
        address driver;
        uint64 energyWh;
        uint8 connectorId;
        uint8 status;
        bool voucherMode; // may be closed by the manager with a driver-signed PaymentVoucher
        bytes32 deviceId;
        bytes32 idTagHash;
        uint96 deposit; // deposit, settled amount and open time share one storage slot
        uint96 settledAmount;
        uint64 openedAt;
        uint128 pricePerKWh; // the device's tariff when the session was opened
        uint128 perMinuteFee;
    }

    struct Reservation {
        uint32 reservationId;
        uint8 connectorId;
        uint8 status; // STATUS_OPEN, then STATUS_SETTLED (cancelled or closed)
        address driver;
        uint64 createdAt;
        uint64 expiresAt;
        bytes32 deviceId;
        bytes32 idTagHash;
        uint128 perMinuteFee; // the device's per-minute fee when it was made
        uint128 fee; // locked: perMinuteFee x started minutes
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
    /// Reservations made so far (the id of the last one).
    uint32 public reservationCount;
    mapping(uint32 => Reservation) private _reservations;
    /// deviceId => connectorId => id of its open reservation (0: none).
    mapping(bytes32 => mapping(uint8 => uint32)) public reservationOn;
    /// sessionId => the reservation fee applied to it: the least the session pays its manager.
    mapping(bytes32 => uint256) public sessionReservationFee;

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
    event SessionTariff(bytes32 indexed sessionId, bool voucherMode, uint128 pricePerKWh, uint128 perMinuteFee);
    event SettlementSkipped(bytes32 indexed sessionId, uint8 reason);
    event SessionClosedWithVoucher(bytes32 indexed sessionId, uint256 cumulativeAmount);
    event ReservationMade(
        uint32 indexed reservationId,
        address indexed driver,
        string chargeBoxId,
        uint8 connectorId,
        bytes32 idTagHash,
        uint64 expiresAt,
        uint256 fee
    );
    /// `paid` to the manager, `refunded` to the driver; `cancelled`: by the driver before expiry.
    event ReservationEnded(uint32 indexed reservationId, bool cancelled, uint256 paid, uint256 refunded);
    /// The reservation's `fee` moved into session `sessionId` (its deposit and its minimum charge).
    event ReservationApplied(uint32 indexed reservationId, bytes32 indexed sessionId, uint256 fee);

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
    /// The device's current tariff is copied into the session.
    function openSession(
        string calldata chargeBoxId,
        uint8 connectorId,
        bytes32 idTagHash,
        uint256 deposit
    ) external returns (bytes32 sessionId) {
        return _open(chargeBoxId, connectorId, idTagHash, deposit, false);
    }

    /// @notice As `openSession`, for a session the manager may also close with the driver's
    /// signed PaymentVoucher (`closeWithVoucher`).
    function openVoucherSession(
        string calldata chargeBoxId,
        uint8 connectorId,
        bytes32 idTagHash,
        uint256 deposit
    ) external returns (bytes32 sessionId) {
        return _open(chargeBoxId, connectorId, idTagHash, deposit, true);
    }

    function _open(
        string calldata chargeBoxId,
        uint8 connectorId,
        bytes32 idTagHash,
        uint256 deposit,
        bool voucherMode
    ) private returns (bytes32 sessionId) {
        bytes32 deviceId;
        {
            uint8 connectorCount;
            bool active;
            (deviceId,, connectorCount, active) = devices.deviceForSession(chargeBoxId);
            if (!active) revert DeviceInactive(deviceId);
            if (connectorId == 0 || connectorId > connectorCount) {
                revert ConnectorInvalid(connectorId, connectorCount);
            }
        }
        if (!users.isIdTagValidFor(idTagHash, msg.sender)) {
            revert IdTagNotValidForDriver(idTagHash, msg.sender);
        }
        if (deposit < MIN_DEPOSIT || deposit > type(uint96).max) revert DepositInvalid(deposit);
        (uint128 pricePerKWh, uint128 perMinuteFee) = devices.tariffOf(deviceId);
        sessionId = nextSessionId(msg.sender);
        sessionNonce[msg.sender] += 1;
        uint256 applied = _applyReservation(deviceId, connectorId, idTagHash, sessionId);
        if (deposit + applied > type(uint96).max) revert DepositInvalid(deposit + applied);
        _sessions[sessionId] = Session({
            driver: msg.sender,
            energyWh: 0,
            connectorId: connectorId,
            status: STATUS_OPEN,
            voucherMode: voucherMode,
            deviceId: deviceId,
            idTagHash: idTagHash,
            deposit: uint96(deposit + applied),
            settledAmount: 0,
            openedAt: uint64(block.timestamp),
            pricePerKWh: pricePerKWh,
            perMinuteFee: perMinuteFee
        });
        openDeposits += deposit;
        if (!token.transferFrom(msg.sender, address(this), deposit)) revert TokenTransferFailed();
        emit SessionRequested(sessionId, msg.sender, chargeBoxId, connectorId, idTagHash, deposit + applied);
        emit SessionTariff(sessionId, voucherMode, pricePerKWh, perMinuteFee);
    }

    /// @notice Settle many sessions under one quorum (sorted by signer) over
    /// `SettlementBatch(bytes32 settlementsHash)`; anyone may submit. Entries that cannot
    /// settle (unknown session, already closed, amount above the deposit) are skipped with
    /// `SettlementSkipped`. Consecutive entries paying the same manager share one transfer.
    /// Returns how many sessions settled.
    function settleBatch(SettlementEntry[] calldata entries, bytes[] calldata signatures)
        external
        returns (uint256 settled)
    {
        uint256 count = entries.length;
        if (count == 0) revert BatchEmpty();
        if (count > MAX_BATCH) revert BatchTooLarge(count, MAX_BATCH);
        bytes32[] memory hashes = new bytes32[](count);
        for (uint256 i = 0; i < count; ++i) {
            SettlementEntry calldata e = entries[i];
            hashes[i] = keccak256(abi.encode(SETTLEMENT_TYPEHASH, e.sessionId, e.energyWh, e.amount));
        }
        bytes32 batchHash = keccak256(abi.encode(SETTLEMENT_BATCH_TYPEHASH, keccak256(abi.encodePacked(hashes))));
        validatorSet.verifyQuorum(_typedDigest(batchHash), signatures);
        address payee;
        uint256 owed;
        uint256 released;
        for (uint256 i = 0; i < count; ++i) {
            SettlementEntry calldata e = entries[i];
            Session storage s = _sessions[e.sessionId];
            uint8 status = s.status;
            if (status != STATUS_OPEN) {
                emit SettlementSkipped(e.sessionId, status == STATUS_NONE ? SKIP_UNKNOWN : SKIP_CLOSED);
                continue;
            }
            uint256 deposit = s.deposit;
            if (e.amount > deposit) {
                emit SettlementSkipped(e.sessionId, SKIP_AMOUNT);
                continue;
            }
            uint256 charged = _atLeastFee(e.sessionId, e.amount);
            s.status = STATUS_SETTLED;
            s.energyWh = e.energyWh;
            s.settledAmount = uint96(charged);
            released += deposit;
            address manager = devices.managerOf(s.deviceId);
            if (manager != payee) {
                _pay(payee, owed);
                (payee, owed) = (manager, 0);
            }
            owed += charged;
            uint256 back = deposit - charged;
            _pay(s.driver, back);
            emit SessionSettled(e.sessionId, manager, e.energyWh, charged, back);
            ++settled;
        }
        _pay(payee, owed);
        openDeposits -= released;
    }

    /// @notice The device's manager closes a voucher-mode session with the driver's
    /// signature over `PaymentVoucher(sessionId, cumulativeAmount)`: min(cumulativeAmount,
    /// deposit) goes to the manager, the rest back to the driver. No quorum needed.
    function closeWithVoucher(bytes32 sessionId, uint256 cumulativeAmount, bytes calldata driverSignature)
        external
    {
        Session storage s = _openSession(sessionId);
        if (!s.voucherMode) revert NotVoucherSession(sessionId);
        address manager = devices.managerOf(s.deviceId);
        if (msg.sender != manager) revert NotSessionManager(sessionId, msg.sender);
        bytes32 structHash = keccak256(abi.encode(PAYMENT_VOUCHER_TYPEHASH, sessionId, cumulativeAmount));
        address signer = Signatures.recover(_typedDigest(structHash), driverSignature, 0);
        address driver = s.driver;
        if (signer != driver) revert VoucherSignerNotDriver(sessionId, signer);
        uint256 deposit = s.deposit;
        uint256 amount = _atLeastFee(sessionId, cumulativeAmount < deposit ? cumulativeAmount : deposit);
        s.status = STATUS_SETTLED;
        s.settledAmount = uint96(amount);
        openDeposits -= deposit;
        _pay(manager, amount);
        _pay(driver, deposit - amount);
        emit SessionSettled(sessionId, manager, 0, amount, deposit - amount);
        emit SessionClosedWithVoucher(sessionId, cumulativeAmount);
    }

    /// @notice When the driver may refund the session (unix seconds).
    function refundAt(bytes32 sessionId) external view returns (uint256) {
        Session storage s = _sessions[sessionId];
        if (s.status == STATUS_NONE) revert UnknownSession(sessionId);
        return uint256(s.openedAt) + refundTimeout;
    }

    /// @notice The driver takes back the deposit of a session never settled, once
    /// `refundTimeout` seconds have passed since it was opened; a reservation fee applied to
    /// it goes to the manager (the driver reserved and did not charge).
    function refund(bytes32 sessionId) external {
        Session storage s = _openSession(sessionId);
        if (msg.sender != s.driver) revert NotSessionDriver(sessionId, msg.sender);
        uint256 availableAt = uint256(s.openedAt) + refundTimeout;
        if (block.timestamp < availableAt) revert RefundTooEarly(sessionId, availableAt);
        uint256 deposit = s.deposit;
        uint256 fee = sessionReservationFee[sessionId];
        s.status = STATUS_REFUNDED;
        s.settledAmount = uint96(fee);
        openDeposits -= deposit;
        _pay(devices.managerOf(s.deviceId), fee);
        _pay(msg.sender, deposit - fee);
        emit SessionRefunded(sessionId, msg.sender, deposit - fee);
    }

    function session(bytes32 sessionId) external view returns (Session memory) {
        Session storage s = _sessions[sessionId];
        if (s.status == STATUS_NONE) revert UnknownSession(sessionId);
        return s;
    }

    /// @notice Reserve `connectorId` (1-based) of `chargeBoxId` for `idTagHash` (the caller's)
    /// until `expiresAt` (unix seconds, at most MAX_RESERVATION_S from now), paying the device's
    /// per-minute fee for each started minute (approve this contract first).
    function reserve(string calldata chargeBoxId, uint8 connectorId, bytes32 idTagHash, uint64 expiresAt)
        external
        returns (uint32 reservationId)
    {
        (bytes32 deviceId,, uint8 connectorCount, bool active) = devices.deviceForSession(chargeBoxId);
        if (!active) revert DeviceInactive(deviceId);
        if (connectorId == 0 || connectorId > connectorCount) {
            revert ConnectorInvalid(connectorId, connectorCount);
        }
        if (!users.isIdTagValidFor(idTagHash, msg.sender)) {
            revert IdTagNotValidForDriver(idTagHash, msg.sender);
        }
        uint256 maxExpiresAt = block.timestamp + MAX_RESERVATION_S;
        if (expiresAt <= block.timestamp || expiresAt > maxExpiresAt) {
            revert ReservationDurationInvalid(expiresAt, maxExpiresAt);
        }
        uint32 current = reservationOn[deviceId][connectorId];
        if (current != 0) {
            Reservation storage held = _reservations[current];
            if (block.timestamp < held.expiresAt) revert ConnectorReserved(deviceId, connectorId, current);
            _end(held, held.fee, false);
        }
        (, uint128 perMinuteFee) = devices.tariffOf(deviceId);
        if (perMinuteFee == 0) revert ReservationFeeZero(deviceId);
        uint256 fee = uint256(perMinuteFee) * _startedMinutes(expiresAt - block.timestamp);
        if (fee > type(uint128).max) revert DepositInvalid(fee);
        if (reservationCount >= MAX_RESERVATION_ID) revert DepositInvalid(0);
        reservationId = ++reservationCount;
        _reservations[reservationId] = Reservation({
            reservationId: reservationId,
            connectorId: connectorId,
            status: STATUS_OPEN,
            driver: msg.sender,
            createdAt: uint64(block.timestamp),
            expiresAt: expiresAt,
            deviceId: deviceId,
            idTagHash: idTagHash,
            perMinuteFee: perMinuteFee,
            fee: uint128(fee)
        });
        reservationOn[deviceId][connectorId] = reservationId;
        openDeposits += fee;
        if (!token.transferFrom(msg.sender, address(this), fee)) revert TokenTransferFailed();
        emit ReservationMade(reservationId, msg.sender, chargeBoxId, connectorId, idTagHash, expiresAt, fee);
    }

    /// @notice The driver cancels an open reservation before it expires: the fee of the minutes
    /// started so far goes to the device's manager, the rest back to the driver.
    function cancelReservation(uint32 reservationId) external {
        Reservation storage r = _openReservation(reservationId);
        if (msg.sender != r.driver) revert NotReservationDriver(reservationId, msg.sender);
        if (block.timestamp >= r.expiresAt) revert ReservationExpired(reservationId, r.expiresAt);
        uint256 spent = uint256(r.perMinuteFee) * _startedMinutes(block.timestamp - r.createdAt);
        _end(r, spent < r.fee ? spent : r.fee, true);
    }

    /// @notice Anyone closes an expired reservation: its whole fee goes to the device's manager.
    function closeReservation(uint32 reservationId) external {
        Reservation storage r = _openReservation(reservationId);
        if (block.timestamp < r.expiresAt) revert ReservationNotExpired(reservationId, r.expiresAt);
        _end(r, r.fee, false);
    }

    function reservation(uint32 reservationId) external view returns (Reservation memory) {
        Reservation storage r = _reservations[reservationId];
        if (r.status == STATUS_NONE) revert UnknownReservation(reservationId);
        return r;
    }

    /// @notice The open reservations (expired or not) on the connectors of `chargeBoxId`.
    function reservationsOf(string calldata chargeBoxId) external view returns (Reservation[] memory found) {
        (bytes32 deviceId,, uint8 connectorCount,) = devices.deviceForSession(chargeBoxId);
        uint256 count;
        for (uint8 c = 1; c <= connectorCount && c != 0; ++c) {
            if (reservationOn[deviceId][c] != 0) ++count;
        }
        found = new Reservation[](count);
        count = 0;
        for (uint8 c = 1; c <= connectorCount && c != 0; ++c) {
            uint32 id = reservationOn[deviceId][c];
            if (id != 0) found[count++] = _reservations[id];
        }
    }

    function _end(Reservation storage r, uint256 paid, bool cancelled) private {
        uint256 fee = r.fee;
        r.status = STATUS_SETTLED;
        if (reservationOn[r.deviceId][r.connectorId] == r.reservationId) {
            reservationOn[r.deviceId][r.connectorId] = 0;
        }
        openDeposits -= fee;
        _pay(devices.managerOf(r.deviceId), paid);
        _pay(r.driver, fee - paid);
        emit ReservationEnded(r.reservationId, cancelled, paid, fee - paid);
    }

    /// The open, unexpired reservation of this driver and idTag on the connector, if any, moves
    /// its fee into session `sessionId`; returns the fee moved (0: none).
    function _applyReservation(bytes32 deviceId, uint8 connectorId, bytes32 idTagHash, bytes32 sessionId)
        private
        returns (uint256 fee)
    {
        uint32 id = reservationOn[deviceId][connectorId];
        if (id == 0) return 0;
        Reservation storage r = _reservations[id];
        if (r.status != STATUS_OPEN || block.timestamp >= r.expiresAt || r.driver != msg.sender) return 0;
        if (r.idTagHash != idTagHash || r.fee == 0) return 0;
        fee = r.fee;
        r.fee = 0;
        sessionReservationFee[sessionId] = fee;
        emit ReservationApplied(id, sessionId, fee);
    }

    function _atLeastFee(bytes32 sessionId, uint256 amount) private view returns (uint256) {
        uint256 fee = sessionReservationFee[sessionId];
        return amount < fee ? fee : amount;
    }

    function _startedMinutes(uint256 seconds_) private pure returns (uint256) {
        return (seconds_ + 59) / 60;
    }

    function _openReservation(uint32 reservationId) private view returns (Reservation storage r) {
        r = _reservations[reservationId];
        if (r.status == STATUS_NONE) revert UnknownReservation(reservationId);
        if (r.status != STATUS_OPEN) revert ReservationNotOpen(reservationId);
    }

    function _pay(address to, uint256 amount) private {
        if (amount != 0 && !token.transfer(to, amount)) revert TokenTransferFailed();
    }

    function _openSession(bytes32 sessionId) private view returns (Session storage s) {
        s = _sessions[sessionId];
        if (s.status == STATUS_NONE) revert UnknownSession(sessionId);
        if (s.status != STATUS_OPEN) revert SessionNotOpen(sessionId, s.status);
    }
}
